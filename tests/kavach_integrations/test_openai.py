"""The real openai SDK, guarded, against the loopback stand-in provider."""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pydantic
import pytest
from openai.types import ImagesResponse
from openai.types.chat import ChatCompletion

from kavach import (
    AgentKavach,
    AgentKilledError,
    Budget,
    BudgetExceededError,
    KavachError,
    LoopDetectedError,
    Usage,
)
from kavach._devtools.standin import RecordedRequest, Reply, StandIn, ToolCall
from kavach_integrations._provider import unwrap

from .conftest import Events, openai_lacks_responses

MSGS = [{"role": "user", "content": "Say hello"}]


_open: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client(server: StandIn, guard: AgentKavach, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    c = guard.wrap(openai.OpenAI(base_url=server.openai_url, api_key="sk-test", **kwargs))
    _open.append(c)
    return c


def aclient(server: StandIn, guard: AgentKavach, **kwargs: Any) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return guard.wrap(openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-test", **kwargs))


def spent(guard: AgentKavach) -> int:
    return guard.status()[0].spent


def test_chat_call_settles_at_the_reported_usage(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(
        Reply(output_tokens=40, input_tokens=1000, cached_tokens=800, reasoning_tokens=10)
    )
    response = client(server, guard).chat.completions.create(model="gpt-4o", messages=MSGS)

    assert isinstance(response, ChatCompletion)
    [event] = events.settled
    assert event.usage == Usage(
        input_tokens=1000, output_tokens=40, cache_read_tokens=800, reasoning_tokens=10
    )
    # gpt-4o: $2.50 input, $1.25 cached input, $10 output per million tokens.
    assert event.cost_nanos == 200 * 2500 + 800 * 1250 + 40 * 10_000
    assert spent(guard) == event.cost_nanos
    assert guard.ledger.open_holds == 0


def decide(c: openai.OpenAI, **request: Any) -> Any:
    """``decisions.create`` on openai 3.x; on 2.x, which has no Decisions API, the same
    request through ``client.post`` (the guard routes by path, as it would any new SDK)."""
    if hasattr(c, "decisions"):
        return c.decisions.create(**request)
    return c.post("/decisions", body=request, cast_to=object)


def test_decisions_are_charged_held_and_stop_with_the_agent(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The Decisions API answers questions about an input and bills tokens like a response;
    # it went through unguarded: not counted, not refused when over budget or stopped.
    question = {"type": "predicate", "name": "spam", "instructions": "Is this spam? " * 50}
    request = {"model": "gpt-6-luna", "input": "Buy now!!!", "questions": [question]}
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    server.script(Reply(input_tokens=300, output_tokens=12))
    decide(c, **request)
    [event] = events.settled
    assert (event.usage.input_tokens, event.usage.output_tokens) == (300, 12)
    price = guard.pricing.resolve("openai", "gpt-6-luna")
    assert spent(guard) == event.cost_nanos == price.cost(Usage(300, 12)) > 0
    # The questions are input: a request is held for them (and the default max output).
    assert event.reserved_nanos > price.cost(Usage(150, 0))
    poor = make_guard(agent_name="poor", budget=Budget.daily(event.reserved_nanos / 2e9))
    with pytest.raises(BudgetExceededError):
        decide(client(server, poor), **request)
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        decide(c, **request)
    assert len(server.requests) == 1


def test_strict_mode_sets_max_completion_tokens_and_reserve_mode_leaves_the_request(
    server: StandIn, make_guard: Any
) -> None:
    strict = make_guard(budget=Budget.daily(0.001), mode="strict")
    client(server, strict).chat.completions.create(model="gpt-4o", messages=MSGS)
    granted = server.last.body["max_completion_tokens"]
    assert 16 <= granted < 100  # what $0.001 pays for at $10/M output after the input

    client(server, strict).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=8)
    assert server.last.body["max_tokens"] == 8  # a smaller limit the caller set is kept
    assert "max_completion_tokens" not in server.last.body

    loose = make_guard(agent_name="loose", budget=Budget.daily(1))
    client(server, loose).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert "max_completion_tokens" not in server.last.body
    assert "max_tokens" not in server.last.body


def test_strict_mode_and_streams_read_the_request_with_its_extra_body(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The SDK merges extra_body over the request when it sends it. Read apart, strict mode's
    # limit was overridden ($0.02 spent of a $0.001 budget) and a stream_options there
    # dropped the usage chunk, so the stream settled "cancelled" at an estimate.
    strict = make_guard(budget=Budget.daily(0.001), mode="strict")
    server.script(Reply(output_tokens=2000))
    client(server, strict).chat.completions.create(
        model="gpt-4o", messages=MSGS, extra_body={"max_completion_tokens": 2000}
    )
    assert 16 <= server.last.body["max_completion_tokens"] < 100
    assert spent(strict) <= 1_000_000

    guard = make_guard(agent_name="streams", budget=Budget.daily(1))
    server.script(Reply(output_tokens=5, input_tokens=50))
    stream = client(server, guard).chat.completions.create(
        model="gpt-4o",
        messages=MSGS,
        stream=True,
        extra_body={"stream_options": {"include_obfuscation": False}},
    )
    assert all(chunk.choices for chunk in stream)
    assert server.last.body["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    assert (events.settled[-1].status, events.settled[-1].usage) == (
        "ok",
        Usage(input_tokens=50, output_tokens=5),
    )


def test_a_spoken_reply_is_held_at_the_audio_rate(server: StandIn, make_guard: Any) -> None:
    # gpt-audio: $10/MTok for text out, $64/MTok for audio out. Strict mode gives a request
    # what the budget pays for at the rate its reply is billed at.
    guard = make_guard(budget=Budget.daily(0.01), mode="strict")
    c = client(server, guard)
    model = "gpt-audio"
    c.chat.completions.create(model=model, messages=MSGS)
    text_granted = server.last.body["max_completion_tokens"]
    c.chat.completions.create(
        model=model,
        messages=MSGS,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    )
    audio_granted = server.last.body["max_completion_tokens"]
    assert audio_granted * 64_000 <= 10_000_000  # fits the $0.01 at 64,000 nano-dollars a token
    assert audio_granted * 5 < text_granted  # the text reply is not held at the audio rate


def test_refusal_is_raised_before_any_request_and_never_retried(
    server: StandIn, make_guard: Any
) -> None:
    guard = make_guard(budget=Budget.daily(0.00001))
    c = client(server, guard, max_retries=3)
    with pytest.raises(BudgetExceededError) as caught:
        c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=1000)
    assert not isinstance(caught.value, openai.APIError)
    assert server.requests == []


def test_provider_error_releases_and_reaches_the_caller_unchanged(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(status=500), Reply(status=500), Reply(status=400))
    c = client(server, guard, max_retries=1)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert len(server.requests) == 2  # the SDK's own retry ran, under one reservation
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert [e.status for e in events.calls] == ["error", "error"]
    assert spent(guard) == 0 and guard.ledger.open_holds == 0


def test_timeout_releases_and_the_sdk_error_reaches_the_caller(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(hang=True))
    with pytest.raises(openai.APITimeoutError):
        client(server, guard, timeout=0.3).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert [e.status for e in events.calls] == ["error"]
    assert spent(guard) == 0 and guard.ledger.open_holds == 0


def test_disabled_guard_is_a_passthrough(server: StandIn, make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(0.0000001), mode="strict", enabled=False)
    c = client(server, guard)
    c.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert "max_completion_tokens" not in server.last.body
    server.script(Reply(output_tokens=5))
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
    assert "stream_options" not in server.last.body  # the request goes out as written
    assert chunks and all(chunk.choices for chunk in chunks)
    assert events.calls == [] and guard.ledger.open_holds == 0


@pytest.mark.anyio
async def test_disabled_guard_is_a_passthrough_for_async_clients(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.0000001), mode="strict", enabled=False)
    async with aclient(server, guard) as c:
        await c.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert "max_completion_tokens" not in server.last.body
        stream = await c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        assert [chunk async for chunk in stream]
        assert "stream_options" not in server.last.body
    assert events.calls == [] and guard.ledger.open_holds == 0


def test_wrapped_client_keeps_its_type_passes_attributes_and_wraps_once(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    assert isinstance(c, openai.OpenAI)
    assert guard.wrap(c) is c
    assert c.base_url == server.openai_url + "/"
    assert [m.id for m in c.models.list()][0] == "gpt-4o"
    c.with_options(timeout=5).chat.completions.create(model="gpt-4o", messages=MSGS)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS)
    assert raw.parse().usage is not None
    assert len(events.settled) == 2  # model listing is free; both chats were guarded
    unwrap(c)
    c.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert len(events.settled) == 2


class AppClient(openai.OpenAI):
    """An application's own client class, as some subclass the SDK's."""


def test_a_subclass_of_the_sdk_client_is_guarded(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # It was refused with "wrap() takes an OpenAI ... client": its class lives elsewhere.
    guard = make_guard(budget=Budget.daily(1))
    c = guard.wrap(AppClient(base_url=server.openai_url, api_key="sk-test", max_retries=0))
    _open.append(c)
    c.with_options(timeout=5).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert [e.status for e in events.settled] == ["ok"]
    assert spent(guard) == events.settled[0].cost_nanos > 0


def test_stream_asks_for_usage_and_hides_the_usage_chunk(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    server.script(Reply(output_tokens=5, input_tokens=50))
    stream = c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)
    assert server.last.body["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)
    assert events.settled[-1].usage == Usage(input_tokens=50, output_tokens=5)
    assert events.settled[-1].status == "ok"

    server.script(Reply(output_tokens=5, input_tokens=50))
    asked = c.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    assert list(asked)[-1].usage is not None
    assert guard.ledger.open_holds == 0


def test_stream_helper_and_responses_and_embeddings_are_guarded(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    with c.chat.completions.stream(model="gpt-4o", messages=MSGS) as stream:
        text = stream.get_final_completion().choices[0].message.content
    assert text == "Hello from the kavach stand-in provider."
    server.script(Reply(output_tokens=7, input_tokens=30, cached_tokens=10, reasoning_tokens=2))
    c.responses.create(model="gpt-4o", input="hi")
    with c.responses.stream(model="gpt-4o", input="hi") as rs:
        rs.until_done()
    c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    ops = [(e.operation, e.status) for e in events.settled]
    assert ops == [("chat", "ok"), ("chat", "ok"), ("chat", "ok"), ("embeddings", "ok")]
    assert events.settled[1].usage == Usage(
        input_tokens=30, output_tokens=7, cache_read_tokens=10, reasoning_tokens=2
    )
    assert guard.ledger.open_holds == 0


def test_embeddings_of_token_ids_are_held_at_their_count(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # 32,000 token ids cost $0.00416 at $0.13/M: more than the budget, so refused unsent
    # (they were held at nothing and let through).
    guard = make_guard(budget=Budget.daily(0.001))
    c = client(server, guard)
    sent = len(server.requests)
    with pytest.raises(BudgetExceededError):
        c.embeddings.create(model="text-embedding-3-large", input=[[100] * 8000] * 4)
    c.embeddings.create(model="text-embedding-3-large", input=[100] * 500)  # one input
    assert len(server.requests) == sent + 1
    [refused, ok] = events.calls
    assert refused.status == "refused" and ok.status == "ok"
    assert ok.reserved_nanos >= 500 * 130  # $0.13 per million tokens


def test_a_cut_stream_says_whether_its_request_carried_a_limit(
    server: StandIn, make_guard: Any
) -> None:
    # Strict mode had set max_completion_tokens: the error told the caller to set it.
    guard = _cut_setup(server, make_guard)
    with pytest.raises(BudgetExceededError) as caught:
        for _ in client(server, guard).chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True
        ):
            pass
    assert "max_completion_tokens" in server.last.body
    assert "more than the max output tokens the request carried" in str(caught.value)
    assert "Set max output tokens" not in str(caught.value)

    # Reserve mode, no limit on the request: the provider was never told where to stop.
    loose = make_guard(agent_name="loose", budget=Budget.daily(1), default_max_output_tokens=50)
    with pytest.raises(BudgetExceededError, match="Set max output tokens on the request"):
        for _ in client(server, loose).chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True
        ):
            pass


def _cut_setup(server: StandIn, make_guard: Any) -> AgentKavach:
    # Strict mode sizes the call to what is left; this provider ignores max tokens and would
    # stream 10x that.
    guard = make_guard(budget=Budget.daily(0.0005), mode="strict")
    server.default = Reply(text="go", output_tokens=500, honor_max_tokens=False, input_tokens=10)
    return guard


def test_stream_that_would_cost_ten_times_what_is_left_is_cut(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = _cut_setup(server, make_guard)
    stream = client(server, guard).chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True
    )
    seen = []
    with pytest.raises(BudgetExceededError, match="stream was cut"):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen.append(chunk)
    [event] = events.settled
    granted = server.last.body["max_completion_tokens"]
    assert 500 >= 10 * granted
    assert event.status == "cut" and event.max_output_tokens == granted
    assert len(seen) == granted  # the consumer got exactly the chunks paid for
    assert event.usage.output_tokens == granted + 1  # the one that passed was billed too
    assert spent(guard) == event.cost_nanos and guard.status()[0].reserved == 0
    assert guard.ledger.open_holds == 0
    assert stream.response.is_closed


@pytest.mark.anyio
async def test_async_stream_is_cut_too(server: StandIn, make_guard: Any, events: Events) -> None:
    guard = _cut_setup(server, make_guard)
    async with aclient(server, guard) as c:
        stream = await c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        seen = 0
        with pytest.raises(BudgetExceededError):
            async for chunk in stream:
                seen += bool(chunk.choices and chunk.choices[0].delta.content)
    [event] = events.settled
    assert event.status == "cut" and seen == event.max_output_tokens
    assert guard.ledger.open_holds == 0 and guard.status()[0].reserved == 0


def _one_settlement(events: Events, guard: AgentKavach, status: str) -> None:
    assert [e.status for e in events.calls] == [status]
    assert guard.ledger.open_holds == 0


def test_stream_failing_midway_settles_what_was_delivered(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(output_tokens=50, error_after=10, input_tokens=20)
    stream = client(server, guard).chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True
    )
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in stream:
            pass
    [event] = events.calls
    assert event.status == "error" and event.usage.output_tokens == 10
    assert spent(guard) == event.cost_nanos > 0 and guard.ledger.open_holds == 0


def test_early_break_settles_once(server: StandIn, make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(output_tokens=50)
    stream = client(server, guard).chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True
    )
    for _ in stream:
        break
    del stream
    gc.collect()
    _one_settlement(events, guard, "cancelled")
    assert events.calls[0].usage.output_tokens <= 1


def test_close_settles_once(server: StandIn, make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(output_tokens=50)
    stream = client(server, guard).chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True
    )
    next(stream), next(stream), next(stream)
    stream.close()
    _one_settlement(events, guard, "cancelled")
    stream.close()
    del stream
    gc.collect()
    _one_settlement(events, guard, "cancelled")
    assert events.calls[0].usage.output_tokens == 2


def test_garbage_collected_unread_stream_settles_once(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    stream = client(server, guard).chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True
    )
    assert guard.ledger.open_holds == 1
    del stream
    gc.collect()
    _one_settlement(events, guard, "cancelled")


@pytest.mark.anyio
async def test_async_stream_dropped_after_break_settles_once(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(output_tokens=50)
    async with aclient(server, guard) as c:
        stream = await c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        async for _ in stream:
            break
        del stream
        # The event loop closes the abandoned async generators; the garbage collector frees
        # the SDK's stream (it is in a reference cycle with its own generator).
        for _ in range(3):
            await asyncio.sleep(0.01)
            gc.collect()
        _one_settlement(events, guard, "cancelled")
        # The connection went back: none left in the pool (openai 3.x kept a closed one and
        # its request there, after an "already running" error from a generator finalizer).
        assert c._client._transport._pool.connections == []
        unread = await c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        await unread.close()
        assert [e.status for e in events.calls] == ["cancelled", "cancelled"]
        assert guard.ledger.open_holds == 0


def test_exception_in_consumer_settles_once(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(output_tokens=50)
    c = client(server, guard)
    with pytest.raises(RuntimeError):
        with c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True) as stream:
            for _ in stream:
                raise RuntimeError("consumer failed")
    _one_settlement(events, guard, "cancelled")


@pytest.mark.anyio
async def test_task_cancellation_settles_once(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(output_tokens=200, chunk_delay=0.01)
    got_one = asyncio.Event()
    async with aclient(server, guard) as c:

        async def consume() -> None:
            stream = await c.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
            async for _ in stream:
                got_one.set()

        task = asyncio.create_task(consume())
        await got_one.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    _one_settlement(events, guard, "cancelled")


@pytest.mark.anyio
async def test_cancelled_non_streaming_call_releases(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.default = Reply(delay=5)
    async with aclient(server, guard) as c:
        with anyio.move_on_after(0.2):
            await c.chat.completions.create(model="gpt-4o", messages=MSGS)
    _one_settlement(events, guard, "cancelled")


def test_tool_calls_feed_the_loop_detector(server: StandIn, make_guard: Any) -> None:
    guard = make_guard(budget=Budget.daily(1), detect_loops=True, loop_threshold=3)
    server.default = Reply(tool_calls=[ToolCall("search", {"q": "same"})])
    c = client(server, guard)
    with pytest.raises(LoopDetectedError):
        for i in range(10):  # different requests, the same tool call every time
            c.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"step {i}"}]
            )
    assert len(server.requests) < 10


def test_prompts_are_kept_only_when_asked(server: StandIn, make_guard: Any, events: Events) -> None:
    client(server, make_guard(budget=Budget.daily(1))).chat.completions.create(
        model="gpt-4o", messages=MSGS
    )
    client(server, make_guard(budget=Budget.daily(1), save_prompts=True)).chat.completions.create(
        model="gpt-4o", messages=MSGS
    )
    assert events.settled[0].prompt is None
    assert events.settled[1].prompt is not None and "Say hello" in events.settled[1].prompt


async def _hammer(call: Any, n: int = 200) -> tuple[int, int]:
    results = await asyncio.gather(*(call() for _ in range(n)), return_exceptions=True)
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, KavachError)
    ]
    assert unexpected == []
    admitted = sum(not isinstance(r, BaseException) for r in results)
    return admitted, n - admitted


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["strict", "reserve"])
async def test_200_concurrent_calls_never_pass_the_budget(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    limit = 0.02
    # Strict mode sizes each call to what is left, up to default_max_output_tokens.
    guard = make_guard(budget=Budget.daily(limit), mode=mode, default_max_output_tokens=300)
    # Input as OpenAI counts "Say hello"; the guard's estimate must not be below it.
    server.default = Reply(output_tokens=300, input_tokens=9)
    extra = {} if mode == "strict" else {"max_tokens": 300}
    async with aclient(server, guard) as c:

        async def call() -> Any:
            return await c.chat.completions.create(model="gpt-4o", messages=MSGS, **extra)

        admitted, refused = await _hammer(call)
    total = spent(guard)
    print(f"\nopenai {mode}: admitted {admitted}/200, spent ${total / 1e9:.6f} of ${limit}")
    assert admitted > 0 and refused > 0
    assert total <= Budget.daily(limit).limit
    assert guard.ledger.open_holds == 0


def _every_choice_at_its_limit(request: RecordedRequest) -> Reply:
    # The stand-in sends one choice; its usage bills n choices that all ran to max tokens.
    body = request.body
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 4096
    return Reply(output_tokens=body.get("n", 1) * limit, input_tokens=9, honor_max_tokens=False)


def test_strict_mode_sends_max_tokens_per_choice_and_n_choices_stay_in_budget(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    budget = Budget.daily(0.01)
    guard = make_guard(budget=budget, mode="strict")
    server.responder = _every_choice_at_its_limit
    client(server, guard).chat.completions.create(model="gpt-4o", messages=MSGS, n=5)
    per_choice = server.last.body["max_completion_tokens"]
    # $0.01 pays for ~1,000 output tokens at $10/M: about 200 for each of the 5 choices.
    assert 180 <= per_choice <= 200
    assert events.settled[-1].usage.output_tokens == 5 * per_choice
    assert 0 < spent(guard) <= budget.limit
    assert guard.ledger.open_holds == 0


def test_reserve_mode_holds_max_tokens_for_every_choice(server: StandIn, make_guard: Any) -> None:
    budget = Budget.daily(0.01)
    guard = make_guard(budget=budget, mode="reserve")
    server.responder = _every_choice_at_its_limit
    c = client(server, guard)
    with pytest.raises(BudgetExceededError):  # 5 x 900 tokens: $0.045 at $10/M
        c.chat.completions.create(model="gpt-4o", messages=MSGS, n=5, max_tokens=900)
    assert server.requests == []
    c.chat.completions.create(model="gpt-4o", messages=MSGS, n=5, max_tokens=150)
    assert server.last.body["max_tokens"] == 150  # reserve mode leaves the request alone
    assert 0 < spent(guard) <= budget.limit


def _every_completion_at_its_limit(request: RecordedRequest) -> Reply:
    # Legacy completions: best_of (at least n) completions of every prompt, all billed.
    body = request.body
    prompt = body["prompt"]
    one = not isinstance(prompt, list) or isinstance(prompt[0], int)  # a text, or token ids
    prompts = [prompt] if one else prompt
    per_prompt = max(body.get("n", 1), body.get("best_of", 1))
    output = len(prompts) * per_prompt * body.get("max_tokens", 16)
    # The tests' prompts are three tokens in all: ["a", "b", "c"], or the ids [1, 2, 3].
    return Reply(output_tokens=output, input_tokens=3, honor_max_tokens=False)


def test_legacy_completions_settle_at_usage_streamed_or_not(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    server.script(Reply(output_tokens=7, input_tokens=30))
    completion = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert completion.choices[0].text
    chunks = list(
        c.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True, max_tokens=5
        )
    )
    # The guard asked for the usage chunk; the caller, who did not, never sees it.
    assert server.last.body["stream_options"] == {"include_usage": True}
    assert chunks and all(chunk.usage is None for chunk in chunks)
    first, second = events.settled
    assert first.operation == "text_completion" and first.usage.output_tokens == 7
    # gpt-3.5-turbo-instruct: $1.50 input and $2 output per million tokens.
    assert first.cost_nanos == 30 * 1500 + 7 * 2000
    assert second.status == "ok" and second.usage.output_tokens == 5
    assert spent(guard) == first.cost_nanos + second.cost_nanos
    assert guard.ledger.open_holds == 0


def test_strict_mode_splits_legacy_completions_max_tokens_over_every_prompt_and_choice(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    budget = Budget.daily(0.002)
    guard = make_guard(budget=budget, mode="strict")
    server.responder = _every_completion_at_its_limit
    c = client(server, guard)
    c.completions.create(model="gpt-3.5-turbo-instruct", prompt=["a", "b", "c"], n=2)
    per_choice = server.last.body["max_tokens"]
    # $0.002 pays for ~1,000 output tokens at $2/M: about 166 for each of 3 x 2 completions.
    assert 150 <= per_choice <= 166
    assert events.settled[-1].usage.output_tokens == 6 * per_choice
    assert 0 < spent(guard) <= budget.limit
    assert guard.ledger.open_holds == 0


def test_reserve_mode_holds_legacy_best_of_completions_in_full(
    server: StandIn, make_guard: Any
) -> None:
    budget = Budget.daily(0.002)
    guard = make_guard(budget=budget, mode="reserve")
    server.responder = _every_completion_at_its_limit
    c = client(server, guard)
    with pytest.raises(BudgetExceededError):  # 4 x 400 tokens: $0.0032 at $2/M
        c.completions.create(model="gpt-3.5-turbo-instruct", prompt="a", best_of=4, max_tokens=400)
    with pytest.raises(BudgetExceededError):  # two token-id prompts x 2 x 400 tokens
        c.completions.create(
            model="gpt-3.5-turbo-instruct", prompt=[[1, 2], [3, 4]], n=2, max_tokens=400
        )
    assert server.requests == []
    c.completions.create(model="gpt-3.5-turbo-instruct", prompt=[1, 2, 3], n=2, max_tokens=400)
    assert 0 < spent(guard) <= budget.limit
    assert guard.ledger.open_holds == 0


def test_a_streamed_n_choices_reply_within_its_limits_is_not_cut(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # Chunks of the n choices interleave; the meter counts them together, so the cut must
    # allow what all choices together may produce.
    budget = Budget.daily(0.01)
    guard = make_guard(budget=budget, mode="strict")
    server.responder = _every_choice_at_its_limit
    stream = client(server, guard).chat.completions.create(
        model="gpt-4o", messages=MSGS, n=3, stream=True
    )
    for _ in stream:
        pass
    per_choice = server.last.body["max_completion_tokens"]
    [event] = events.settled
    assert event.status == "ok" and event.usage.output_tokens == 3 * per_choice
    assert spent(guard) <= budget.limit


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["strict", "reserve"])
async def test_200_concurrent_responses_with_string_input_never_pass_the_budget(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    # input="hi" is billed as a user message: 8 tokens with the chat overhead, not 1.
    budget = Budget.daily(0.02)
    guard = make_guard(budget=budget, mode=mode, default_max_output_tokens=300)
    server.default = Reply(output_tokens=300, input_tokens=8)
    extra = {} if mode == "strict" else {"max_output_tokens": 300}
    async with aclient(server, guard) as c:
        calls = iter(range(200))

        async def call() -> Any:
            if next(calls) % 2:
                stream = await c.responses.create(model="gpt-4o", input="hi", stream=True, **extra)
                async for _ in stream:
                    pass
                return None
            return await c.responses.create(model="gpt-4o", input="hi", **extra)

        admitted, refused = await _hammer(call)
    assert admitted > 0 and refused > 0
    assert spent(guard) <= budget.limit
    assert guard.ledger.open_holds == 0


# -- the Images API -----------------------------------------------------------------------

# gpt-image-1: $5/M text input, $40/M image output; gpt-image-1-mini: $2/M and $8/M;
# gpt-image-1.5: $5/M text input, $10/M text output, $32/M image output (genai-prices).
PROMPT = "a lighthouse at dusk"


def test_gpt_image_generation_settles_at_its_reported_usage(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=50, output_tokens=1056))
    response = client(server, guard).images.generate(model="gpt-image-1", prompt=PROMPT)

    assert isinstance(response, ImagesResponse) and response.data
    [event] = events.settled
    assert event.status == "ok" and event.operation == "image_generation"
    assert event.usage == Usage(input_tokens=50, output_tokens=1056, output_image_tokens=1056)
    assert event.cost_nanos == 50 * 5_000 + 1056 * 40_000
    assert spent(guard) == event.cost_nanos
    assert guard.ledger.open_holds == 0


def test_an_image_models_text_output_is_priced_apart_when_reported(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=50, output_tokens=1100, image_output_tokens=1000))
    client(server, guard).images.generate(model="gpt-image-1.5", prompt=PROMPT)

    [event] = events.settled
    assert event.usage.output_image_tokens == 1000
    assert event.cost_nanos == 50 * 5_000 + 100 * 10_000 + 1000 * 32_000


@pytest.mark.parametrize("mode", ["reserve", "strict"])
def test_an_image_the_budget_cannot_pay_for_is_refused_before_any_request(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    # No quality or size: the worst case is a high-quality 1024x1536 image, 6,240 tokens at
    # $40/M ($0.25). Strict mode has no max tokens to lower here, so it refuses too.
    guard = make_guard(budget=Budget.daily(0.10), mode=mode)
    c = client(server, guard)
    with pytest.raises(BudgetExceededError):
        c.images.generate(model="gpt-image-1", prompt=PROMPT)
    with pytest.raises(BudgetExceededError):
        c.images.generate(model="gpt-image-1", prompt=PROMPT, quality="high", size="1024x1024")
    assert server.requests == []

    c.images.generate(model="gpt-image-1", prompt=PROMPT, quality="low")  # 408 tokens: $0.016
    assert server.last.body == {"model": "gpt-image-1", "prompt": PROMPT, "quality": "low"}
    assert guard.ledger.open_holds == 0


def test_every_image_asked_for_is_held(server: StandIn, make_guard: Any) -> None:
    guard = make_guard(budget=Budget.daily(1))
    held: list[int] = []

    def hold_seen(request: RecordedRequest) -> Reply:
        held.append(guard.status()[0].reserved)
        return Reply()

    server.responder = hold_seen
    c = client(server, guard)
    for n in (1, 3):
        c.images.generate(model="gpt-image-1", prompt=PROMPT, quality="low", size="1024x1024", n=n)
    # The same prompt: the holds differ by two more low-quality square images at $40/M.
    assert held[1] - held[0] == 2 * 272 * 40_000


def test_dall_e_still_goes_through_uncounted_with_a_warning(
    server: StandIn, make_guard: Any, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(budget=Budget.daily(0.0001))  # too little for any GPT image
    c = client(server, guard)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        c.images.generate(model="dall-e-3", prompt=PROMPT)
        c.images.generate(prompt=PROMPT)  # no model: DALL·E 2

    assert [r.path for r in server.requests] == ["/v1/images/generations"] * 2
    [warning] = [r.getMessage() for r in caplog.records if "cannot meter" in r.getMessage()]
    assert "image_generation" in warning and "not counted" in warning
    assert events.calls == [] and spent(guard) == 0


def test_an_image_response_without_usage_is_settled_at_what_it_shows(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The response names no quality or size: each image it returns is settled at the worst.
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(model="dall-e-2"))  # the stand-in then reports no usage
    response = client(server, guard).images.generate(model="gpt-image-1", prompt=PROMPT, n=2)

    assert response.usage is None
    [event] = events.settled
    assert event.usage.output_image_tokens == 2 * 6240
    assert event.usage.input_tokens > 0  # the prompt, as estimated when reserving
    assert event.cost_nanos == event.usage.input_tokens * 5_000 + 2 * 6240 * 40_000


@pytest.mark.anyio
async def test_async_gpt_image_generation_is_reserved_and_settled(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.01))
    c = aclient(server, guard)
    with pytest.raises(BudgetExceededError):  # 6,240 tokens at $8/M: $0.05
        await c.images.generate(model="gpt-image-1-mini", prompt=PROMPT)
    assert server.requests == []

    server.script(Reply(input_tokens=20, output_tokens=272))
    await c.images.generate(model="gpt-image-1-mini", prompt=PROMPT, quality="low")
    await c.close()
    [event] = events.settled
    assert event.cost_nanos == 20 * 2_000 + 272 * 8_000
    assert guard.ledger.open_holds == 0


def test_streamed_image_generation_settles_at_the_completed_usage(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=30, output_tokens=1256))
    stream = client(server, guard).images.generate(
        model="gpt-image-1", prompt=PROMPT, stream=True, partial_images=2
    )
    kinds = [event.type for event in stream]

    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    [event] = events.settled
    assert event.status == "ok"
    assert event.cost_nanos == 30 * 5_000 + 1256 * 40_000


def test_a_streamed_image_left_unfinished_is_settled_at_its_worst_case(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # Broken off after the first partial image: the image may still be made and billed.
    guard = make_guard(budget=Budget.daily(1))
    stream = client(server, guard).images.generate(
        model="gpt-image-1", prompt=PROMPT, stream=True, partial_images=2, quality="low"
    )
    for _ in stream:
        break
    stream.close()

    [event] = events.settled
    assert event.status == "cancelled"
    assert event.usage.output_image_tokens == 408 + 2 * 100
    assert guard.ledger.open_holds == 0


# openai 2.x is built on httpx, 3.x on httpx2: mock transports come from the SDK's own.
_http: Any = importlib.import_module(
    "httpx2" if int(openai.__version__.split(".", 1)[0]) >= 3 else "httpx"
)


class MockOpenAI:
    """Answers every request with ``payload`` and records the JSON bodies it got."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.bodies: list[dict[str, Any]] = []

    def handle(self, request: Any) -> Any:
        content = request.read()
        is_json = request.headers.get("content-type", "").startswith("application/json")
        self.bodies.append(json.loads(content) if is_json else {})
        return _http.Response(200, json=self.payload)

    async def ahandle(self, request: Any) -> Any:
        return self.handle(request)

    def client(self, guard: AgentKavach) -> openai.OpenAI:
        http = _http.Client(transport=_http.MockTransport(self.handle))
        c = guard.wrap(
            openai.OpenAI(api_key="k", base_url="http://mock/v1", http_client=http, max_retries=0)
        )
        _open.append(c)
        return c

    def aclient(self, guard: AgentKavach) -> openai.AsyncOpenAI:
        http = _http.AsyncClient(transport=_http.MockTransport(self.ahandle))
        return guard.wrap(
            openai.AsyncOpenAI(
                api_key="k", base_url="http://mock/v1", http_client=http, max_retries=0
            )
        )


QUEUED = {  # what responses.create(background=True) answers: the work starts after it
    "id": "resp_bg",
    "object": "response",
    "created_at": 0,
    "status": "queued",
    "background": True,
    "model": "gpt-4o",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": None,
}


def test_background_responses_are_settled_at_their_worst_case_and_stay_in_budget(
    make_guard: Any, events: Events
) -> None:
    # Answered "queued", with no usage: the response runs (and bills) after the call returns.
    # Settled at zero, any number of them passed a $0.01 budget.
    guard = make_guard(budget=Budget.daily(0.01))
    mock = MockOpenAI(QUEUED)
    c = mock.client(guard)
    with pytest.raises(BudgetExceededError):
        for _ in range(20):
            c.responses.create(
                model="gpt-4o", input="Write an essay", background=True, max_output_tokens=200
            )
    first = events.settled[0]
    assert first.usage.output_tokens == 200
    assert first.cost_nanos >= 200 * 10_000  # gpt-4o output: $10 per million tokens
    assert 1 <= len(mock.bodies) == len(events.settled) < 20
    assert spent(guard) <= 10_000_000
    assert guard.ledger.open_holds == 0


@pytest.mark.anyio
async def test_async_background_response_is_settled_at_its_worst_case(
    make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1), mode="strict")
    mock = MockOpenAI(QUEUED)
    c = mock.aclient(guard)
    response = await c.responses.create(model="gpt-4o", input="Write an essay", background=True)
    assert response.status == "queued"
    [event] = events.settled
    # Strict mode sent a limit: the response can bill no more than that, and is held to it.
    assert event.usage.output_tokens == mock.bodies[0]["max_output_tokens"] > 0
    assert spent(guard) == event.cost_nanos
    await c.close()


def test_a_background_stream_closed_early_is_settled_at_its_worst_case(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    for background in (False, True):
        server.script(Reply(output_tokens=50))
        stream = c.responses.create(
            model="gpt-4o", input="hi", stream=True, background=background, max_output_tokens=80
        )
        for event in stream:
            if event.type == "response.output_text.delta":
                break
        stream.close()
    foreground, background_ = events.settled
    assert foreground.usage.output_tokens == 1  # closing the stream stopped it
    assert background_.usage.output_tokens == 80  # it runs on at the provider
    assert guard.ledger.open_holds == 0


COMPACTED = {
    "id": "cmp_1",
    "object": "response.compaction",
    "created_at": 0,
    "output": [],
    "usage": {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1300,
    },
}


def _needs_responses(method: str) -> None:
    if (reason := openai_lacks_responses(method)) is not None:
        pytest.skip(reason)


def test_responses_compact_is_reserved_settled_and_stops_with_the_agent(
    make_guard: Any, events: Events
) -> None:
    _needs_responses("compact")
    guard = make_guard(budget=Budget.daily(1))
    mock = MockOpenAI(COMPACTED)
    c = mock.client(guard)
    c.responses.compact(model="gpt-4o", input=[{"role": "user", "content": "a long chat"}])
    [event] = events.settled
    assert event.usage == Usage(input_tokens=1000, output_tokens=300)
    assert event.cost_nanos == 1000 * 2500 + 300 * 10_000
    assert spent(guard) == event.cost_nanos

    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        c.responses.compact(model="gpt-4o", input="a long chat")
    assert len(mock.bodies) == 1


class Answer(pydantic.BaseModel):
    answer: str


def test_a_parse_the_sdk_rejects_after_the_reply_is_still_charged(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The SDK parses the reply into the caller's type inside its request: a reply cut at max
    # tokens (LengthFinishReasonError) or JSON that does not validate raised there, and the
    # billed call was given back as free. A retry loop on those spent without a limit.
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    server.script(Reply(output_tokens=50, input_tokens=1000))
    with pytest.raises(openai.LengthFinishReasonError):
        c.chat.completions.parse(
            model="gpt-4o", messages=MSGS, response_format=Answer, max_completion_tokens=10
        )
    server.script(Reply(text="not json", input_tokens=1000))
    with pytest.raises(pydantic.ValidationError):
        c.responses.parse(model="gpt-4o", input="hi", text_format=Answer)
    server.script(Reply(text="not json", input_tokens=1000))
    raw = c.chat.completions.with_raw_response.parse(
        model="gpt-4o", messages=MSGS, response_format=Answer
    )
    with pytest.raises(pydantic.ValidationError):
        raw.parse()  # the caller's own parse still fails as the SDK makes it
    length, invalid, raw_invalid = events.settled
    assert (length.status, length.usage) == ("error", Usage(input_tokens=1000, output_tokens=10))
    assert length.cost_nanos == 1000 * 2500 + 10 * 10_000
    assert invalid.status == "error" and invalid.usage.input_tokens == 1000
    assert raw_invalid.status == "ok" and raw_invalid.usage.input_tokens == 1000  # not worst
    assert spent(guard) == sum(e.cost_nanos for e in events.settled)
    assert guard.ledger.open_holds == 0

    server.script(Reply(text='{"answer": "hi"}', input_tokens=1000))
    parsed = c.chat.completions.parse(model="gpt-4o", messages=MSGS, response_format=Answer)
    assert parsed.choices[0].message.parsed == Answer(answer="hi")


@pytest.mark.anyio
async def test_an_async_parse_the_sdk_rejects_is_still_charged(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    async with aclient(server, guard) as c:
        server.script(Reply(output_tokens=50, input_tokens=1000))
        with pytest.raises(openai.LengthFinishReasonError):
            await c.chat.completions.parse(
                model="gpt-4o", messages=MSGS, response_format=Answer, max_completion_tokens=10
            )
    [event] = events.settled
    assert (event.status, event.usage) == ("error", Usage(input_tokens=1000, output_tokens=10))
    assert spent(guard) == event.cost_nanos > 0


@pytest.mark.parametrize(
    "path",
    [
        "/agents/sessions",  # a managed agent set to work on an input
        "/agents/sessions/sess_1/events",
        "/agents/automations/auto_1/invocations",
        "/agents/automations/auto_1/resume",
        "/fine_tuning/jobs/ftjob_1/resume",
        "/live/sessions",  # a Live WebRTC session
        "/live/sessions/live_1/fork",
        "/live/sessions/live_1/accept",
        "/realtime/sessions",
        "/realtime/calls",  # a Realtime session started over WebRTC
        "/realtime/transcription_sessions",
        "/realtime/translations/client_secrets",
        "/chatkit/sessions",
        "/containers",  # Code Interpreter, billed per container session
        "/fine_tuning/alpha/graders/run",
        "/videos/edits",
        "/videos/extensions",
    ],
)
def test_paid_jobs_and_sessions_of_newer_sdks_stop_with_the_agent(
    make_guard: Any, path: str
) -> None:
    # Routed by path, as every SDK version (openai 3.x has methods for each) sends them:
    # billed at OpenAI, they went through a stopped agent's client unchecked.
    guard = make_guard(budget=Budget.daily(1))
    mock = MockOpenAI({"id": "x"})
    c = mock.client(guard)
    c.post(path, body={"model": "gpt-realtime"}, cast_to=object)
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        c.post(path, body={"model": "gpt-realtime"}, cast_to=object)
    c.post("/containers/ctr_1/files", body={}, cast_to=object)  # uploading costs nothing
    c.post("/agents/sessions/sess_1", body={}, cast_to=object)  # nor renaming a session
    c.post("/realtime/calls/call_1/hangup", body={}, cast_to=object)  # nor ending a call
    assert len(mock.bodies) == 4


def test_websocket_and_realtime_sessions_stop_with_the_agent(
    make_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Responses over responses.connect() and Realtime sessions bypass the HTTP request the
    # guard sits on: a stopped agent could open them. Over a WebSocket their calls are
    # metered (test_responses_socket.py, test_realtime.py); a browser's session is not.
    _needs_responses("connect")
    guard = make_guard(budget=Budget.daily(1))
    mock = MockOpenAI({"value": "ek_1", "expires_at": 0})
    c = mock.client(guard)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        c.responses.connect()  # a connection manager: nothing is sent until it is entered
        c.realtime.connect(model="gpt-realtime")
        assert not caplog.records
        c.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"})
    assert any("cannot meter" in r.getMessage() for r in caplog.records)
    assert len(mock.bodies) == 1

    guard.kill("stop")
    for open_session in (
        c.responses.connect,
        c.realtime.connect,
        c.beta.realtime.connect,
        lambda: c.realtime.client_secrets.create(session={"type": "realtime"}),
        lambda: c.realtime.calls.accept("call_1", type="realtime", model="gpt-realtime"),
    ):
        with pytest.raises(AgentKilledError):
            open_session()
    assert len(mock.bodies) == 1
