from datetime import UTC, datetime

import pytest

from kavach import Budget, KavachConfigError, Period


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_daily_limit_is_nano_dollars_and_resets_at_utc_midnight() -> None:
    budget = Budget.daily(50)
    assert budget.limit == 50_000_000_000
    key, resets = budget.key("bot", utc(2026, 11, 28, 23, 59, 59))
    assert key == "agent:bot:daily:2026-11-28"
    assert resets == utc(2026, 11, 29)
    key2, _ = budget.key("bot", utc(2026, 11, 29, 0, 0, 0))
    assert key2 == "agent:bot:daily:2026-11-29"


def test_monthly_rolls_over_on_the_first_and_across_the_year() -> None:
    budget = Budget.monthly("12.5")
    assert budget.key("a", utc(2026, 12, 31, 23))[0] == "agent:a:monthly:2026-12"
    assert budget.key("a", utc(2026, 12, 31, 23))[1] == utc(2027, 1, 1)
    assert budget.key("a", utc(2027, 1, 1))[0] == "agent:a:monthly:2027-01"


def test_weekly_resets_monday_midnight() -> None:
    key, resets = Budget.weekly(5).key("a", utc(2026, 11, 28, 12))  # a Saturday
    assert key == "agent:a:weekly:2026-W48"
    assert resets == utc(2026, 11, 30)


def test_timezone_option_moves_the_day_boundary() -> None:
    budget = Budget.daily(5, tz="Asia/Kolkata")  # UTC+5:30
    key, resets = budget.key("a", utc(2026, 11, 28, 19, 0))  # 00:30 on the 29th in Kolkata
    assert key == "agent:a:daily:2026-11-29"
    assert resets == utc(2026, 11, 29, 18, 30)


def test_dst_transition_keeps_local_midnight() -> None:
    budget = Budget.daily(5, tz="America/New_York")
    # 2026-11-01 is the DST end in New York: the day is 25 hours long.
    _, resets = budget.key("a", utc(2026, 11, 1, 12))
    assert resets == utc(2026, 11, 2, 5)


def test_total_and_per_run() -> None:
    assert Budget.total(1).key("a", utc(2026, 1, 1)) == ("agent:a:total:total", None)
    key, resets = Budget.per_run(tokens=500).key("a", utc(2026, 1, 1), run_id="r1")
    assert key == "agent:a:tokens:per_run:run:r1" and resets is None


def test_shared_and_org_scopes_and_labels() -> None:
    shared = Budget.daily(100, shared="research-team")
    assert shared.key("x", utc(2026, 11, 28))[0] == "shared:research-team:daily:2026-11-28"
    assert shared.label == "shared:research-team daily"
    org = Budget.monthly(calls=10_000, org=True)
    assert org.key("x", utc(2026, 11, 28))[0] == "org:calls:monthly:2026-11"
    assert org.label == "org monthly calls"
    assert org.period is Period.MONTHLY


@pytest.mark.parametrize(
    "make",
    [
        lambda: Budget.daily(),
        lambda: Budget.daily(5, tokens=10),
        lambda: Budget.daily(-1),
        lambda: Budget.daily(5, tz="Mars/Olympus"),
        lambda: Budget.daily(5, shared="a", org=True),
        lambda: Budget.daily(5, thresholds=[0.5, 1.5]),
    ],
)
def test_invalid_budgets_say_what_to_fix(make: object) -> None:
    with pytest.raises(KavachConfigError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), "ten", True])
def test_a_dollar_limit_that_is_not_a_finite_amount_is_a_clear_error(limit: object) -> None:
    with pytest.raises(KavachConfigError, match="must be a finite dollar amount"):
        Budget.daily(limit)  # type: ignore[arg-type]


def test_a_negative_limit_is_shown_in_dollars() -> None:
    with pytest.raises(KavachConfigError, match=r"must not be negative, got -\$1.50"):
        Budget.daily(-1.5)
