from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

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


def openai_lacks_responses(method: str) -> str | None:
    """Why a test of ``responses.<method>`` cannot run on the installed openai SDK (1.x, in the
    older-SDK stage, predates some), or None; stage one (2.x) and the openai 3.x stage run it."""
    import openai.resources.responses

    if hasattr(openai.resources.responses.Responses, method):
        return None
    return f"openai {openai.__version__} has no responses.{method}"


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


def sdk_httpx(sdk: Any = None) -> Any:
    """The HTTP library an SDK (``openai`` unless given) is built on, whose types its
    ``http_client``, requests and responses are: httpx2 for openai 3.x and anthropic 1.x
    and later, httpx before."""
    if sdk is None:
        import openai as sdk
    for base in sdk.DefaultHttpxClient.__mro__[1:]:
        package = base.__module__.split(".")[0]
        if package in ("httpx", "httpx2"):
            return importlib.import_module(package)
    raise AssertionError(f"{sdk.__name__} is built on neither httpx nor httpx2")


def mocked_openai(guard: AgentKavach, answer: Callable[[Any], Any]) -> Any:
    """A guarded OpenAI client whose requests ``answer`` answers, over a mock transport of
    the SDK's own HTTP library; closed when the test ends."""
    import openai

    httpx = sdk_httpx()
    http = httpx.Client(transport=httpx.MockTransport(answer))
    raw = openai.OpenAI(api_key="k", base_url="http://mock/v1", http_client=http, max_retries=0)
    return guard.wrap(opened(raw))


S = TypeVar("S", bound=Callable[[Any], Any])


def mocked_server(server: Callable[[AgentKavach], S]) -> Callable[[AgentKavach], tuple[Any, S]]:
    """For a guard: a new mock server ``server(guard)`` and a guarded OpenAI client whose
    requests it answers (``mocked_openai``), as a test module's ``client`` fixture gives."""

    def connect(guard: AgentKavach) -> tuple[Any, S]:
        answer = server(guard)
        return mocked_openai(guard, answer), answer

    return connect


def amocked_openai(guard: AgentKavach, answer: Callable[[Any], Any]) -> tuple[Any, Any]:
    """``mocked_openai`` for an async client, whose request bodies are read before
    ``answer`` sees them: the client, and its HTTP client to ``aclose``."""
    import openai

    httpx = sdk_httpx()

    async def handle(request: Any) -> Any:
        await request.aread()
        return answer(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    raw = openai.AsyncOpenAI(api_key="k", base_url="http://mock/v1", http_client=http)
    return guard.wrap(raw), http


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


# -- a loopback WebSocket provider (Responses over responses.connect(), Realtime) ---------

Script = Callable[[dict[str, Any]], list[dict[str, Any]]]

# openai's SDK opens its socket with websockets' connect() outside a context manager, which
# websockets 17.1 and later deprecate: the SDK's own warning, raised without the guard too.
SDK_SOCKET_WARNING = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)


class SocketServer:
    """A loopback provider WebSocket: each message received is answered by the events
    ``script`` returns for it (none unless a test sets one), ``greeting`` on connecting."""

    def __init__(self) -> None:
        from websockets.sync.server import serve

        self.received: list[dict[str, Any]] = []
        self.script: Script = lambda message: []
        self.greeting: list[dict[str, Any]] = []
        self.drop_after: int | None = None  # close the socket mid-answer after this many events
        self._server = serve(self._handle, "127.0.0.1", 0, max_size=None)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def websocket_base_url(self) -> str:
        """For the client's ``websocket_base_url``: before 2.0, openai makes ``wss://`` of
        any base URL."""
        return f"ws://127.0.0.1:{self.port}/v1"

    def _handle(self, ws: Any) -> None:
        for event in self.greeting:
            ws.send(json.dumps(event))
        for message in ws:
            request = json.loads(message)
            self.received.append(request)
            for n, event in enumerate(self.script(request)):
                if self.drop_after is not None and n == self.drop_after:
                    ws.close()
                    return
                ws.send(json.dumps(event))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r.get("type") == kind]

    @property
    def creates(self) -> list[dict[str, Any]]:
        return self.of_type("response.create")

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


def events_until(connection: Any, kind: str, count: int = 1) -> list[Any]:
    """Events a socket connection received until the ``count``-th of type ``kind``."""
    seen = []
    for event in connection:
        seen.append(event)
        if event.type == kind:
            count -= 1
            if count == 0:
                return seen
    raise AssertionError(f"the socket closed before {kind}")


@pytest.fixture
def sockets() -> Iterator[SocketServer]:
    server = SocketServer()
    yield server
    server.close()
