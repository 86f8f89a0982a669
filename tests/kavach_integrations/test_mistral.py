"""The real mistralai SDK, guarded, against the loopback stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from mistralai.client import Mistral, models

from kavach import AgentKavach, Budget, BudgetExceededError, KavachError, Usage
from kavach._devtools.standin import Reply, StandIn

from .conftest import Events

MODEL = "mistral-small-latest"
MSGS = [{"role": "user", "content": "Say hello"}]


_open: list[Mistral] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().__exit__(None, None, None)


def client(server: StandIn, guard: AgentKavach) -> Mistral:
    c = guard.wrap(Mistral(api_key="k", server_url=server.base_url))
    _open.append(c)
    return c


def test_complete_settles_and_strict_sets_max_tokens(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.001), mode="strict")
    server.script(Reply(input_tokens=100, output_tokens=20))
    response = client(server, guard).chat.complete(model=MODEL, messages=MSGS)
    assert isinstance(response, models.ChatCompletionResponse)
    assert 16 <= server.last.body["max_tokens"] <= 4096
    assert events.settled[0].usage == Usage(input_tokens=100, output_tokens=20)
    assert guard.status()[0].spent == events.settled[0].cost_nanos


def test_refusal_before_request(server: StandIn, make_guard: Any) -> None:
    with pytest.raises(BudgetExceededError):
        client(server, make_guard(budget=Budget.daily(0.000001))).chat.complete(
            model=MODEL, messages=MSGS, max_tokens=1000
        )
    assert server.requests == []


def test_stream_usage_on_the_finishing_chunk_and_cut(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=40, output_tokens=6))
    with client(server, guard).chat.stream(model=MODEL, messages=MSGS) as stream:
        texts = [event.data.choices[0].delta.content for event in stream]
    assert (
        "".join(t for t in texts if isinstance(t, str))
        == "Hello from the kavach stand-in provider."
    )
    assert events.settled[-1].usage == Usage(input_tokens=40, output_tokens=6)
    assert events.settled[-1].status == "ok"

    strict = make_guard(agent_name="s", budget=Budget.daily(0.0001), mode="strict")
    server.default = Reply(text="go", output_tokens=3000, honor_max_tokens=False)
    with pytest.raises(BudgetExceededError):
        for _ in client(server, strict).chat.stream(model=MODEL, messages=MSGS):
            pass
    assert events.settled[-1].status == "cut" and strict.ledger.open_holds == 0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["strict", "reserve"])
async def test_200_concurrent_calls_never_pass_the_budget(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    limit = 0.002
    guard = make_guard(budget=Budget.daily(limit), mode=mode, default_max_output_tokens=300)
    server.default = Reply(output_tokens=300, input_tokens=8)
    c = client(server, guard)
    extra = {} if mode == "strict" else {"max_tokens": 300}

    async def call() -> Any:
        return await c.chat.complete_async(model=MODEL, messages=MSGS, **extra)

    results = await asyncio.gather(*(call() for _ in range(200)), return_exceptions=True)
    assert all(isinstance(r, models.ChatCompletionResponse | KavachError) for r in results)
    admitted = sum(isinstance(r, models.ChatCompletionResponse) for r in results)
    total = guard.status()[0].spent
    print(f"\nmistral {mode}: admitted {admitted}/200, spent ${total / 1e9:.6f} of ${limit}")
    assert 0 < admitted < 200
    assert total <= Budget.daily(limit).limit and guard.ledger.open_holds == 0
    stream = await c.chat.stream_async(model=MODEL, messages=MSGS, max_tokens=5)
    async for _ in stream:
        pass
    await c.__aexit__(None, None, None)
