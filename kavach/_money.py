"""Money as integer nano-dollars (1e-9 USD).

Every amount inside kavach (ledger, events, database, Redis) is an ``int`` of
nano-dollars so that concurrent arithmetic is exact. Dollars appear only at the
edges: user input (``Budget.daily(50)``) and formatted messages.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, Decimal

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
    """Dollars for people: ``$1,234.50``; under a dollar, enough digits to tell amounts apart
    (``$0.04984``, ``$0.000125``), never rounded up to look like a limit was reached."""
    dollars = Decimal(nanos) / NANOS_PER_DOLLAR
    sign = "-" if dollars < 0 else ""
    dollars = abs(dollars)
    if dollars >= 1 or dollars == 0:
        return f"{sign}${dollars.quantize(Decimal('0.01'), rounding=ROUND_DOWN):,.2f}"
    text = f"{dollars.quantize(Decimal('0.000000001'), rounding=ROUND_DOWN):.9f}".rstrip("0")
    whole, frac = text.split(".")
    significant = frac.lstrip("0")
    keep = len(frac) - len(significant) + min(len(significant), 4)
    frac = frac[: max(2, keep)].ljust(2, "0")
    return f"{sign}${whole}.{frac}"
