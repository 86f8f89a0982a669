"""``audio.speech.create`` with a model billed by the character (``tts-1``, ``tts-1-hd``): the
real OpenAI SDK (2.x on httpx, 3.x on httpx2) against a mock transport that answers with
audio as the API does, the input's characters held before the request is sent."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from kavach import AgentKavach, Budget
from kavach.errors import BudgetExceededError

from .conftest import Events, amocked_openai, mocked_server, sdk_httpx, spent

httpx = sdk_httpx()

AUDIO = b"ID3" + bytes(range(256)) * 400  # 100 KB of "MP3"
TEXT = "The quarterly report is ready. Revenue grew four percent over the last quarter. " * 12
PER_CHARACTER = 15_000  # tts-1: $15 per million characters, in nano-dollars a character


class Server:
    """Answers speech requests with audio; keeps the bodies and what was held meanwhile."""

    def __init__(self, guard: AgentKavach) -> None:
        self.guard = guard
        self.bodies: list[dict[str, Any]] = []
        self.held: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.read()))
        self.held.append(self.guard.status()[0].reserved)
        return httpx.Response(200, content=AUDIO, headers={"content-type": "audio/mpeg"})


Connect = Callable[[AgentKavach], tuple[Any, Server]]


@pytest.fixture
def client() -> Connect:
    """A guarded client on a mock server, and the server; closed after the test."""
    return mocked_server(Server)


def test_speech_is_held_and_settled_at_its_characters(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    speech = c.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    assert speech.content == AUDIO  # the SDK's own answer, unread by the guard
    cost = len(TEXT) * PER_CHARACTER  # 972 characters: $0.01458
    assert server.held == [cost]
    [event] = events.calls
    assert (event.operation, event.model, event.status) == ("speech", "tts-1", "ok")
    assert event.usage.input_characters == len(TEXT) and event.usage.input_tokens == 0
    assert event.cost_nanos == cost
    assert spent(guard) == cost and guard.status()[0].reserved == 0


def test_hd_speech_is_priced_at_its_own_rate(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, _ = client(guard)
    c.audio.speech.create(model="tts-1-hd", voice="alloy", input="Hello there.")
    assert events.calls[0].cost_nanos == len("Hello there.") * 30_000  # $30 per million


def test_speech_the_budget_cannot_pay_for_is_refused_before_it_is_sent(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(0.01))  # less than the $0.01458 this text costs
    c, server = client(guard)
    with pytest.raises(BudgetExceededError):
        c.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    assert server.bodies == []
    assert [e.status for e in events.calls] == ["refused"]


def test_strict_mode_sends_speech_as_written(make_guard: Any, client: Connect) -> None:
    guard = make_guard(budget=Budget.daily(1), mode="strict")
    c, server = client(guard)
    c.audio.speech.create(model="tts-1", voice="alloy", input="Hi", response_format="mp3")
    assert server.bodies == [
        {"model": "tts-1", "voice": "alloy", "input": "Hi", "response_format": "mp3"}
    ]  # no max-tokens parameter the API would refuse


def test_streamed_speech_is_left_for_the_caller_to_read(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, _ = client(guard)
    with c.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there."
    ) as response:
        assert b"".join(response.iter_bytes(4096)) == AUDIO
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", 12 * PER_CHARACTER)]


def test_token_billed_speech_is_let_through_and_said_not_counted(
    make_guard: Any, events: Events, client: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    # gpt-4o-mini-tts is billed by tokens an audio answer does not report.
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        c.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hi")
    assert server.held == [0] and events.calls == []
    assert any(
        "speech" in r.getMessage() and "cannot meter" in r.getMessage() for r in caplog.records
    )


@pytest.mark.anyio
async def test_async_speech_is_held_and_settled(make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server = Server(guard)
    c, http = amocked_openai(guard, server)
    speech = await c.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    assert speech.content == AUDIO
    async with c.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there."
    ) as response:
        assert b"".join([chunk async for chunk in response.iter_bytes()]) == AUDIO
    await http.aclose()
    assert server.held == [len(TEXT) * PER_CHARACTER, 12 * PER_CHARACTER]
    assert [(e.status, e.cost_nanos) for e in events.calls] == [
        ("ok", len(TEXT) * PER_CHARACTER),
        ("ok", 12 * PER_CHARACTER),
    ]
