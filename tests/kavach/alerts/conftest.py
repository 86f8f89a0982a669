"""Fixtures for the alert tests: a recording loopback HTTP server and a local SMTP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kavach.alerts.support import HttpRecorder, serve


@pytest.fixture
def recorder() -> Iterator[HttpRecorder]:
    rec = HttpRecorder()
    server = serve(rec)
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


class SMTPSink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.received = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.received.set()
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[SMTPSink, int]]:
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:  # aiosmtpd needs a concrete port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SMTPSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, controller.port
    finally:
        controller.stop()
