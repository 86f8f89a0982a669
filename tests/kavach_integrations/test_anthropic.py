"""The real anthropic SDK, guarded, against the loopback stand-in: 1.x and later on httpx2
(stage one), 0.x on httpx (the older-SDK stage of scripts/test.sh)."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pydantic
import pytest
from anthropic.types import Message

from kavach import AgentKavach, AgentKilledError, Budget, BudgetExceededError, KavachError, Usage
from kavach._devtools.standin import Reply, StandIn, ToolCall

from .conftest import Events, sdk_httpx

httpx = sdk_httpx(anthropic)  # the mock transports must be of the SDK's own HTTP library

MSGS = [{"role": "user", "content": "Say hello"}]
MODEL = "claude-sonnet-4-0"
_open: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client(server: StandIn, guard: AgentKavach, **kwargs: Any) -> anthropic.Anthropic:
    kwargs.setdefault("max_retries", 0)
    c = guard.wrap(anthropic.Anthropic(base_url=server.anthropic_url, api_key="k", **kwargs))
    _open.append(c)
    return c


def aclient(server: StandIn, guard: AgentKavach) -> anthropic.AsyncAnthropic:
    return guard.wrap(
        anthropic.AsyncAnthropic(base_url=server.anthropic_url, api_key="k", max_retries=0)
    )


def test_cache_tokens_are_added_into_input_and_priced(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(
        Reply(
            input_tokens=10_000,
            cached_tokens=6000,
            cache_write_tokens=2000,
            cache_write_1h_tokens=1000,
            output_tokens=100,
        )
    )
    message = client(server, guard).messages.create(model=MODEL, max_tokens=500, messages=MSGS)
    assert isinstance(message, Message)
    assert message.usage.input_tokens == 1000  # what Anthropic reports: uncached only
    [event] = events.settled
    assert event.usage == Usage(
        input_tokens=10_000,
        output_tokens=100,
        cache_read_tokens=6000,
        cache_write_tokens=2000,
        cache_write_1h_tokens=1000,
    )
    # $3 input, $0.30 cache read, $3.75 5m write, $6 1h write, $15 output per million.
    assert event.cost_nanos == 1000 * 3000 + 6000 * 300 + 2000 * 3750 + 1000 * 6000 + 100 * 15000


def test_strict_mode_lowers_max_tokens_and_reserve_mode_keeps_it(
    server: StandIn, make_guard: Any
) -> None:
    strict = make_guard(budget=Budget.daily(0.002), mode="strict")
    client(server, strict).messages.create(model=MODEL, max_tokens=4000, messages=MSGS)
    assert 16 <= server.last.body["max_tokens"] < 200
    loose = make_guard(agent_name="loose", budget=Budget.daily(1))
    client(server, loose).messages.create(model=MODEL, max_tokens=4000, messages=MSGS)
    assert server.last.body["max_tokens"] == 4000


def test_strict_mode_keeps_extended_thinking_under_max_tokens(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The API refuses thinking.budget_tokens >= max_tokens: strict mode lowers both.
    thinking = {"type": "enabled", "budget_tokens": 4000}
    strict = make_guard(budget=Budget.daily(0.035), mode="strict")  # ~2,300 tokens at $15/M
    c = client(server, strict)
    c.messages.create(model=MODEL, max_tokens=8000, thinking=thinking, messages=MSGS)
    sent = server.last.body
    assert 1024 <= sent["thinking"]["budget_tokens"] < sent["max_tokens"] < 4000
    # Too little left for the 1,024-token minimum: refused before any request.
    poor = make_guard(agent_name="poor", budget=Budget.daily(0.005), mode="strict")
    requests = len(server.requests)
    with pytest.raises(BudgetExceededError, match="extended thinking"):
        client(server, poor).messages.create(
            model=MODEL, max_tokens=8000, thinking=thinking, messages=MSGS
        )
    assert len(server.requests) == requests and poor.ledger.open_holds == 0
    assert poor.status()[0].spent == 0


def test_strict_mode_holds_a_max_tokens_given_in_extra_body(
    server: StandIn, make_guard: Any
) -> None:
    # The SDK merges extra_body over the request when it sends it: a limit read and set
    # beside it was overridden, and $0.03 of output went through a $0.002 budget.
    strict = make_guard(budget=Budget.daily(0.002), mode="strict")
    server.script(Reply(output_tokens=2000))
    client(server, strict).messages.create(
        model=MODEL, max_tokens=10, messages=MSGS, extra_body={"max_tokens": 2000}
    )
    assert 16 <= server.last.body["max_tokens"] < 200
    assert strict.status()[0].spent <= 2_000_000


def test_refusal_is_not_retried_nor_wrapped(server: StandIn, make_guard: Any) -> None:
    guard = make_guard(budget=Budget.daily(0.0001))
    c = client(server, guard, max_retries=3)
    with pytest.raises(BudgetExceededError) as caught:
        c.messages.create(model=MODEL, max_tokens=4000, messages=MSGS)
    assert not isinstance(caught.value, anthropic.APIError)
    assert server.requests == []


def test_provider_errors_release(server: StandIn, make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(status=529), Reply(status=529))
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(server, guard, max_retries=1).messages.create(
            model=MODEL, max_tokens=100, messages=MSGS
        )
    assert caught.value.status_code == 529
    assert len(server.requests) == 2
    assert [e.status for e in events.calls] == ["error"]
    assert guard.ledger.open_holds == 0


def test_count_tokens_and_models_pass_untouched(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    c = client(server, make_guard(budget=Budget.daily(1)))
    assert c.messages.count_tokens(model=MODEL, messages=MSGS).input_tokens > 0
    assert events.calls == []


def test_stream_helper_is_metered_and_tool_use_recorded(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(
        Reply(input_tokens=500, cached_tokens=400, tool_calls=[ToolCall("lookup", {"id": 7})])
    )
    with client(server, guard).messages.stream(
        model=MODEL, max_tokens=300, messages=MSGS
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [event] = events.settled
    assert event.status == "ok"
    assert event.usage.input_tokens == 500 and event.usage.cache_read_tokens == 400
    assert event.usage.output_tokens == 6
    assert event.tool_calls == ('lookup({"id":7})',)
    assert event.finish_reasons == ("tool_use",)
    assert guard.ledger.open_holds == 0


def test_stream_is_cut_when_output_passes_the_reservation(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.001), mode="strict")
    server.default = Reply(text="go", output_tokens=1000, honor_max_tokens=False)
    stream = client(server, guard).messages.create(
        model=MODEL, max_tokens=4000, messages=MSGS, stream=True
    )
    deltas = 0
    with pytest.raises(BudgetExceededError):
        for event in stream:
            deltas += event.type == "content_block_delta"
    [settled] = events.settled
    granted = server.last.body["max_tokens"]
    # Anthropic deltas are estimated from their text, so the cut allows a margin.
    assert settled.status == "cut" and granted < deltas <= 2 * granted + 16
    assert guard.ledger.open_holds == 0 and guard.status()[0].reserved == 0
    assert guard.status()[0].spent == settled.cost_nanos


def test_honest_stream_ending_at_max_tokens_is_not_cut(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.001), mode="strict")
    # Long words: the text estimate overcounts (~1.5x), the provider stops at max_tokens.
    server.default = Reply(
        text="Budget guards reserve worst-case costs before expensive provider requests",
        output_tokens=5000,
    )
    stream = client(server, guard).messages.create(
        model=MODEL, max_tokens=4000, messages=MSGS, stream=True
    )
    assert [e.type for e in stream][-1] == "message_stop"
    assert events.settled[0].status == "ok"
    assert events.settled[0].finish_reasons == ("max_tokens",)


def test_stream_error_event_settles_what_was_delivered(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(text="go", output_tokens=50, error_after=7, input_tokens=30)
    stream = client(server, guard).messages.create(
        model=MODEL, max_tokens=100, messages=MSGS, stream=True
    )
    with pytest.raises(anthropic.APIStatusError):
        for _ in stream:
            pass
    [event] = events.calls
    assert event.status == "error" and event.usage.output_tokens == 7
    assert event.usage.input_tokens == 30  # from message_start, not the estimate
    assert guard.status()[0].spent == event.cost_nanos and guard.ledger.open_holds == 0


def test_dropped_stream_settles_once(server: StandIn, make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    stream = client(server, guard).messages.create(
        model=MODEL, max_tokens=100, messages=MSGS, stream=True
    )
    next(iter(stream))
    del stream
    gc.collect()
    assert [e.status for e in events.calls] == ["cancelled"]
    assert guard.ledger.open_holds == 0


@pytest.mark.anyio
async def test_async_stream_and_cancellation(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    async with aclient(server, guard) as c:
        async with c.messages.stream(model=MODEL, max_tokens=100, messages=MSGS) as stream:
            assert await stream.get_final_text() == "Hello from the kavach stand-in provider."
        server.default = Reply(output_tokens=300, chunk_delay=0.01)
        started = asyncio.Event()

        async def consume() -> None:
            s = await c.messages.create(model=MODEL, max_tokens=400, messages=MSGS, stream=True)
            async for _ in s:
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [e.status for e in events.calls] == ["ok", "cancelled"]
    assert guard.ledger.open_holds == 0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["strict", "reserve"])
async def test_200_concurrent_calls_never_pass_the_budget(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    limit = 0.05
    guard = make_guard(budget=Budget.daily(limit), mode=mode)
    server.default = Reply(output_tokens=300, input_tokens=8)
    async with aclient(server, guard) as c:

        async def call() -> Any:
            return await c.messages.create(model=MODEL, max_tokens=300, messages=MSGS)

        results = await asyncio.gather(*(call() for _ in range(200)), return_exceptions=True)
    assert all(isinstance(r, Message | KavachError) for r in results)
    admitted = sum(isinstance(r, Message) for r in results)
    total = guard.status()[0].spent
    print(f"\nanthropic {mode}: admitted {admitted}/200, spent ${total / 1e9:.6f} of ${limit}")
    assert 0 < admitted < 200
    assert total <= Budget.daily(limit).limit and guard.ledger.open_holds == 0


def _sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def _web_search_stream(request: Any) -> Any:
    """A stream whose message_delta restates input usage, as server tools (web search) make
    it: cumulative counts, with one of them null (not restated)."""
    start_usage = {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_read_input_tokens": 3000,
        "cache_creation_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
    }
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL}
    message |= {"content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    delta_usage = {
        "input_tokens": 20_000,
        "output_tokens": 120,
        "cache_read_input_tokens": None,
        "cache_creation_input_tokens": 400,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 300},
        "server_tool_use": {"web_search_requests": 1},
    }
    events = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Found."},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": delta_usage,
        },
        {"type": "message_stop"},
    ]
    body = "".join(_sse(e) for e in events).encode()
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def test_stream_settles_the_cumulative_usage_of_message_delta(
    make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    http = httpx.Client(transport=httpx.MockTransport(_web_search_stream))
    c = guard.wrap(anthropic.Anthropic(api_key="k", max_retries=0, http_client=http))
    _open.append(c)
    with c.messages.stream(model=MODEL, max_tokens=500, messages=MSGS) as stream:
        final = stream.get_final_message()
    # The SDK's own accumulator: restated counts replace message_start's, a null one keeps it.
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (20_000, 3000)
    assert final.usage.cache_creation_input_tokens == 400
    [event] = events.settled
    assert event.status == "ok"
    assert event.usage == Usage(
        input_tokens=20_000 + 3000 + 400,
        output_tokens=120,
        cache_read_tokens=3000,
        cache_write_tokens=100,
        cache_write_1h_tokens=300,
        web_searches=1,  # server_tool_use.web_search_requests, $10 per thousand
    )
    assert event.usage.web_searches == 1
    tokens = 20_000 * 3000 + 3000 * 300 + 100 * 3750 + 300 * 6000 + 120 * 15000
    assert event.cost_nanos == tokens + 10_000_000
    assert guard.status()[0].spent == event.cost_nanos and guard.ledger.open_holds == 0


def _message(request: Any) -> Any:
    usage = {"input_tokens": 1000, "output_tokens": 100}
    return httpx.Response(
        200,
        json={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": "Hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        },
    )


async def _amessage(request: Any) -> Any:
    return _message(request)


@pytest.mark.anyio
async def test_async_vertex_and_bedrock_clients_are_charged(
    make_guard: Any, events: Events
) -> None:
    # Neither is an AsyncAnthropic: they were guarded as sync clients, whose wrapper read
    # the usage of a coroutine and settled every call at $0.
    guard = make_guard(budget=Budget.daily(1))
    vertex = guard.wrap(
        anthropic.AsyncAnthropicVertex(
            region="us-east5",
            project_id="p",
            access_token="t",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(_amessage)),
        )
    )
    message = await vertex.messages.create(
        model="claude-sonnet-4-5@20250929", max_tokens=200, messages=MSGS
    )
    assert isinstance(message, Message)
    bedrock = guard.wrap(
        anthropic.AsyncAnthropicBedrock(
            aws_region="us-east-1",
            api_key="bedrock-key",  # a bearer token: no SigV4, which needs botocore
            max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(_amessage)),
        )
    )
    await bedrock.messages.create(
        model="us.anthropic.claude-sonnet-4-5-20250929-v1:0", max_tokens=200, messages=MSGS
    )
    on_vertex, on_bedrock = events.settled
    assert on_vertex.cost_nanos == 1000 * 3000 + 100 * 15_000  # Anthropic's $3 / $15 per MTok
    assert on_bedrock.cost_nanos > on_vertex.cost_nanos  # Bedrock's regional prices: +10%
    assert guard.status()[0].spent == on_vertex.cost_nanos + on_bedrock.cost_nanos
    await vertex.close()
    await bedrock.close()


def test_bedrock_model_ids_are_priced_not_refused(make_guard: Any, events: Events) -> None:
    # Read as Anthropic's, a Bedrock model id had no price: every call was refused.
    guard = make_guard(budget=Budget.daily(1))
    c = guard.wrap(
        anthropic.AnthropicBedrock(
            aws_region="us-east-1",
            api_key="bedrock-key",  # a bearer token: no SigV4, which needs botocore
            max_retries=0,
            http_client=httpx.Client(transport=httpx.MockTransport(_message)),
        )
    )
    _open.append(c)
    for model in (
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    ):
        c.messages.create(model=model, max_tokens=200, messages=MSGS)
    assert [(e.status, e.provider) for e in events.settled] == [("ok", "aws.bedrock")] * 2
    assert events.settled[0].cost_nanos == 1000 * 3300 + 100 * 16_500
    assert guard.ledger.open_holds == 0


class Answer(pydantic.BaseModel):
    answer: str


def test_a_parse_the_sdk_rejects_after_the_reply_is_still_charged(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # messages.parse validates the reply inside the SDK's request: JSON that does not
    # validate raised there, and the billed call was given back as free.
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(text="not json", input_tokens=1000))
    with pytest.raises(pydantic.ValidationError):
        client(server, guard).messages.parse(
            model=MODEL, max_tokens=200, messages=MSGS, output_format=Answer
        )
    [event] = events.settled
    assert event.status == "error" and event.usage.input_tokens == 1000
    assert guard.status()[0].spent == event.cost_nanos > 0
    assert guard.ledger.open_holds == 0


def test_managed_agent_runs_stop_with_the_agent(make_guard: Any) -> None:
    # Events sent to a Managed Agents session, or a deployment run, set Claude to work (and
    # bill) at Anthropic: a stopped agent could still start them.
    guard = make_guard(budget=Budget.daily(1))
    seen: list[Any] = []

    def handle(request: Any) -> Any:
        seen.append(request)
        return httpx.Response(200, json={"data": []})

    http = httpx.Client(transport=httpx.MockTransport(handle))
    c = guard.wrap(anthropic.Anthropic(api_key="k", max_retries=0, http_client=http))
    _open.append(c)
    message = {"type": "user.message", "content": [{"type": "text", "text": "Go"}]}
    c.beta.sessions.events.send("sesn_1", events=[message])
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        c.beta.sessions.events.send("sesn_1", events=[message])
    with pytest.raises(AgentKilledError):
        c.beta.deployments.run("dep_1")
    with pytest.raises(AgentKilledError):
        c.post("/v1/sessions", body={"agent": "agent_1"}, cast_to=object)
    with pytest.raises(AgentKilledError):
        c.post("/v1/deployments/dep_1/unpause", body={}, cast_to=object)
    # A dream (a model rewriting a memory store from past sessions) is such a job too.
    with pytest.raises(AgentKilledError):
        c.beta.dreams.create(
            inputs=[{"type": "memory_store", "memory_store_id": "mem_1"}],
            model="claude-sonnet-4-6",
        )
    c.beta.sessions.events.list("sesn_1")  # reading a session's events costs nothing
    assert [r.method for r in seen] == ["POST", "GET"]
