"""Server-side search tools are charged per search, on top of the tokens.

Anthropic's ``web_search`` and OpenAI's ``web_search`` cost $10 per thousand searches: an
agent that searches five times a turn spends more on searches than on tokens, and the guard
counted none of it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from kavach import Budget, BudgetExceededError
from kavach._devtools.standin import Reply, StandIn

from .conftest import Events, guarded_anthropic, guarded_gemini, guarded_openai, spent

MSGS = [{"role": "user", "content": "What happened today?"}]
SEARCH = 10_000_000  # $0.01 a search, in nano-dollars
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search"}


# claude-sonnet-4-5: $3 input and $15 output per million tokens.
CLAUDE_TOKENS = 1000 * 3000 + 40 * 15_000


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_anthropic_web_searches_are_charged(
    server: StandIn, make_guard: Any, events: Events, stream: bool
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=1000, output_tokens=40, web_searches=3))
    response = guarded_anthropic(server, guard).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=MSGS,
        tools=[{**WEB_SEARCH, "max_uses": 5}],  # type: ignore[list-item]
        stream=stream,
    )
    if stream:
        list(response)  # type: ignore[call-overload]
    [event] = events.settled
    assert event.usage.web_searches == 3
    assert event.cost_nanos == CLAUDE_TOKENS + 3 * SEARCH
    assert spent(guard) == event.cost_nanos
    assert guard.ledger.open_holds == 0


def test_searches_a_request_may_make_are_held_before_it_is_sent(
    server: StandIn, make_guard: Any
) -> None:
    guard = make_guard(budget=Budget.daily(0.03))
    client = guarded_anthropic(server, guard)

    def ask(tool: dict[str, Any]) -> None:
        client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=MSGS,
            tools=[tool],  # type: ignore[list-item]
        )

    # Five searches ($0.05) cannot fit $0.03; nor can the ten a turn of server tools may
    # run to when the tool sets no max_uses. Refused before any request is sent.
    for tool in ({**WEB_SEARCH, "max_uses": 5}, WEB_SEARCH):
        with pytest.raises(BudgetExceededError):
            ask(tool)
    assert server.requests == []
    server.script(Reply(input_tokens=10, output_tokens=5, web_searches=2))
    ask({**WEB_SEARCH, "max_uses": 2})
    assert len(server.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_openai_responses_web_searches_are_charged(
    server: StandIn, make_guard: Any, events: Events, stream: bool
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=1000, output_tokens=40, web_searches=2))
    response = guarded_openai(server, guard).responses.create(
        model="gpt-4o",
        input="What happened today?",
        tools=[{"type": "web_search"}],
        max_tool_calls=4,
        stream=stream,
    )
    if stream:
        list(response)  # type: ignore[call-overload]
    [event] = events.settled
    assert event.usage.web_searches == 2
    # gpt-4o: $2.50 input and $10 output per million tokens.
    assert event.cost_nanos == 1000 * 2500 + 40 * 10_000 + 2 * SEARCH
    assert guard.ledger.open_holds == 0


def test_concurrent_searching_calls_never_pass_the_budget(server: StandIn, make_guard: Any) -> None:
    budget = Budget.daily(0.2)
    guard = make_guard(budget=budget)
    # Input as the guard counts it, so only the searches can outrun the reservation.
    server.default = Reply(input_tokens=12, output_tokens=50, web_searches=2)
    client = guard.wrap(
        anthropic.AsyncAnthropic(base_url=server.anthropic_url, api_key="sk-t", max_retries=0)
    )

    async def call() -> bool:
        try:
            await client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=50,
                messages=MSGS,
                tools=[{**WEB_SEARCH, "max_uses": 2}],  # type: ignore[list-item]
            )
        except BudgetExceededError:
            return False
        return True

    async def main() -> int:
        try:
            return sum(await asyncio.gather(*(call() for _ in range(100))))
        finally:
            await client.close()

    admitted = asyncio.run(main())
    billed = admitted * (12 * 3000 + 50 * 15_000 + 2 * SEARCH)
    print(f"\nweb search: admitted {admitted}/100, billed ${billed / 1e9:.6f} of $0.2")
    assert 0 < admitted < 100 and len(server.requests) == admitted
    assert spent(guard) == billed
    assert billed <= budget.limit
    assert guard.ledger.open_holds == 0


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize(
    ("model", "billed"),
    [("gemini-3-flash-preview", 3), ("gemini-2.5-flash", 1)],  # per query / per prompt
)
def test_gemini_google_search_grounding_is_charged(
    server: StandIn, make_guard: Any, events: Events, stream: bool, model: str, billed: int
) -> None:
    # The openai 3.x stage of scripts/test.sh has no google-genai; the main stage runs this.
    pytest.importorskip("google.genai", reason="google-genai is not installed")

    from kavach import Usage
    from kavach.pricing import Pricing

    guard = make_guard(budget=Budget.daily(1))
    client = guarded_gemini(server, guard)
    server.script(Reply(input_tokens=1000, output_tokens=40, web_searches=3))
    config = {"tools": [{"google_search": {}}]}
    if stream:
        list(client.models.generate_content_stream(model=model, contents="Hi", config=config))
    else:
        client.models.generate_content(model=model, contents="Hi", config=config)

    [event] = events.settled
    assert event.usage.web_searches == billed
    price = Pricing().resolve("google", model)
    assert price.web_search > 0
    assert event.cost_nanos == price.cost(Usage(input_tokens=1000, output_tokens=40)) + (
        billed * price.web_search
    )
    assert guard.ledger.open_holds == 0


@pytest.mark.parametrize("mode", ["strict", "reserve"])
def test_strict_mode_sends_the_searches_it_holds(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    guard = make_guard(budget=Budget.daily(1), mode=mode)
    claude_client, gpt_client = guarded_anthropic(server, guard), guarded_openai(server, guard)
    bounded = {**WEB_SEARCH, "name": "bounded", "max_uses": 3}
    claude_client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=MSGS,
        tools=[WEB_SEARCH, bounded],  # type: ignore[list-item]
    )
    gpt_client.responses.create(model="gpt-4o", input="hi", tools=[{"type": "web_search"}])
    gpt_client.responses.create(
        model="gpt-4o", input="hi", tools=[{"type": "web_search"}], max_tool_calls=2
    )
    anthropic_tools = server.requests[0].body["tools"]
    uses = [tool.get("max_uses") for tool in anthropic_tools]
    calls = [r.body.get("max_tool_calls") for r in server.requests[1:]]
    if mode == "strict":  # held for 10 searches, and the provider told to stop at them
        assert uses == [10, 3] and calls == [10, 2]
    else:  # the request as written
        assert uses == [None, 3] and calls == [None, 2]
    assert guard.ledger.open_holds == 0
