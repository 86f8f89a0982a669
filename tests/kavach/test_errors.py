"""What the errors tell a user."""

from __future__ import annotations

from datetime import UTC, datetime

from kavach import BudgetExceededError


def test_a_refusal_about_one_call_says_what_to_change_not_when_a_period_resets() -> None:
    # A stream cut at its reservation: waiting for a reset changes nothing, and "this call
    # needs up to 0 tokens" made no sense; the detail says what to change.
    error = BudgetExceededError.for_one_call(
        "gpt-4o stream",
        used=300,
        paid=300,
        requested=0,
        scope="this stream",
        detail="The stream was cut after 300 output tokens. Set max output tokens on the request.",
    )
    message = str(error)
    assert message == (
        "Budget exceeded (gpt-4o stream): The stream was cut after 300 output tokens. "
        "Set max output tokens on the request."
    )
    assert (error.budget, error.unit, error.spent, error.limit) == (
        "gpt-4o stream",
        "tokens",
        300,
        300,
    )
    assert error.resets_at is None


def _refusal(period: str, resets_at: datetime | None, reserved: int) -> str:
    return str(
        BudgetExceededError(
            budget="research-bot",
            unit="usd",
            spent=40_000_000,
            reserved=reserved,
            limit=50_000_000,
            requested=15_000_000,
            period=period,
            resets_at=resets_at,
        )
    )


def test_a_budget_refusal_gives_the_numbers_and_advice_that_fits_the_budget() -> None:
    daily = _refusal("daily", datetime(2026, 12, 7, tzinfo=UTC), 5_000_000)
    assert daily == (
        "research-bot budget exceeded: spent $0.04 + $0.005 held by calls in flight of $0.05 "
        "(daily); this call needs up to $0.015, $0.01 over. It resets at 2026-12-07 00:00 UTC; "
        "raise the limit, lower max output tokens, or wait."
    )
    # A total budget never resets: waiting helps only while calls in flight hold part of it.
    assert _refusal("total", None, 0).endswith(
        "It does not reset; raise the limit or lower max output tokens."
    )
    assert _refusal("total", None, 5_000_000).endswith(
        "It does not reset; raise the limit, lower max output tokens, or wait for the calls "
        "in flight to settle."
    )
    assert _refusal("run nightly", None, 0).endswith(
        "It lasts this run; start a new run, raise the limit or lower max output tokens."
    )
