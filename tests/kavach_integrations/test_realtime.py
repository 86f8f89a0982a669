"""Realtime sessions (``realtime.connect()``): the real OpenAI SDK against a loopback
``websockets`` server that answers as the Realtime API does, speech included."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest

from kavach import AgentKavach, Budget, CallLimitError, UnmeteredCallError
from kavach.errors import AgentKilledError, BudgetExceededError

openai = pytest.importorskip("openai")
pytest.importorskip("websockets")

from tests.kavach.ledger.conftest import make_ledger, prefix, redis_url  # noqa: E402, F401
from tests.kavach_integrations.conftest import (  # noqa: E402
    SDK_SOCKET_WARNING,
    Events,
    SocketServer,
    events_until,
    spent,
)

pytestmark = SDK_SOCKET_WARNING

MODEL = "gpt-realtime"
# gpt-realtime, nano-dollars a token: text in 4,000, audio in 32,000, text out 16,000, audio
# out 64,000 ($4, $32, $16 and $64 per million).
USAGE = {
    "input_tokens": 200,
    "output_tokens": 300,
    "total_tokens": 500,
    "input_token_details": {"text_tokens": 120, "audio_tokens": 80, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 50, "audio_tokens": 250},
}
COST = 120 * 4_000 + 80 * 32_000 + 50 * 16_000 + 250 * 64_000

_ids = itertools.count(1)
SECOND = 48_000  # bytes of 24 kHz 16-bit speech


def speech(seconds: float) -> str:
    return base64.b64encode(b"\0" * int(seconds * SECOND)).decode()


def response(usage: dict[str, Any] = USAGE, *, audio_deltas: int = 3) -> list[dict[str, Any]]:
    """A response as the server sends it: created, speech (0.1 s a delta), done with usage."""
    rid = f"resp_{next(_ids)}"
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "event_id": "e",
            "response": {"id": rid, "object": "realtime.response", "status": "in_progress"},
        }
    ]
    for _ in range(audio_deltas):
        events.append(
            {
                "type": "response.output_audio.delta",
                "event_id": "e",
                "response_id": rid,
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "delta": speech(0.1),
            }
        )
    done = {
        "id": rid,
        "object": "realtime.response",
        "status": "completed",
        "output": [],
        "usage": usage,
    }
    events.append({"type": "response.done", "event_id": "e", "response": done})
    return events


def server(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Answers ``response.create``; with voice activity detection, a committed turn too."""
    if message["type"] in ("response.create", "input_audio_buffer.commit"):
        return response()
    return []


@pytest.fixture(autouse=True)
def _answering(sockets: SocketServer) -> None:
    sockets.script = server
    session = {"type": "realtime", "model": MODEL, "output_modalities": ["audio"]}
    sockets.greeting = [{"type": "session.created", "event_id": "e", "session": session}]


def client(sockets: SocketServer, guard: AgentKavach) -> Any:
    return guard.wrap(
        openai.OpenAI(
            base_url=sockets.base_url,
            websocket_base_url=sockets.websocket_base_url,
            api_key="sk-t",
            max_retries=0,
        )
    )


def aclient(sockets: SocketServer, guard: AgentKavach) -> Any:
    return guard.wrap(
        openai.AsyncOpenAI(
            base_url=sockets.base_url, websocket_base_url=sockets.websocket_base_url, api_key="sk-t"
        )
    )


def until_done(connection: Any, responses: int = 1) -> list[Any]:
    return events_until(connection, "response.done", responses)


