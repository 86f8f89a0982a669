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


def _priority_project(
    server: StandIn, make_guard: Any, budget: Budget, taught: bool
) -> tuple[int, int]:
    """201 calls that name no tier from a project whose default is priority, in strict mode
    with 300 max output tokens: after one answered call (``taught``), or all at once. How many
    were admitted and what the provider billed."""
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
        try:
            first = [await call()] if taught else []
            return first + list(await asyncio.gather(*(call() for _ in range(201 - len(first)))))
        finally:
            await client.close()

    admitted = sum(asyncio.run(main()))
    # What the provider bills: each answer's tokens (up to the max tokens the guard sent)
    # at gpt-4o's priority prices, $4.25 input and $17 output per million.
    billed = sum(
        9 * 4250 + min(300, r.body["max_completion_tokens"]) * 17_000 for r in server.requests
    )
    assert admitted > 1 and len(server.requests) == admitted
    assert spent(guard) == billed
    assert guard.ledger.open_holds == 0
    return admitted, billed


def test_spend_holds_the_limit_for_a_project_whose_default_is_priority(
    server: StandIn, make_guard: Any
) -> None:
    # One answer teaches the guard the tier; reserved at standard prices, the 200 calls after
    # it would be admitted for 3.0 and charged 5.1 millidollars each.
    budget = Budget.daily(0.02)
    admitted, billed = _priority_project(server, make_guard, budget, taught=True)
    print(f"\npriority project: admitted {admitted}/201, billed ${billed / 1e9:.6f} of $0.02")
    assert billed <= budget.limit


def test_a_first_burst_from_a_priority_project_is_held_at_priority(
    server: StandIn, make_guard: Any
) -> None:
    # 201 calls at once, before any answer has named the project's tier. Held at standard
    # prices, seven of them passed the check and were billed 0.034 of a 0.02 budget.
    # Now the first is held at standard while it learns the tier and the others at priority:
    # the first's hold is short by the price difference of its 300 tokens, no more.
    budget = Budget.daily(0.02)
    admitted, billed = _priority_project(server, make_guard, budget, taught=False)
    print(f"\nfirst burst: admitted {admitted}/201, billed ${billed / 1e9:.6f} of $0.02")
    first_short_by = 9 * (4250 - 2500) + 300 * (17_000 - 10_000)
    assert billed <= budget.limit + first_short_by


@pytest.mark.parametrize("answered_tier", ["default", None])
def test_a_first_burst_from_a_standard_project_is_admitted_and_charged_as_before(
    server: StandIn, make_guard: Any, events: Events, answered_tier: str | None
) -> None:
    # Room for two calls at standard prices, not for one at standard and one at priority:
    # the second, refused at priority while the first learns the tier, is held at standard.
    # An answer that names no tier (an OpenAI-compatible server) is charged at standard.
    worst = 9 * 2500 + 300 * 10_000
    guard = make_guard(budget=Budget.daily((2 * worst + 1000) / 1e9))
    server.default = Reply(output_tokens=40, input_tokens=9, service_tier=answered_tier, delay=0.2)
    client = guard.wrap(
        openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-t", max_retries=0)
    )

    async def main() -> None:
        try:
            calls = (
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=300)
                for _ in range(2)
            )
            await asyncio.gather(*calls)
        finally:
            await client.close()

    asyncio.run(main())
    assert [(e.cost_nanos, e.price_tier) for e in events.settled] == [
        (9 * 2500 + 40 * 10_000, None)
    ] * 2
    assert guard.ledger.open_holds == 0


def test_a_call_that_failed_while_learning_the_tier_leaves_it_to_the_next(
    server: StandIn, make_guard: Any
) -> None:
    def first_limit(fail_first: bool) -> int:
        guard = make_guard(budget=Budget.daily(0.01), mode="strict")
        client = guarded_openai(server, guard)
        if fail_first:
            server.script(Reply(status=500))
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="gpt-4o", messages=MSGS)
        server.script(Reply(input_tokens=100, output_tokens=10))
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert guard.ledger.open_holds == 0
        return int(server.last.body["max_completion_tokens"])

    # Held at standard prices as the first call of a fresh guard is, not at priority (which
    # would let it produce about 590 tokens).
    assert first_limit(fail_first=True) == first_limit(fail_first=False) > 900


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
