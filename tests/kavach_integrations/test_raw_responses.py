"""``with_raw_response`` and ``with_streaming_response``: the SDKs' raw-response paths are
guarded and charged like the plain ones (OpenAI and Anthropic, sync and async)."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from kavach import AgentKavach, Budget, Usage
from kavach._devtools.standin import Reply, StandIn

from .conftest import Events

MSGS = [{"role": "user", "content": "Say hello"}]
USAGE = Usage(input_tokens=5000, output_tokens=400)


def openai_client(server: StandIn, guard: AgentKavach) -> openai.OpenAI:
    return guard.wrap(openai.OpenAI(base_url=server.openai_url, api_key="k", max_retries=0))


def anthropic_client(server: StandIn, guard: AgentKavach) -> anthropic.Anthropic:
    return guard.wrap(
        anthropic.Anthropic(base_url=server.anthropic_url, api_key="k", max_retries=0)
    )


def settled_at_usage(guard: AgentKavach, events: Events) -> None:
    [event] = events.settled
    assert (event.status, event.usage) == ("ok", USAGE)
    assert event.cost_nanos > 0 and guard.status()[0].spent == event.cost_nanos
    assert guard.ledger.open_holds == 0


def test_openai_raw_chat_is_charged_its_usage(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    raw = openai_client(server, guard).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSGS
    )
    assert raw.parse().usage.completion_tokens == 400
    settled_at_usage(guard, events)


def test_openai_raw_responses_call_is_charged_its_usage(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    raw = openai_client(server, guard).responses.with_raw_response.create(
        model="gpt-4o", input="hi"
    )
    assert raw.parse().usage.output_tokens == 400
    settled_at_usage(guard, events)


def test_openai_raw_stream_is_metered_through_parse(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    raw = openai_client(server, guard).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSGS, stream=True
    )
    chunks = list(raw.parse())
    assert chunks and all(chunk.choices for chunk in chunks)  # the usage chunk stays hidden
    settled_at_usage(guard, events)


def test_anthropic_raw_message_and_stream_are_charged_their_usage(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    raw = anthropic_client(server, guard).messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=1000, messages=MSGS
    )
    assert raw.parse().usage.output_tokens == 400
    settled_at_usage(guard, events)

    events.calls.clear()
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    raw = anthropic_client(server, guard).messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=1000, messages=MSGS, stream=True
    )
    assert [event.type for event in raw.parse()][-1] == "message_stop"
    settled_at_usage(guard, events)


@pytest.mark.anyio
async def test_async_streaming_response_is_charged_its_usage(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = guard.wrap(openai.AsyncOpenAI(base_url=server.openai_url, api_key="k", max_retries=0))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    async with c.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MSGS
    ) as response:
        assert (await response.parse()).usage.completion_tokens == 400
    settled_at_usage(guard, events)
    await c.close()

    events.calls.clear()
    guard = make_guard(budget=Budget.daily(1))
    c = guard.wrap(openai.AsyncOpenAI(base_url=server.openai_url, api_key="k", max_retries=0))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    async with c.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MSGS, stream=True
    ) as response:
        chunks = [chunk async for chunk in await response.parse()]
    assert chunks
    settled_at_usage(guard, events)
    await c.close()


@pytest.mark.anyio
async def test_a_raw_stream_read_as_bytes_is_charged_what_was_reserved(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The guard cannot see usage in bytes the caller reads past it, so it charges the hold:
    # never less than the provider billed.
    guard = make_guard(budget=Budget.daily(1))
    c = guard.wrap(openai.AsyncOpenAI(base_url=server.openai_url, api_key="k", max_retries=0))
    server.script(Reply(output_tokens=400, input_tokens=5000))
    async with c.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MSGS, stream=True, max_tokens=500
    ) as response:
        lines = [line async for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    [event] = events.settled
    assert event.usage.output_tokens == 500 and event.cost_nanos == event.reserved_nanos
    assert guard.status()[0].spent == event.cost_nanos and guard.ledger.open_holds == 0
    await c.close()