def test_each_response_is_held_and_settled_at_its_usage_speech_at_audio_rates(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        for _ in range(2):
            connection.response.create(response={"max_output_tokens": 400})
            assert guard.status()[0].reserved > 0  # held before it runs
            until_done(connection)
    assert len(sockets.creates) == 2
    assert [(e.status, e.operation, e.cost_nanos) for e in events.calls] == [
        ("ok", "realtime", COST)
    ] * 2
    assert events.calls[0].usage.output_audio_tokens == 250
    assert spent(guard) == 2 * COST
    assert guard.status()[0].reserved == 0


def test_a_response_the_server_starts_as_the_user_speaks_is_held_and_settled(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # Voice activity detection: the server answers a committed turn without response.create.
    guard = make_guard(budget=Budget.daily(1))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.input_audio_buffer.append(audio=speech(1))
        connection.input_audio_buffer.commit()
        until_done(connection)
    assert sockets.creates == []
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)]
    assert spent(guard) == COST


def test_the_conversation_so_far_is_held_as_input_of_the_next_response(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # The first response leaves 10,000 tokens of speech in the conversation ($0.32 at the
    # audio input rate): every later response takes it all as input again.
    long = {
        "input_tokens": 10_000,
        "output_tokens": 100,
        "input_token_details": {"audio_tokens": 10_000},
        "output_token_details": {"audio_tokens": 100},
    }
    sockets.script = lambda message: response(long) if message["type"] == "response.create" else []
    guard = make_guard(budget=Budget.daily(0.40))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.response.create(response={"max_output_tokens": 100})
        until_done(connection)
        assert spent(guard) == 10_000 * 32_000 + 100 * 64_000  # $0.3264 of $0.40
        with pytest.raises(BudgetExceededError):
            connection.response.create(response={"max_output_tokens": 100})
    assert len(sockets.creates) == 1
    assert [e.status for e in events.calls] == ["ok", "refused"]


def test_speech_sent_since_the_last_response_is_held(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # 30 s of speech: 600 tokens at 20 a second, $0.0192 at the audio input rate.
    guard = make_guard(budget=Budget.daily(0.015))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        for _ in range(60):
            connection.input_audio_buffer.append(audio=speech(0.5))
        with pytest.raises(BudgetExceededError):
            connection.response.create(response={"max_output_tokens": 50})
        connection.input_audio_buffer.clear()
    assert sockets.creates == []
    assert [e.status for e in events.calls] == ["refused"]


def test_speech_given_with_an_out_of_band_response_is_held(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # 10 s of speech: 200 tokens, $0.0064, and 50 tokens of speech out, $0.0032.
    guard = make_guard(budget=Budget.daily(0.008))
    said = {"type": "input_audio", "audio": speech(10)}
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        with pytest.raises(BudgetExceededError):
            connection.response.create(
                response={
                    "conversation": "none",
                    "max_output_tokens": 50,
                    "input": [{"type": "message", "role": "user", "content": [said]}],
                }
            )
    assert sockets.creates == []
    assert [e.status for e in events.calls] == ["refused"]


def test_a_text_only_response_holds_its_output_at_the_text_rate(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # 1,000 tokens out: $0.064 as speech, $0.016 as text. $0.03 pays for the text only.
    text = {"input_tokens": 10, "output_tokens": 10}
    sockets.script = lambda message: response(text, audio_deltas=0)
    guard = make_guard(budget=Budget.daily(0.03))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        with pytest.raises(BudgetExceededError):
            connection.response.create(response={"max_output_tokens": 1_000})
        connection.response.create(
            response={"max_output_tokens": 1_000, "output_modalities": ["text"]}
        )
        until_done(connection)
        # The session's setting counts as the response's.
        connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        connection.response.create(response={"max_output_tokens": 1_000})
        until_done(connection)
    assert len(sockets.creates) == 2
    assert [(e.status, e.cost_nanos) for e in events.calls] == [
        ("refused", 0),
        ("ok", 10 * 4_000 + 10 * 16_000),
        ("ok", 10 * 4_000 + 10 * 16_000),
    ]


def test_g711_speech_is_held_and_cut_at_its_own_byte_rate(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # G.711 is 8,000 bytes a second, PCM 48,000: the same bytes are six times the speech.
    # 240,000 bytes are 5 s of PCM (100 tokens, $0.0032) but 30 s of G.711 (600, $0.0192).
    g711 = {"type": "audio/pcmu"}
    chunk = base64.b64encode(b"\0" * 24_000).decode()
    guard = make_guard(budget=Budget.daily(0.015))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        for _ in range(10):
            connection.input_audio_buffer.append(audio=chunk)
        connection.input_audio_buffer.clear()
        connection.session.update(
            session={"type": "realtime", "audio": {"input": {"format": g711}}}
        )
        for _ in range(10):
            connection.input_audio_buffer.append(audio=chunk)
        with pytest.raises(BudgetExceededError):
            connection.response.create(response={"max_output_tokens": 50})
    assert [e.status for e in events.calls] == ["refused"]

    # Speech out: 4,800 bytes a delta are 0.1 s of PCM but 0.6 s of G.711, 12 tokens, so a
    # response held for 10 tokens (cut past 36) passes 3 deltas rather than 18.
    sockets.script = lambda message: response(audio_deltas=50)
    guard = make_guard(budget=Budget.daily(1))
    seen = []
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.session.update(
            session={"type": "realtime", "audio": {"output": {"format": g711}}}
        )
        connection.response.create(response={"max_output_tokens": 10})
        with pytest.raises(BudgetExceededError, match="cut after 48 output tokens"):
            for event in connection:
                seen.append(event)
    assert sum(e.type == "response.output_audio.delta" for e in seen) == 3


def test_strict_mode_sends_the_max_output_tokens_the_budget_can_pay(
    make_guard: Any, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(0.01), mode="strict")
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.response.create(response={"instructions": "Be brief."})
        until_done(connection)
    (sent,) = sockets.creates
    # $0.01 pays for about 156 tokens of speech out at $64 per million.
    assert 0 < sent["response"]["max_output_tokens"] < 160
    assert sent["response"]["instructions"] == "Be brief."


def test_speech_past_the_hold_is_cut_and_the_socket_closed(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # Held for 10 tokens (cut past 36: speech is counted at an assumed rate); the server
    # speaks for 5 s, 100 tokens.
    sockets.script = lambda message: response(audio_deltas=50)
    guard = make_guard(budget=Budget.daily(1))
    seen = []
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.response.create(response={"max_output_tokens": 10})
        with pytest.raises(BudgetExceededError, match="cut after 38 output tokens"):
            for event in connection:
                seen.append(event)
    assert sum(e.type == "response.output_audio.delta" for e in seen) == 18
    (call,) = events.calls
    assert call.status == "cut"
    assert call.usage.output_audio_tokens == 38
    assert guard.status()[0].reserved == 0
    assert spent(guard) == call.cost_nanos >= 38 * 64_000  # the speech, and any input


def test_a_stopped_agent_starts_no_response(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(sockets, guard)
    with c.realtime.connect(model=MODEL) as connection:
        assert connection.recv().type == "session.created"
        guard.kill("stop")
        with pytest.raises(AgentKilledError):
            connection.response.create()
        # A response the server starts itself closes the socket.
        connection.input_audio_buffer.commit()
        with pytest.raises(AgentKilledError):
            until_done(connection)
    with pytest.raises(AgentKilledError):
        c.realtime.connect(model=MODEL)
    assert sockets.creates == []
    assert spent(guard) == 0


def test_an_sdk_that_opens_its_socket_out_of_reach_is_stopped_and_not_counted(
    make_guard: Any, sockets: SocketServer, caplog: pytest.LogCaptureFixture
) -> None:
    # openai's deprecated beta.realtime opens its socket inside __enter__, where the guard
    # cannot meter it: it says so, and a stopped agent cannot open one.
    guard = make_guard(budget=Budget.daily(1))
    c = client(sockets, guard)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        c.beta.realtime.connect(model=MODEL)
    assert any("cannot meter" in r.getMessage() for r in caplog.records)
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        c.beta.realtime.connect(model=MODEL)


def test_an_sdk_whose_manager_opens_the_socket_elsewhere_is_stopped_and_not_counted(
    make_guard: Any,
    sockets: SocketServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The guard reaches the socket through the connection manager's _connect_ws (openai 2.0
    # and later) or as it is entered (before); an SDK release with neither must not leave
    # sessions silently unmetered.
    from openai.resources.realtime.realtime import RealtimeConnectionManager

    monkeypatch.delattr(RealtimeConnectionManager, "_connect_ws", raising=False)
    monkeypatch.delattr(RealtimeConnectionManager, "__enter__")
    guard = make_guard(budget=Budget.daily(1))
    c = client(sockets, guard)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        manager = c.realtime.connect(model=MODEL)
    assert isinstance(manager, RealtimeConnectionManager)
    assert any("cannot meter" in r.getMessage() for r in caplog.records)
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        c.realtime.connect(model=MODEL)


def test_a_session_entered_without_a_socket_the_guard_can_reach_is_said_not_counted(
    make_guard: Any,
    sockets: SocketServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before openai 2.0 the manager opens the socket as it is entered and the guard meters
    # the connection's _connection; a connection without one is let through, said not
    # counted, counted as a call, and closed when it may not go.
    from openai.resources.realtime.realtime import RealtimeConnectionManager

    closed: list[bool] = []

    class Connection:
        def close(self) -> None:
            closed.append(True)

    monkeypatch.delattr(RealtimeConnectionManager, "_connect_ws", raising=False)
    monkeypatch.setattr(RealtimeConnectionManager, "__enter__", lambda self: Connection())
    guard = make_guard(budget=Budget.daily(1), max_calls_per_run=1)
    c = client(sockets, guard)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        manager = c.realtime.connect(model=MODEL)
        assert not caplog.records  # nothing opened yet
        assert isinstance(manager.__enter__(), Connection)
    assert any("cannot meter" in r.getMessage() for r in caplog.records)
    assert not closed
    with pytest.raises(CallLimitError):  # the first counted as a call
        c.realtime.connect(model=MODEL).__enter__()
    assert closed == [True]

    refusing = make_guard(budget=Budget.daily(1), unmetered="refuse")
    with pytest.raises(UnmeteredCallError):
        client(sockets, refusing).realtime.connect(model=MODEL).__enter__()
    assert closed == [True, True]


def test_an_async_session_entered_without_a_socket_the_guard_can_reach_is_closed_if_refused(
    make_guard: Any, sockets: SocketServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai.resources.realtime.realtime import AsyncRealtimeConnectionManager

    closed: list[bool] = []

    class Connection:
        async def close(self) -> None:
            closed.append(True)

    async def enter(self: Any) -> Connection:
        return Connection()

    monkeypatch.delattr(AsyncRealtimeConnectionManager, "_connect_ws", raising=False)
    monkeypatch.setattr(AsyncRealtimeConnectionManager, "__aenter__", enter)
    refusing = make_guard(budget=Budget.daily(1), unmetered="refuse")

    async def session() -> None:
        async with aclient(sockets, refusing).realtime.connect(model=MODEL):
            pass

    with pytest.raises(UnmeteredCallError):
        asyncio.run(session())
    assert closed == [True]


def test_async_sessions_are_held_and_settled(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))

    async def session() -> None:
        c = aclient(sockets, guard)
        async with c.realtime.connect(model=MODEL) as connection:
            await connection.input_audio_buffer.append(audio=speech(1))
            await connection.input_audio_buffer.commit()  # answered by the server itself
            await connection.response.create()
            done = 0
            async for event in connection:
                done += event.type == "response.done"
                if done == 2:
                    break

    asyncio.run(session())
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)] * 2
    assert guard.status()[0].reserved == 0


def test_async_sessions_on_a_shared_redis_ledger_are_held_and_settled(
    make_guard: Any,
    events: Events,
    sockets: SocketServer,
    make_ledger: Any,  # noqa: F811  # the Redis ledger tests' fixture, imported above
) -> None:
    # A ledger that does I/O: the socket awaits its holds and settlements, on the loop.
    ledger = make_ledger()
    guard = make_guard(budget=Budget.daily(1), ledger=ledger)
    other = make_guard(agent_name="test-agent", budget=Budget.daily(1), ledger=ledger)

    async def session() -> None:
        c = aclient(sockets, guard)
        async with c.realtime.connect(model=MODEL) as connection:
            await connection.response.create(response={"max_output_tokens": 400})
            assert other.status()[0].reserved > 0  # another worker sees the hold
            async for event in connection:
                if event.type == "response.done":
                    break
        await ledger.aclose()  # its pool on this loop

    asyncio.run(session())
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)]
    assert spent(other) == COST and other.status()[0].reserved == 0


# -- transcription of the user's speech ------------------------------------------------------

TRANSCRIBE = "gpt-4o-transcribe"  # $6 per million audio tokens in, $10 per million out
TRANSCRIBED = {
    "type": "tokens",
    "input_tokens": 20,
    "output_tokens": 8,
    "total_tokens": 28,
    "input_token_details": {"audio_tokens": 20, "text_tokens": 0},
}
TRANSCRIPTION_COST = 20 * 6_000 + 8 * 10_000


def transcribing(model: str | None = TRANSCRIBE) -> dict[str, Any]:
    """A session.update that turns transcription on (or off, with None)."""
    setting = None if model is None else {"model": model, "language": "en"}
    return {"type": "realtime", "audio": {"input": {"transcription": setting}}}


def committed(item_id: str, outcome: str = "completed") -> list[dict[str, Any]]:
    """A committed turn: its item, then its transcription's end."""
    ended: dict[str, Any] = {
        "type": f"conversation.item.input_audio_transcription.{outcome}",
        "event_id": "e",
        "item_id": item_id,
        "content_index": 0,
    }
    if outcome == "completed":
        ended |= {"transcript": "What is the weather like?", "usage": TRANSCRIBED}
    else:
        ended["error"] = {"type": "transcription_error", "message": "audio unreadable"}
    return [
        {"type": "input_audio_buffer.committed", "event_id": "e", "item_id": item_id},
        ended,
    ]


def on_commit(answer: Callable[[], list[dict[str, Any]]]) -> Callable[[dict[str, Any]], Any]:
    """A server script that answers each committed turn of speech with ``answer()``."""
    return lambda message: answer() if message["type"] == "input_audio_buffer.commit" else []


def test_each_turn_of_speech_transcribed_is_held_and_settled_at_the_transcription_model(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    turns = itertools.count(1)
    sockets.script = on_commit(lambda: committed(f"item_{next(turns)}") + response())
    guard = make_guard(budget=Budget.daily(1))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.session.update(session=transcribing())
        for _ in range(2):
            connection.input_audio_buffer.append(audio=speech(1))
            connection.input_audio_buffer.commit()
            seen = events_until(connection, "input_audio_buffer.committed")
            assert seen[-1].type == "input_audio_buffer.committed"
            assert guard.status()[0].reserved > 0  # held while the server transcribes
            until_done(connection)
    calls = [(e.operation, e.model, e.status, e.cost_nanos) for e in events.calls]
    assert (
        calls
        == [
            ("transcription", TRANSCRIBE, "ok", TRANSCRIPTION_COST),
            ("realtime", MODEL, "ok", COST),
        ]
        * 2
    )
    assert events.calls[0].usage.input_audio_tokens == 20
    assert spent(guard) == 2 * (TRANSCRIPTION_COST + COST)
    assert guard.status()[0].reserved == 0


def test_a_transcription_the_budget_cannot_pay_for_closes_the_socket(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # 60 s of speech: 1,200 audio tokens ($0.0072) and a transcript of up to 616 ($0.00616).
    sockets.script = on_commit(lambda: committed("item_1"))
    guard = make_guard(budget=Budget.daily(0.01))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.session.update(session=transcribing())
        for _ in range(60):
            connection.input_audio_buffer.append(audio=speech(1))
        connection.input_audio_buffer.commit()
        with pytest.raises(BudgetExceededError):
            events_until(connection, "conversation.item.input_audio_transcription.completed")
    assert [(e.operation, e.status) for e in events.calls] == [("transcription", "refused")]
    assert spent(guard) == 0


def test_a_failed_transcription_is_given_back_and_one_the_socket_closes_on_is_billed(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # The first turn's transcription fails; the second's is still running when the socket
    # closes.
    turns = iter([committed("item_x", "failed"), committed("item_y")[:1]])
    sockets.script = on_commit(lambda: next(turns))
    guard = make_guard(budget=Budget.daily(1))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.session.update(session=transcribing())
        connection.input_audio_buffer.append(audio=speech(1))
        connection.input_audio_buffer.commit()
        events_until(connection, "conversation.item.input_audio_transcription.failed")
        assert guard.status()[0].reserved == 0
        connection.input_audio_buffer.append(audio=speech(1))
        connection.input_audio_buffer.commit()
        events_until(connection, "input_audio_buffer.committed")
    # The socket closed while the server transcribed the second turn: billed at its hold,
    # 20 audio tokens in and a transcript of up to 26 out.
    assert [(e.status, e.cost_nanos) for e in events.calls] == [
        ("error", 0),
        ("cancelled", 20 * 6_000 + 26 * 10_000),
    ]
    assert guard.status()[0].reserved == 0


def test_speech_is_not_held_for_transcription_the_session_does_not_ask_for(
    make_guard: Any,
    events: Events,
    sockets: SocketServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Off (the default, or turned off again), nothing is held; a model with no price the
    # guard knows is let through and said not to be counted.
    sockets.script = on_commit(lambda: committed("item_1")[:1])
    guard = make_guard(budget=Budget.daily(1))
    with caplog.at_level(logging.WARNING, logger="kavach"):
        with client(sockets, guard).realtime.connect(model=MODEL) as connection:
            for setting in (transcribing(None), transcribing("acme-asr-1")):
                connection.session.update(session=setting)
                connection.input_audio_buffer.append(audio=speech(1))
                connection.input_audio_buffer.commit()
                events_until(connection, "input_audio_buffer.committed")
                assert guard.status()[0].reserved == 0
    assert events.calls == []
    warned = [r.getMessage() for r in caplog.records if "cannot meter" in r.getMessage()]
    assert len(warned) == 1 and "transcription" in warned[0]
    assert "counts as a call" not in warned[0]  # the server started it: nothing to refuse


def test_refuse_mode_refuses_turning_on_transcription_the_guard_cannot_price(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # The server starts each transcription itself, so none can be refused one by one: the
    # session.update asking for them is, before it leaves. A priced model is let through.
    sockets.script = on_commit(lambda: committed("item_1"))
    guard = make_guard(budget=Budget.daily(1), unmetered="refuse")
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        with pytest.raises(UnmeteredCallError, match="transcription"):
            connection.session.update(session=transcribing("acme-asr-1"))
        connection.session.update(session={"type": "realtime", "instructions": "Be brief."})
        connection.session.update(session=transcribing())
        connection.input_audio_buffer.append(audio=speech(1))
        connection.input_audio_buffer.commit()
        events_until(connection, "conversation.item.input_audio_transcription.completed")
    updates = sockets.of_type("session.update")
    assert [u["session"].get("audio") for u in updates] == [None, transcribing()["audio"]]
    assert [(e.operation, e.status, e.refusal_reason) for e in events.calls] == [
        ("transcription", "refused", "unmetered"),
        ("transcription", "ok", None),
    ]


def test_async_refuse_mode_refuses_turning_on_transcription_the_guard_cannot_price(
    make_guard: Any, sockets: SocketServer
) -> None:
    sockets.script = lambda m: [
        {"type": "session.updated", "event_id": "e", "session": m["session"]}
    ]
    guard = make_guard(budget=Budget.daily(1), unmetered="refuse")

    async def session() -> None:
        c = aclient(sockets, guard)
        async with c.realtime.connect(model=MODEL) as connection:
            with pytest.raises(UnmeteredCallError):
                await connection.session.update(session=transcribing("acme-asr-1"))
            await connection.session.update(session={"type": "realtime"})
            async for event in connection:
                if event.type == "session.updated":
                    break

    asyncio.run(session())
    assert [u["session"] for u in sockets.of_type("session.update")] == [{"type": "realtime"}]


def test_whisper_transcriptions_are_held_and_settled_by_the_second(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # whisper-1 is billed $0.006 a minute of speech: 100,000 nano-dollars a second.
    def turn() -> list[dict[str, Any]]:
        ended = committed("item_w")
        ended[1]["usage"] = {"type": "duration", "seconds": 2.4}  # as whisper-1 reports it
        return ended

    sockets.script = on_commit(turn)
    guard = make_guard(budget=Budget.daily(1))
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.session.update(session=transcribing("whisper-1"))
        connection.input_audio_buffer.append(audio=speech(2.5))
        connection.input_audio_buffer.commit()
        events_until(connection, "input_audio_buffer.committed")
        assert guard.status()[0].reserved == 3 * 100_000  # 2.5 s, held to the second above
        events_until(connection, "conversation.item.input_audio_transcription.completed")
    [event] = events.calls
    assert (event.operation, event.model, event.status) == ("transcription", "whisper-1", "ok")
    assert event.usage.audio_seconds == 2 and event.cost_nanos == 2 * 100_000
    assert spent(guard) == 200_000 and guard.status()[0].reserved == 0


def test_async_sessions_hold_and_settle_transcriptions(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    sockets.script = on_commit(lambda: committed("item_1"))
    guard = make_guard(budget=Budget.daily(1))

    async def session() -> None:
        c = aclient(sockets, guard)
        async with c.realtime.connect(model=MODEL) as connection:
            await connection.session.update(session=transcribing())
            await connection.input_audio_buffer.append(audio=speech(1))
            await connection.input_audio_buffer.commit()
            async for event in connection:
                if event.type == "input_audio_buffer.committed":
                    assert guard.status()[0].reserved > 0
                if event.type == "conversation.item.input_audio_transcription.completed":
                    break

    asyncio.run(session())
    assert [(e.operation, e.cost_nanos) for e in events.calls] == [
        ("transcription", TRANSCRIPTION_COST)
    ]
    assert guard.status()[0].reserved == 0


def test_a_long_conversation_is_not_taken_for_a_loop(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # Every turn of a voice conversation sends the same settings and new speech: the
    # conversation grows, so no two responses (or transcriptions) are the same request.
    turns = itertools.count(1)

    def script(message: dict[str, Any]) -> list[dict[str, Any]]:
        if message["type"] == "input_audio_buffer.commit":
            return committed(f"item_{next(turns)}") + response()
        return response() if message["type"] == "response.create" else []

    sockets.script = script
    guard = make_guard(budget=Budget.daily(5), detect_loops=True, loop_threshold=3)
    with client(sockets, guard).realtime.connect(model=MODEL) as connection:
        connection.session.update(session=transcribing())
        for _ in range(6):  # voice activity detection: the server answers each turn
            connection.input_audio_buffer.append(audio=speech(1))
            connection.input_audio_buffer.commit()
            until_done(connection)
        for _ in range(6):  # and the client asks for responses itself
            connection.response.create(response={"max_output_tokens": 400})
            until_done(connection)
    assert [e.status for e in events.calls] == ["ok"] * 18
    assert not guard.killed
