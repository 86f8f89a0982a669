"""Premium and discounted tiers are reserved and charged at their own prices.

OpenAI ``service_tier="priority"`` and Anthropic fast mode cost about twice the standard
price: a guard that priced them as standard let a budget be spent twice over.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from kavach import Budget, BudgetExceededError, Usage
from kavach._devtools.standin import Reply, StandIn
from kavach.pricing import Pricing

from .conftest import Events, guarded_anthropic, guarded_gemini, guarded_openai, spent

MSGS = [{"role": "user", "content": "Say hello"}]
PRIORITY = (("service_tier", "priority"),)

# gpt-4o per million tokens: standard $2.50 input, $10 output; priority $4.25 and $17.
GPT4O_STANDARD = 1000 * 2500 + 40 * 10_000
GPT4O_PRIORITY = 1000 * 4250 + 40 * 17_000


@pytest.mark.parametrize(
    ("tier", "cost"),
    [("priority", GPT4O_PRIORITY), ("default", GPT4O_STANDARD), (None, GPT4O_STANDARD)],
)
def test_chat_is_charged_at_the_tier_it_asks_for(
    server: StandIn, make_guard: Any, events: Events, tier: str | None, cost: int
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=1000, output_tokens=40))
    extra = {"service_tier": tier} if tier else {}
    guarded_openai(server, guard).chat.completions.create(model="gpt-4o", messages=MSGS, **extra)

    [event] = events.settled
    assert event.cost_nanos == cost
    assert spent(guard) == cost


def test_a_priority_stream_is_charged_at_priority_prices(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=1000, output_tokens=40))
    stream = guarded_openai(server, guard).chat.completions.create(
        model="gpt-4o", messages=MSGS, service_tier="priority", stream=True
    )
    assert len([c for c in stream if c.choices and c.choices[0].delta.content]) == 40

    [event] = events.settled
    assert event.cost_nanos == GPT4O_PRIORITY
    assert guard.ledger.open_holds == 0


def test_responses_api_priority_is_charged_at_priority_prices(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=1000, output_tokens=40))
    guarded_openai(server, guard).responses.create(
        model="gpt-4o", input="Say hello", service_tier="priority"
    )
    [event] = events.settled
    assert event.cost_nanos == GPT4O_PRIORITY


def test_the_tier_the_response_reports_is_what_is_charged(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # A project whose default tier is priority: requests name no tier, answers say priority.
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=1000, output_tokens=40, service_tier="priority"))
    guarded_openai(server, guard).chat.completions.create(model="gpt-4o", messages=MSGS)
    [event] = events.settled
    assert event.cost_nanos == GPT4O_PRIORITY


def _second_limit(server: StandIn, make_guard: Any, asked: str | None, served: str) -> int:
    """The max_completion_tokens strict mode sends on a second call, the first one having
    been served (and charged) at ``served``."""
    guard = make_guard(budget=Budget.daily(0.01), mode="strict")
    client = guarded_openai(server, guard)
    extra = {"service_tier": asked} if asked else {}
    for _ in range(2):
        server.script(Reply(input_tokens=100, output_tokens=10, service_tier=served))
        client.chat.completions.create(model="gpt-4o", messages=MSGS, **extra)
    return int(server.last.body["max_completion_tokens"])


def test_a_project_default_tier_is_learned_and_reserved_at(
    server: StandIn, make_guard: Any
) -> None:
    learned = _second_limit(server, make_guard, None, "priority")
    explicit = _second_limit(server, make_guard, "priority", "priority")
    standard = _second_limit(server, make_guard, None, "default")
    # After one answer served at priority, calls that name no tier are held at priority
    # prices: strict mode lets them produce what the budget pays at $17, not $10, a token.
    assert learned == explicit
    assert learned < standard * 0.65


def test_spend_holds_the_limit_for_a_project_whose_default_is_priority(
    server: StandIn, make_guard: Any
) -> None:
    budget = Budget.daily(0.02)
    guard = make_guard(budget=budget, mode="strict", default_max_output_tokens=300)
    # Input as OpenAI counts "Say hello"; every answer says the project's priority tier.
    server.default = Reply(output_tokens=300, input_tokens=9, service_tier="priority")
    client = guard.wrap(
        openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-t", max_retries=0)
    )

    async def call() -> bool:
        try:
            await client.chat.completions.create(model="gpt-4o", messages=MSGS)
        except BudgetExceededError:
            return False
        return True

    async def main() -> list[bool]:
        # One answer teaches the guard the tier; reserved at standard prices, the 200 calls
        # after it would be admitted for 3.0 and charged 5.1 millidollars each.
        try:
            return [await call()] + list(await asyncio.gather(*(call() for _ in range(200))))
        finally:
            await client.close()

    admitted = sum(asyncio.run(main()))
    # What the provider bills: each answer's tokens (up to the max tokens the guard sent)
    # at gpt-4o's priority prices, $4.25 input and $17 output per million.
    billed = sum(
        9 * 4250 + min(300, r.body["max_completion_tokens"]) * 17_000 for r in server.requests
    )
    print(f"\npriority project: admitted {admitted}/201, billed ${billed / 1e9:.6f} of $0.02")
    assert admitted > 1 and len(server.requests) == admitted
    assert spent(guard) == billed
    assert billed <= budget.limit
    assert guard.ledger.open_holds == 0


def test_anthropic_fast_mode_is_charged_at_its_price(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    client = guarded_anthropic(server, guard)
    server.script(
        Reply(input_tokens=1000, output_tokens=40), Reply(input_tokens=1000, output_tokens=40)
    )
    for speed in ("fast", "standard"):
        client.beta.messages.create(
            model="claude-opus-4-8",
            max_tokens=100,
            messages=MSGS,
            speed=speed,  # type: ignore[arg-type]
            betas=["fast-mode-2026-02-01"],
        )
    # claude-opus-4-8: $5 / $25 per million tokens; fast mode $10 / $50.
    assert [e.cost_nanos for e in events.settled] == [
        1000 * 10_000 + 40 * 50_000,
        1000 * 5_000 + 40 * 25_000,
    ]


def test_gemini_priority_tier_is_charged_at_its_price(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The openai 3.x stage of scripts/test.sh has no google-genai; the main stage runs this.
    pytest.importorskip("google.genai", reason="google-genai is not installed")
    guard = make_guard(budget=Budget.daily(1))
    client = guarded_gemini(server, guard)
    server.script(
        Reply(input_tokens=1000, output_tokens=40), Reply(input_tokens=1000, output_tokens=40)
    )
    for tier in ("priority", None):
        config: dict[str, Any] = {"service_tier": tier} if tier else {}
        client.models.generate_content(model="gemini-4-argon", contents="Hi", config=config)

    usage = Usage(input_tokens=1000, output_tokens=40)
    priority = Pricing().resolve("google", "gemini-4-argon", variant=PRIORITY).cost(usage)
    standard = Pricing().resolve("google", "gemini-4-argon").cost(usage)
    assert priority > standard * 1.5
    assert [e.cost_nanos for e in events.settled] == [priority, standard]
