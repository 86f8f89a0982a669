from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kavach import AgentKavach, CallEvent, NullObserver
from kavach._devtools.standin import StandIn


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _server() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def server(_server: StandIn) -> Iterator[StandIn]:
    _server.reset()
    yield _server
    _server.reset()


class Events(NullObserver):
    """Every settled or refused call, in order."""

    def __init__(self) -> None:
        self.calls: list[CallEvent] = []

    def on_call(self, event: CallEvent) -> None:
        self.calls.append(event)

    @property
    def settled(self) -> list[CallEvent]:
        return [e for e in self.calls if e.status != "refused"]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_guard(events: Events) -> Any:
    def make(**kwargs: Any) -> AgentKavach:
        kwargs.setdefault("detect_loops", False)
        guard = AgentKavach(kwargs.pop("agent_name", "test-agent"), **kwargs)
        guard.add_observer(events)
        return guard

    return make


class Recorder(Events):
    """Call events, with a filter by status (framework tests)."""

    def by_status(self, status: str) -> list[CallEvent]:
        return [e for e in self.calls if e.status == status]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


# -- SDK clients wrapped by a guard, against the stand-in, closed when the test ends ---------

_opened: list[Any] = []


@pytest.fixture(autouse=True)
def _close_opened() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def opened(client: Any) -> Any:
    """``client``, closed when the test ends."""
    _opened.append(client)
    return client


def guarded_openai(server: StandIn, guard: AgentKavach) -> Any:
    import openai

    client = openai.OpenAI(base_url=server.openai_url, api_key="sk-t", max_retries=0)
    return guard.wrap(opened(client))


def guarded_anthropic(server: StandIn, guard: AgentKavach) -> Any:
    import anthropic

    client = anthropic.Anthropic(base_url=server.anthropic_url, api_key="sk-t", max_retries=0)
    return guard.wrap(opened(client))


def guarded_gemini(server: StandIn, guard: AgentKavach) -> Any:
    from google import genai

    options = genai.types.HttpOptions(base_url=server.google_url, retry_options=None)
    return guard.wrap(opened(genai.Client(api_key="k", http_options=options)))


def spent(guard: AgentKavach) -> int:
    """What the guard's first budget has spent, in nano-dollars."""
    return guard.status()[0].spent
