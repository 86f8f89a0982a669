"""The account tier learned from answers, for calls that leave the tier to the account."""

from __future__ import annotations

import doctest
import threading

from kavach import CallSpec, tiers
from kavach.tiers import AccountTiers

PRIORITY = (("service_tier", "priority"),)
FLEX = (("service_tier", "flex"),)


def spec(provider: str = "openai", tier: tuple[tuple[str, str], ...] | None = None) -> CallSpec:
    return CallSpec(provider=provider, model="gpt-4o", prompt="hi", price_variant=tier)


def test_the_examples_hold() -> None:
    assert doctest.testmod(tiers).failed == 0


def test_one_call_learns_the_tier_and_the_calls_beside_it_are_held_at_priority() -> None:
    t = AccountTiers()
    first, beside = spec(), spec()
    assert t.to_hold(first) == ()
    assert t.to_hold(beside) == PRIORITY
    assert t.held_above(beside, PRIORITY)  # may be held again at the tier known by then
    assert t.served(first, PRIORITY) == PRIORITY
    assert not t.held_above(beside, PRIORITY)  # priority is the account's tier after all
    assert t.to_hold(spec()) == PRIORITY


def test_the_last_tier_named_is_the_accounts() -> None:
    t = AccountTiers()
    t.served(spec(), PRIORITY)
    assert t.served(spec(), None) == PRIORITY  # an answer naming none: as last named
    t.served(spec(), FLEX)
    assert t.to_hold(spec()) == FLEX == t.known("openai")


def test_a_call_that_ends_unanswered_leaves_the_learning_to_the_next() -> None:
    t = AccountTiers()
    first, beside = spec(), spec()
    t.to_hold(first)
    t.to_hold(beside)
    t.unanswered(beside)  # not the one learning: changes nothing
    assert t.to_hold(spec()) == PRIORITY
    t.unanswered(first)
    assert t.to_hold(spec()) == ()


def test_providers_without_a_dearer_account_tier_are_held_at_standard() -> None:
    t = AccountTiers()
    assert [t.to_hold(spec("anthropic")) for _ in range(3)] == [(), (), ()]
    assert not t.held_above(spec("anthropic"), ())


def test_a_tier_the_request_names_is_never_held_again() -> None:
    assert not AccountTiers().held_above(spec(tier=PRIORITY), PRIORITY)


def test_concurrent_first_calls_have_exactly_one_learner() -> None:
    t = AccountTiers()
    specs = [spec() for _ in range(64)]
    held: list[tuple[tuple[str, str], ...]] = []
    start = threading.Barrier(8)

    def hold(chunk: list[CallSpec]) -> None:
        start.wait()
        held.extend(t.to_hold(s) for s in chunk)

    threads = [threading.Thread(target=hold, args=(specs[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(held) == [()] + [PRIORITY] * 63
