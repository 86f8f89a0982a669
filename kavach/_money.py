"""Money as integer nano-dollars (1e-9 USD).

Every amount inside kavach (ledger, events, database, Redis) is an ``int`` of
nano-dollars so that concurrent arithmetic is exact. Dollars appear only at the
edges: user input (``Budget.daily(50)``) and formatted messages.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

NANOS_PER_DOLLAR = 1_000_000_000


def to_nanos(dollars: float | int | str | Decimal) -> int:
    """Convert a dollar amount to nano-dollars, rounding up (never under-count spend)."""
    if isinstance(dollars, bool):
        raise TypeError("a dollar amount must be a number, not a bool")
    value = Decimal(str(dollars)) * NANOS_PER_DOLLAR
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def to_dollars(nanos: int) -> float:
    return nanos / NANOS_PER_DOLLAR


def fmt_usd(nanos: int) -> str:
    """``$1.23`` for ordinary amounts, more digits for sub-cent ones (``$0.000125``)."""
    dollars = Decimal(nanos) / NANOS_PER_DOLLAR
    sign = "-" if dollars < 0 else ""
    dollars = abs(dollars)
    if dollars == 0 or dollars >= Decimal("0.01"):
        return f"{sign}${dollars:,.2f}"
    text = f"{dollars:.9f}".rstrip("0")
    return f"{sign}${text}"
