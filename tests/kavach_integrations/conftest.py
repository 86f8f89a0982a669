from __future__ import annotations

from collections.abc import Iterator

import pytest

from kavach import CallEvent, NullObserver
from kavach._devtools.standin import StandIn


class Recorder(NullObserver):
    """Collects the guard's call events."""

    def __init__(self) -> None:
        self.calls: list[CallEvent] = []

    def on_call(self, event: CallEvent) -> None:
        self.calls.append(event)

    def by_status(self, status: str) -> list[CallEvent]:
        return [e for e in self.calls if e.status == status]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[StandIn]:
    with StandIn() as standin:
        yield standin


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
