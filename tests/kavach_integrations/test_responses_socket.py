"""Responses over a WebSocket (``responses.connect()``): the real OpenAI SDK against a
loopback ``websockets`` server that answers each ``response.create`` as the API does."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
from typing import Any

import pytest

from kavach import AgentKavach, Budget
from kavach.errors import AgentKilledError, BudgetExceededError

openai = pytest.importorskip("openai")
pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tests.kavach_integrations.conftest import (  # noqa: E402
    SDK_SOCKET_WARNING,
    Events,
    SocketServer,
    events_until,
    openai_lacks_responses,
    spent,
)

_NO_CONNECT = openai_lacks_responses("connect")
pytestmark = [
    SDK_SOCKET_WARNING,
    pytest.mark.skipif(_NO_CONNECT is not None, reason=_NO_CONNECT or ""),
]

INPUT, OUTPUT = 100, 3
# gpt-4o: $2.50 per million input tokens, $10 per million output tokens, in nano-dollars.
COST = INPUT * 2_500 + OUTPUT * 10_000

_ids = itertools.count(1)


def answer(
    request: dict[str, Any],
    *,
    output: int = OUTPUT,
    successor: bool = False,
    input_tokens: int = INPUT,
) -> list[dict[str, Any]]:
    """The events the API sends for one response: created, text deltas, completed."""
    lane = {"stream_id": request["stream_id"]} if "stream_id" in request else {}
    rid = f"resp_{next(_ids)}"
    response = {"id": rid, "object": "response", "model": request.get("model", "gpt-4o")}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**response, "status": "in_progress"}, **lane}
    ]
    for i in range(output):
        events.append(
            {
                "type": "response.output_text.delta",
                "delta": "tok",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "sequence_number": i + 1,
                **lane,
            }
        )
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": output,
        "total_tokens": input_tokens + output,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    done = {**response, "status": "completed", "output": [], "usage": usage}
    events.append({"type": "response.completed", "response": done, **lane})
    if successor:  # a steered response's successor, which the server starts itself
        events += answer({"model": request.get("model", "gpt-4o"), **lane})
    return events


@pytest.fixture(autouse=True)
def _answering(sockets: SocketServer) -> None:
    sockets.script = answer


def client(server: SocketServer, guard: AgentKavach) -> Any:
    return guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="sk-t", max_retries=0))


def aclient(server: SocketServer, guard: AgentKavach) -> Any:
    return guard.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-t", max_retries=0))


def until_done(connection: Any, responses: int = 1) -> list[Any]:
    return events_until(connection, "response.completed", responses)


def test_each_response_is_held_before_it_is_sent_and_settled_at_its_usage(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    with client(sockets, guard).responses.connect() as connection:
        for turn in range(3):
            connection.response.create(model="gpt-4o", input=f"step {turn}", max_output_tokens=50)
            texts = [e.delta for e in until_done(connection) if e.type.endswith(".delta")]
            assert texts == ["tok"] * OUTPUT  # the caller sees every event, as sent
            assert guard.status()[0].reserved == 0  # settled when its response completed
    assert len(sockets.creates) == 3
    assert [(e.status, e.cost_nanos, e.usage.output_tokens) for e in events.calls] == [
        ("ok", COST, OUTPUT)
    ] * 3
    assert spent(guard) == 3 * COST


def test_a_request_that_continues_a_response_is_held_for_the_turns_before_it(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # The first response leaves 100,003 tokens in its conversation ($0.25 as input): a
    # request continuing it (previous_response_id) is billed for them all again.
    guard = make_guard(budget=Budget.daily(0.40))
    sockets.script = lambda request: answer(request, input_tokens=100_000)
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="read this", max_output_tokens=50)
        first = until_done(connection)[-1].response.id
        with pytest.raises(BudgetExceededError):
            connection.response.create(
                model="gpt-4o", input="and now?", previous_response_id=first, store=False
            )
    assert len(sockets.creates) == 1
    assert [e.status for e in events.calls] == ["ok", "refused"]


def test_a_request_the_budget_cannot_pay_is_refused_and_never_sent(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # Reserve mode holds the request's 10,000 max output tokens ($0.10): more than $0.05.
    guard = make_guard(budget=Budget.daily(0.05))
    with client(sockets, guard).responses.connect() as connection:
        with pytest.raises(BudgetExceededError):
            connection.response.create(model="gpt-4o", input="hi", max_output_tokens=10_000)
        # openai 2.x queues a message whose send raised, and sends its queue again after a
        # reconnect: the refused request must not go out then either.
        connection._flush_send_queue()
        connection.response.create(model="gpt-4o", input="hi", max_output_tokens=100)
        until_done(connection)
    assert [r["max_output_tokens"] for r in sockets.creates] == [100]
    assert [e.status for e in events.calls] == ["refused", "ok"]
    assert spent(guard) == COST


def test_strict_mode_sends_the_max_output_tokens_the_budget_can_pay(
    make_guard: Any, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(0.001), mode="strict")
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi")
        until_done(connection)
    (sent,) = sockets.creates
    # $0.001 less the input's hold pays for about 75 output tokens at $10 per million.
    assert 0 < sent["max_output_tokens"] < 100
    assert sent["input"] == "hi" and sent["model"] == "gpt-4o"


def test_a_response_that_outruns_its_hold_is_cut_and_the_socket_closed(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1), default_max_output_tokens=10)
    sockets.script = lambda request: answer(request, output=100)
    seen = []
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi")
        with pytest.raises(BudgetExceededError, match="cut after 11 output tokens"):
            for event in connection:
                seen.append(event)
    assert sum(e.type.endswith(".delta") for e in seen) == 10  # the tokens paid for
    (call,) = events.calls
    assert call.status == "cut"
    status = guard.status()[0]
    assert status.reserved == 0
    assert status.spent == call.cost_nanos > 0
    assert call.usage.output_tokens == 11


def test_an_error_answer_gives_the_hold_back(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    sockets.script = lambda request: [
        {"type": "error", "status": 400, "error": {"code": "invalid_request", "message": "no"}}
    ]
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi", max_output_tokens=50)
        assert connection.recv().type == "error"
    (call,) = events.calls
    assert (call.status, call.cost_nanos) == ("error", 0)
    assert "invalid_request" in (call.error or "")
    assert guard.status()[0].reserved == guard.status()[0].spent == 0


def test_a_response_the_server_starts_itself_is_held_and_settled(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    sockets.script = lambda request: answer(request, successor=True)
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi", max_output_tokens=50)
        until_done(connection, responses=2)
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)] * 2
    assert spent(guard) == 2 * COST


def test_an_unreadable_answer_leaves_the_call_held_until_the_socket_closes(
    make_guard: Any, events: Events, sockets: SocketServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A completed event without its response: the caller still gets it, and the call,
    # whose usage is unknown, is settled for what it consumed when the socket closes.
    guard = make_guard(budget=Budget.daily(1))
    sockets.script = lambda request: [*answer(request)[:-1], {"type": "response.completed"}]
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi", max_output_tokens=50)
        with caplog.at_level(logging.ERROR, logger="kavach"):
            until_done(connection)
        assert "could not read" in caplog.text
        assert guard.status()[0].reserved > 0
    (call,) = events.calls
    assert (call.status, call.usage.output_tokens) == ("cancelled", OUTPUT)
    assert guard.status()[0].reserved == 0 and spent(guard) == call.cost_nanos > 0


def test_a_request_queued_before_it_starts_is_one_call(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # "response.queued" comes before "response.created": the created one is ours, not a
    # response the server started itself.
    guard = make_guard(budget=Budget.daily(1))
    sockets.script = lambda request: [{"type": "response.queued"}, *answer(request)]
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi", max_output_tokens=50)
        until_done(connection)
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)]
    assert guard.status()[0].reserved == 0


def test_a_socket_freed_unclosed_settles_its_open_calls(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    sockets.script = lambda request: []  # never answered
    connection = client(sockets, guard).responses.connect().enter()
    connection.response.create(model="gpt-4o", input="hi", max_output_tokens=50)
    assert guard.status()[0].reserved > 0
    connection._connection.socket.close()  # a dropped process's socket, never closed by it
    del connection
    gc.collect()
    (call,) = events.calls
    assert call.status == "error"  # unanswered: given back
    assert guard.status()[0].reserved == guard.status()[0].spent == 0


def test_a_started_response_the_budget_cannot_pay_closes_the_socket(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    # The successor is held at the default 4,096 max output tokens ($0.04): over what is left.
    guard = make_guard(budget=Budget.daily(0.01))
    sockets.script = lambda request: answer(request, successor=True)
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi", max_output_tokens=50)
        with pytest.raises(BudgetExceededError):
            until_done(connection, responses=2)
        # The socket is closed: iterating ends after what had already arrived (with the
        # socket open, it would wait for more).
        assert all(e.type != "response.created" for e in connection)
    assert [e.status for e in events.calls] == ["ok", "refused"]
    assert spent(guard) == COST


def test_responses_on_separate_lanes_are_settled_each_at_its_own_usage(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))

    def interleaved(request: dict[str, Any]) -> list[dict[str, Any]]:
        return answer(request, output=int(request["stream_id"]))

    sockets.script = interleaved
    with client(sockets, guard).responses.connect() as connection:
        for lane in ("2", "5"):
            connection.send(
                {"type": "response.create", "model": "gpt-4o", "input": "hi", "stream_id": lane}
            )
        until_done(connection, responses=2)
    assert sorted(e.usage.output_tokens for e in events.calls) == [2, 5]
    assert spent(guard) == 2 * INPUT * 2_500 + 7 * 10_000
    assert guard.status()[0].reserved == 0


def test_a_socket_dropped_mid_answer_settles_what_arrived(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    sockets.drop_after = 3  # created and two deltas
    with client(sockets, guard).responses.connect() as connection:
        connection.response.create(model="gpt-4o", input="hi", max_output_tokens=50)
        with pytest.raises(ConnectionClosed):
            while True:
                connection.recv()
    (call,) = events.calls
    assert call.status == "cancelled" and call.usage.output_tokens == 2
    assert guard.status()[0].reserved == 0
    assert spent(guard) == call.cost_nanos > 0


def test_a_stopped_agent_sends_no_request(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(sockets, guard)
    with c.responses.connect() as connection:
        guard.kill("stop")
        with pytest.raises(AgentKilledError):
            connection.response.create(model="gpt-4o", input="hi")
    with pytest.raises(AgentKilledError):
        c.responses.connect()
    assert sockets.creates == []
    assert spent(guard) == 0


def test_async_sessions_are_held_and_settled(
    make_guard: Any, events: Events, sockets: SocketServer
) -> None:
    guard = make_guard(budget=Budget.daily(0.05))

    async def session() -> None:
        async with aclient(sockets, guard).responses.connect() as connection:
            with pytest.raises(BudgetExceededError):
                await connection.response.create(
                    model="gpt-4o", input="hi", max_output_tokens=10_000
                )
            for turn in range(2):
                await connection.response.create(
                    model="gpt-4o", input=f"step {turn}", max_output_tokens=50
                )
                async for event in connection:
                    if event.type == "response.completed":
                        break

    asyncio.run(session())
    assert [e.status for e in events.calls] == ["refused", "ok", "ok"]
    assert len(sockets.creates) == 2
    assert spent(guard) == 2 * COST
    assert guard.status()[0].reserved == 0
