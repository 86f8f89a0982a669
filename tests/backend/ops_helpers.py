"""Helpers for the operations tests: real backend processes, a fresh PostgreSQL database,
a unique Redis prefix, and loopback stand-ins for Slack, PagerDuty and Stripe."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend.conftest import PG_ADMIN_DSN, SECRET, _free_port, _pg

REDIS_URL = os.environ.get("AGENTKAVACH_TEST_REDIS", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]


def need_redis() -> None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):
            pass
    except OSError as exc:
        message = f"Redis at 127.0.0.1:6379 is unreachable: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    name = f"ak_ops_{uuid.uuid4().hex[:12]}"
    try:
        _pg(f"CREATE DATABASE {name}")
    except Exception as exc:  # noqa: BLE001
        message = f"PostgreSQL at {PG_ADMIN_DSN} is unreachable: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Process:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    handle: Any = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def start_process(env: dict[str, str], log: Path, args: list[str] | None = None) -> Process:
    """``python -m backend serve`` on a free loopback port; waits for /v1/status."""
    port = _free_port()
    full_env = {
        **os.environ,
        "AGENTKAVACH_SECRET_KEY": SECRET,
        "PYTHONPATH": str(ROOT),
        **env,
    }
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend",
            *(args or []),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=full_env,
        cwd=str(ROOT),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            handle.close()
            raise RuntimeError(f"the backend exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/v1/status", timeout=1).status_code == 200:
                return Process(url, proc, log, handle)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    handle.close()
    raise RuntimeError(f"the backend did not start: {log.read_text()[-3000:]}")


# ---------------------------------------------------------------- loopback stand-ins


@dataclass
class Recorder:
    """A loopback HTTP server that records every POST and answers with ``reply``."""

    reply: Any = field(default_factory=lambda: {"ok": True})
    status: int = 200
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self) -> list[Any]:
        out = []
        for _, _, body in self.requests:
            try:
                out.append(json.loads(body))
            except ValueError:
                out.append(body.decode())
        return out


@contextlib.contextmanager
def recorder(reply: Any = None, status: int = 200, form: bool = False) -> Iterator[Recorder]:
    rec = Recorder(reply=reply if reply is not None else {"ok": True}, status=status)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            with lock:
                rec.requests.append((self.path, dict(self.headers), body))
            reply = rec.reply(self.path, body) if callable(rec.reply) else rec.reply
            data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
            self.send_response(rec.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = _answer  # noqa: N815
        do_GET = _answer  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture(name="accounts")
def accounts_fixture() -> Iterator[Any]:
    """``accounts(url)`` registers an account whose clients are closed after the test."""
    from tests.backend.conftest import register

    made: list[Any] = []

    def make(url: str) -> Any:
        account = register(url)
        made.append(account)
        return account

    yield make
    for account in made:
        account.client.close()
