"""Paid endpoints the guard cannot meter: they stop with the agent, count as calls, and say
their cost is not counted (or are refused outright with ``unmetered="refuse"``).

DALL·E images, image edits, video generation, audio, batches, fine-tuning, Mistral agents and
OCR and the like are billed per image, second, page or job, not by the token usage the guard prices. Through a
wrapped client they go through unchanged while the agent runs (the first call of each kind
logs a warning that its cost is not counted), and are refused, before any request, once the
agent is stopped, once a run has made its ``max_calls_per_run`` or a budget in calls is
spent, or when the same request repeats ``loop_threshold`` times in a run.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

try:  # mistralai 2.0 and later
    from mistralai.client import Mistral
    from mistralai.client import errors as mistral_errors
except ImportError:  # mistralai 1.x (the older-SDK stage of scripts/test.sh)
    from mistralai import Mistral
    from mistralai import models as mistral_errors
from openai.types import ImagesResponse

from kavach import (
    AgentKavach,
    AgentKilledError,
    Budget,
    CallLimitError,
    KavachConfigError,
    LedgerUnavailableError,
    LoopDetectedError,
    UnmeteredCallError,
)
from kavach._devtools.standin import StandIn
from kavach.config import guards_from_yaml
from kavach.ledger.memory import MemoryLedger

from .conftest import Events, amocked_openai, guarded_gemini, sdk_httpx

httpx = sdk_httpx()  # the OpenAI mocks are of the HTTP library the openai SDK is built on

pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)

_close: list[Callable[[], object]] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _close:
        _close.pop()()


def warnings_about(caplog: pytest.LogCaptureFixture, operation: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "cannot meter" in r.getMessage()
        and operation in r.getMessage()
    ]


def _images_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"created": 0, "data": [{"url": "https://img/1.png"}]})

    return httpx.MockTransport(handle)


def _audio_answer(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ID3audio", headers={"content-type": "audio/mpeg"})

    return answer


def test_openai_image_generation_goes_through_and_warns_once(
    make_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=_images_transport(seen))
    _close.append(http.close)
    client = guard.wrap(openai.OpenAI(api_key="k", base_url="http://mock/v1", http_client=http))

    with caplog.at_level(logging.WARNING, logger="kavach"):
        first = client.images.generate(model="dall-e-3", prompt="a lighthouse")
        second = client.images.generate(model="dall-e-3", prompt="a harbour")

    assert isinstance(first, ImagesResponse) and isinstance(second, ImagesResponse)
    assert [r.url.path for r in seen] == ["/v1/images/generations"] * 2
    [warning] = warnings_about(caplog, "image_generation")  # once, not per call
    assert "'test-agent'" in warning and "not counted" in warning
    assert "counts as a call" in warning and "unmetered='refuse'" in warning
    assert guard.spent == 0  # honest: nothing is made up for a call that cannot be priced


def test_openai_image_generation_stops_with_the_agent(make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=_images_transport(seen))
    _close.append(http.close)
    client = guard.wrap(openai.OpenAI(api_key="k", base_url="http://mock/v1", http_client=http))
    guard.kill("stopped from the dashboard")

    with pytest.raises(AgentKilledError, match="stopped from the dashboard"):
        client.images.generate(model="dall-e-3", prompt="a lighthouse")

    assert seen == []  # refused before any request
    [refused] = events.calls
    assert refused.status == "refused" and refused.operation == "image_generation"
    assert refused.model == "dall-e-3" and refused.provider == "openai"

    guard.resume()
    client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert len(seen) == 1


@pytest.mark.anyio
async def test_async_openai_audio_stops_with_the_agent(make_guard: Any) -> None:
    guard = make_guard(budget=Budget.daily(1))
    seen: list[httpx.Request] = []
    client, http = amocked_openai(guard, _audio_answer(seen))
    speech = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello")
    assert speech.content == b"ID3audio"

    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello")
    assert len(seen) == 1
    await http.aclose()


def test_openai_free_endpoints_neither_warn_nor_stop(
    make_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "modr", "model": "omni-moderation", "results": []})

    http = httpx.Client(transport=httpx.MockTransport(handle))
    _close.append(http.close)
    client = guard.wrap(openai.OpenAI(api_key="k", base_url="http://mock/v1", http_client=http))
    guard.kill("stop")
    with caplog.at_level(logging.WARNING, logger="kavach"):
        client.moderations.create(input="hello")  # free: not a spend to stop
    assert len(seen) == 1 and warnings_about(caplog, "") == []


def test_anthropic_message_batches_stop_with_the_agent(
    server: StandIn, make_guard: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    client = guard.wrap(
        anthropic.Anthropic(base_url=server.anthropic_url, api_key="k", max_retries=0)
    )
    _close.append(client.close)
    request = {
        "custom_id": "a",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    }
    with caplog.at_level(logging.WARNING, logger="kavach"):
        # The stand-in has no batches: its 404 reaching the caller shows the call went through.
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.create(requests=[request])  # type: ignore[list-item]
    assert server.last.path.endswith("/messages/batches")
    assert warnings_about(caplog, "batch")

    guard.kill("stop")
    count = len(server.requests)
    with pytest.raises(AgentKilledError):
        client.messages.batches.create(requests=[request])  # type: ignore[list-item]
    assert len(server.requests) == count
    assert events.calls[-1].status == "refused" and events.calls[-1].operation == "batch"


def test_google_video_generation_stops_with_the_agent(
    server: StandIn, make_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    client = guarded_gemini(server, guard)

    with caplog.at_level(logging.WARNING, logger="kavach"):
        # google-genai 3.x answers itself in Gemini API mode (Veo there is Vertex-only), 2.x
        # sends it (the stand-in's 404): either error shows it went through the guard.
        with pytest.raises((ValueError, genai_errors.ClientError)):
            client.models.generate_videos(model="veo-3.0-generate-001", source={"prompt": "waves"})
    assert warnings_about(caplog, "video_generation")

    guard.kill("stop")
    sent = len(server.requests)
    with pytest.raises(AgentKilledError):  # the guard answers first now
        client.models.generate_videos(model="veo-3.0-generate-001", source={"prompt": "waves"})
    assert len(server.requests) == sent


@pytest.mark.anyio
async def test_google_async_batches_stop_with_the_agent(server: StandIn, make_guard: Any) -> None:
    guard = make_guard(budget=Budget.daily(1))
    client = guarded_gemini(server, guard)
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        await client.aio.batches.create(model="gemini-2.0-flash", src="files/batch-input")
    assert server.requests == []


@pytest.mark.anyio
async def test_google_interactions_and_live_sessions_stop_with_the_agent(
    server: StandIn, make_guard: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    client = guarded_gemini(server, guard)
    if not hasattr(client.aio.interactions, "connect"):
        pytest.skip(f"google-genai {genai.__version__} has no live interactions to join")

    with caplog.at_level(logging.WARNING, logger="kavach"):
        with pytest.raises(Exception, match="no route"):  # the stand-in's 404: it went through
            client.interactions.create(model="gemini-2.5-flash", input="Say hello")
    assert server.last.path.endswith("/interactions")
    assert warnings_about(caplog, "interaction")

    guard.kill("stop")
    count = len(server.requests)
    with pytest.raises(AgentKilledError):
        client.interactions.create(model="gemini-2.5-flash", input="Say hello")
    with pytest.raises(AgentKilledError):
        client.interactions.create(model="gemini-2.5-flash", input="Say hello", stream=True)
    with pytest.raises(AgentKilledError):
        await client.aio.interactions.create(model="gemini-2.5-flash", input="Say hello")
    with pytest.raises(AgentKilledError):  # refused before the websocket is opened
        async with client.aio.live.connect(model="gemini-live-2.5-flash-preview"):
            pass
    with pytest.raises(AgentKilledError):
        async with client.aio.live.music.connect(model="models/lyria-realtime-exp"):
            pass
    with pytest.raises(AgentKilledError):  # joining a live interaction, before its websocket
        client.aio.interactions.connect("interactions/live_1")
    # An ephemeral token lets a browser open a Live session billed to the project.
    with pytest.raises(AgentKilledError):
        client.auth_tokens.create(config={"uses": 1})
    with pytest.raises(AgentKilledError):
        await client.aio.auth_tokens.create(config={"uses": 1})
    with pytest.raises(AgentKilledError):
        await client.aio.interactions.auth_tokens.create()
    assert len(server.requests) == count
    assert [(e.operation, e.status) for e in events.calls[-9:]] == [
        ("interaction", "refused"),
        ("interaction", "refused"),
        ("interaction", "refused"),
        ("live_session", "refused"),
        ("music_generation", "refused"),
    ] + [("live_session", "refused")] * 4


def test_mistral_ocr_and_agents_stop_with_the_agent(
    server: StandIn, make_guard: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    client = guard.wrap(Mistral(api_key="k", server_url=server.base_url))
    _close.append(lambda: client.__exit__(None, None, None))
    document = {"type": "document_url", "document_url": "https://example.com/a.pdf"}

    with caplog.at_level(logging.WARNING, logger="kavach"):
        with pytest.raises(mistral_errors.SDKError):  # the stand-in's 404: it went through
            client.ocr.process(model="mistral-ocr-latest", document=document)  # type: ignore[arg-type]
    assert server.last.path.endswith("/ocr")
    assert warnings_about(caplog, "ocr")

    guard.kill("stop")
    count = len(server.requests)
    with pytest.raises(AgentKilledError):
        client.ocr.process(model="mistral-ocr-latest", document=document)  # type: ignore[arg-type]
    with pytest.raises(AgentKilledError):
        client.agents.complete(agent_id="ag_1", messages=[{"role": "user", "content": "Hi"}])
    assert len(server.requests) == count
    assert [e.operation for e in events.calls[-2:]] == ["ocr", "agent_completion"]


def test_disabled_guard_lets_unmetered_calls_through(make_guard: Any) -> None:
    guard: AgentKavach = make_guard(budget=Budget.daily(1), enabled=False)
    seen: list[httpx.Request] = []
    http = httpx.Client(transport=_images_transport(seen))
    _close.append(http.close)
    client = guard.wrap(openai.OpenAI(api_key="k", base_url="http://mock/v1", http_client=http))
    guard.kill("stop")
    client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert len(seen) == 1


@pytest.mark.anyio
async def test_mistral_async_conversations_stop_with_the_agent(
    server: StandIn, make_guard: Any
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    client = guard.wrap(Mistral(api_key="k", server_url=server.base_url))
    _close.append(lambda: client.__exit__(None, None, None))
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        await client.beta.conversations.start_async(inputs="Hi", model="mistral-medium-latest")
    assert server.requests == []


@pytest.mark.anyio
async def test_google_file_search_indexing_stops_with_the_agent(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # Importing or uploading into a File Search store is billed for embedding the file
    # (google-genai 3.x); it went through a stopped agent's client unchecked.
    guard = make_guard(budget=Budget.daily(1))
    client = guarded_gemini(server, guard)
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        client.file_search_stores.import_file(
            file_search_store_name="fileSearchStores/s1", file_name="files/f1"
        )
    with pytest.raises(AgentKilledError):
        await client.aio.file_search_stores.upload_to_file_search_store(
            file_search_store_name="fileSearchStores/s1", file=io.BytesIO(b"report")
        )
    assert server.requests == []
    assert [e.operation for e in events.calls] == ["file_search_indexing"] * 2


def _images_client(guard: AgentKavach, seen: list[httpx.Request]) -> openai.OpenAI:
    http = httpx.Client(transport=_images_transport(seen))
    _close.append(http.close)
    return guard.wrap(openai.OpenAI(api_key="k", base_url="http://mock/v1", http_client=http))


def test_a_repeated_unmetered_request_is_a_loop(make_guard: Any, events: Events) -> None:
    # A runaway agent asking DALL·E for the same picture at 3 a.m. costs real money even
    # though the guard cannot price it: the loop detector stops it like a chat loop.
    guard = make_guard(budget=Budget.daily(1), detect_loops=True, loop_threshold=3)
    seen: list[httpx.Request] = []
    client = _images_client(guard, seen)

    client.images.generate(model="dall-e-3", prompt="a lighthouse")
    client.images.generate(model="dall-e-3", prompt="a harbour")  # another request: not a repeat
    client.images.generate(model="dall-e-3", prompt="a lighthouse")
    with pytest.raises(LoopDetectedError, match="same request 3 times"):
        client.images.generate(model="dall-e-3", prompt="a lighthouse")

    assert len(seen) == 3
    refused = events.calls[-1]
    assert (refused.status, refused.refusal_reason) == ("refused", "loop_detected")
    assert refused.operation == "image_generation"
    with pytest.raises(AgentKilledError):  # kill_on_guardrail: the agent is stopped
        client.images.generate(model="dall-e-3", prompt="a new picture")
    assert len(seen) == 3


def test_uploads_with_one_body_are_not_taken_for_a_loop(make_guard: Any) -> None:
    # An image edit sends its picture as a file the JSON body does not show: three edits
    # with one prompt are three different requests.
    guard = make_guard(budget=Budget.daily(1), detect_loops=True, loop_threshold=2)
    seen: list[httpx.Request] = []
    client = _images_client(guard, seen)
    for picture in (b"\x89PNG one", b"\x89PNG two", b"\x89PNG three"):
        client.images.edit(
            model="dall-e-2", image=("p.png", io.BytesIO(picture), "image/png"), prompt="add a moon"
        )
    assert len(seen) == 3


def test_unmetered_calls_count_toward_max_calls_per_run(make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1), max_calls_per_run=2, kill_on_guardrail=False)
    seen: list[httpx.Request] = []
    client = _images_client(guard, seen)

    with guard.run("batch-1"):
        client.images.generate(model="dall-e-3", prompt="one")
        client.images.generate(model="dall-e-3", prompt="two")
        with pytest.raises(CallLimitError, match="max_calls_per_run=2"):
            client.images.generate(model="dall-e-3", prompt="three")
    assert len(seen) == 2
    assert events.calls[-1].refusal_reason == "max_calls_per_run"
    assert events.calls[-1].run_id == "batch-1"

    with guard.run("batch-2"):  # a new run starts counting again
        client.images.generate(model="dall-e-3", prompt="three")
    assert len(seen) == 3


def test_a_call_limit_trip_by_unmetered_calls_stops_the_agent(make_guard: Any) -> None:
    guard = make_guard(budget=Budget.daily(1), max_calls_per_run=1)  # kill_on_guardrail
    seen: list[httpx.Request] = []
    client = _images_client(guard, seen)
    with guard.run("r"):
        client.images.generate(model="dall-e-3", prompt="one")
        with pytest.raises(CallLimitError):
            client.images.generate(model="dall-e-3", prompt="two")
    assert guard.killed
    with guard.run("another"), pytest.raises(AgentKilledError, match="max_calls_per_run"):
        client.images.generate(model="dall-e-3", prompt="two")
    assert len(seen) == 1


def test_unmetered_calls_fail_closed_when_the_ledger_is_down(
    make_guard: Any, events: Events
) -> None:
    class Down(MemoryLedger):
        def reserve(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("connection refused")

    guard = make_guard(budget=Budget.daily(1), max_calls_per_run=5, ledger=Down())
    seen: list[httpx.Request] = []
    client = _images_client(guard, seen)
    with pytest.raises(LedgerUnavailableError, match="ConnectionError: connection refused"):
        client.images.generate(model="dall-e-3", prompt="one")
    assert seen == []
    assert events.calls[-1].refusal_reason == "ledger_unavailable"


class _NetworkLedger(MemoryLedger):
    """A ledger that does I/O, as Redis does: in async code, its blocking methods would
    stall the event loop (every other task waits a round trip), so they must not be used."""

    in_process = False
    blocking: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.blocking = []
        self.down = False

    def reserve(self, *args: Any, **kwargs: Any) -> Any:
        self.blocking.append("reserve")
        return super().reserve(*args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> Any:
        self.blocking.append("settle")
        return super().settle(*args, **kwargs)

    async def areserve(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise ConnectionError("connection refused")
        return MemoryLedger.reserve(self, *args, **kwargs)

    async def asettle(self, *args: Any, **kwargs: Any) -> Any:
        return MemoryLedger.settle(self, *args, **kwargs)


@pytest.mark.anyio
async def test_async_clients_count_unmetered_calls_without_blocking_the_event_loop(
    make_guard: Any,
) -> None:
    ledger = _NetworkLedger()
    guard = make_guard(budget=[Budget.daily(1), Budget.daily(calls=2)], ledger=ledger)
    seen: list[Any] = []
    client, http = amocked_openai(guard, _audio_answer(seen))
    speech = {"model": "gpt-4o-mini-tts", "voice": "alloy"}
    await client.audio.speech.create(input="one", **speech)
    await client.audio.speech.create(input="two", **speech)  # the calls budget reaches 100%
    with pytest.raises(AgentKilledError, match="budget reached 100%"):
        await client.audio.speech.create(input="three", **speech)
    assert len(seen) == 2
    assert ledger.blocking == []  # counted with areserve/asettle, awaited
    await http.aclose()


@pytest.mark.anyio
async def test_async_unmetered_calls_fail_closed_when_the_ledger_is_down(
    make_guard: Any, events: Events
) -> None:
    ledger = _NetworkLedger()
    ledger.down = True
    guard = make_guard(budget=Budget.daily(1), max_calls_per_run=5, ledger=ledger)
    seen: list[Any] = []
    client, http = amocked_openai(guard, _audio_answer(seen))
    with pytest.raises(LedgerUnavailableError, match="ConnectionError: connection refused"):
        await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hi")
    assert seen == []
    assert events.calls[-1].refusal_reason == "ledger_unavailable"
    await http.aclose()


def test_unmetered_calls_spend_a_budget_in_calls(make_guard: Any) -> None:
    guard = make_guard(budget=[Budget.daily(1), Budget.daily(calls=2)])
    seen: list[httpx.Request] = []
    client = _images_client(guard, seen)
    client.images.generate(model="dall-e-3", prompt="one")
    assert guard.spent == 0  # no dollars made up
    client.images.generate(model="dall-e-3", prompt="two")  # the calls budget reaches 100%
    with pytest.raises(AgentKilledError, match="budget reached 100%"):
        client.images.generate(model="dall-e-3", prompt="three")
    assert len(seen) == 2


def test_refuse_mode_refuses_unmetered_calls_before_any_request(
    make_guard: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(1), unmetered="refuse")
    seen: list[httpx.Request] = []
    client = _images_client(guard, seen)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        with pytest.raises(UnmeteredCallError, match="unmetered='allow'") as caught:
            client.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert seen == []
    assert (caught.value.operation, caught.value.model) == ("image_generation", "dall-e-3")
    refused = events.calls[-1]
    assert (refused.status, refused.refusal_reason) == ("refused", "unmetered")
    assert warnings_about(caplog, "image_generation") == []  # refused, not let through
    assert not guard.killed  # a refusal, not a stop: metered calls go on


@pytest.mark.anyio
async def test_refuse_mode_refuses_async_unmetered_calls(make_guard: Any) -> None:
    guard = make_guard(budget=Budget.daily(1), unmetered="refuse")
    seen: list[httpx.Request] = []
    client, http = amocked_openai(guard, _audio_answer(seen))
    with pytest.raises(UnmeteredCallError, match="speech"):
        await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello")
    assert seen == []
    await http.aclose()


def test_unmetered_setting_from_the_config_file(tmp_path: Any) -> None:
    path = tmp_path / "kavach.yaml"
    path.write_text("defaults: {unmetered: refuse}\nagents: {bot: {budget: {daily: 5}}}\n")
    assert guards_from_yaml(path)["bot"].unmetered == "refuse"
    path.write_text("agents: {bot: {budget: {daily: 5}, unmetered: never}}\n")
    with pytest.raises(KavachConfigError, match="unmetered"):
        guards_from_yaml(path)
    with pytest.raises(KavachConfigError, match="'allow' or 'refuse'"):
        AgentKavach("bot", unmetered="never")  # type: ignore[arg-type]
