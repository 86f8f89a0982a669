"""Budgets: a limit on cost, tokens or calls over a period, for an agent, a shared pool or the org.

>>> Budget.daily(50).limit                 # $50 a day, in nano-dollars
50000000000
>>> Budget.daily(100, shared="research-team").label
'shared:research-team daily'
>>> Budget.monthly(tokens=2_000_000).unit
'tokens'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from enum import Enum
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kavach._money import fmt_usd, to_nanos
from kavach.errors import KavachConfigError

Unit = Literal["usd", "tokens", "calls"]
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9, 1.0)


class Period(str, Enum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    TOTAL = "total"
    PER_RUN = "per_run"


@lru_cache(maxsize=64)
def _zone(name: str | None) -> timezone | ZoneInfo:
    if name is None or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise KavachConfigError(
            f"unknown timezone {name!r}; use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from exc


@dataclass(frozen=True, slots=True)
class Budget:
    """A limit over a period. Build one with ``Budget.daily/weekly/monthly/total/per_run``.

    ``limit`` is in the budget's unit: nano-dollars for ``usd``, a count for ``tokens`` and
    ``calls``. ``shared`` names a pool that several agents draw on; ``org`` makes it the
    organization-wide budget. Periods reset at midnight (daily), Monday midnight (weekly) and
    the 1st (monthly) in ``tz`` (UTC by default).
    """

    limit: int
    period: Period
    unit: Unit = "usd"
    shared: str | None = None
    org: bool = False
    tz: str | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise KavachConfigError(
                f"budget limit must not be negative, got {self.format_amount(self.limit)}"
            )
        if self.shared is not None and self.org:
            raise KavachConfigError("a budget is either shared or org-wide, not both")
        if self.shared is not None and (not self.shared or ":" in self.shared):
            raise KavachConfigError(f"shared budget name {self.shared!r} must be non-empty, no ':'")
        if self.period is Period.PER_RUN and (self.shared is not None or self.org):
            raise KavachConfigError(
                "a per-run budget belongs to one agent's run; it cannot be shared"
            )
        for t in self.thresholds:
            if not 0 < t <= 1:
                raise KavachConfigError(f"thresholds are fractions in (0, 1], got {t}")
        _zone(self.tz)

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def _make(
        cls,
        period: Period,
        limit: float | int | str | None,
        tokens: int | None,
        calls: int | None,
        tz: str | None,
        shared: str | None,
        org: bool,
        thresholds: tuple[float, ...] | list[float] | None,
    ) -> Budget:
        given = [x is not None for x in (limit, tokens, calls)]
        if sum(given) != 1:
            raise KavachConfigError(
                "give exactly one of a dollar limit, tokens= or calls=, "
                "e.g. Budget.daily(50) or Budget.daily(tokens=1_000_000)"
            )
        if limit is not None:
            unit: Unit = "usd"
            amount = _dollars(limit)
        elif tokens is not None:
            unit, amount = "tokens", int(tokens)
        else:
            assert calls is not None
            unit, amount = "calls", int(calls)
        return cls(
            limit=amount,
            period=period,
            unit=unit,
            shared=shared,
            org=org,
            tz=tz,
            thresholds=tuple(sorted(thresholds)) if thresholds is not None else DEFAULT_THRESHOLDS,
        )

    @classmethod
    def daily(
        cls,
        limit: float | int | str | None = None,
        *,
        tokens: int | None = None,
        calls: int | None = None,
        tz: str | None = None,
        shared: str | None = None,
        org: bool = False,
        thresholds: tuple[float, ...] | list[float] | None = None,
    ) -> Budget:
        """A limit that resets at midnight in ``tz`` (UTC by default)."""
        return cls._make(Period.DAILY, limit, tokens, calls, tz, shared, org, thresholds)

    @classmethod
    def weekly(
        cls,
        limit: float | int | str | None = None,
        *,
        tokens: int | None = None,
        calls: int | None = None,
        tz: str | None = None,
        shared: str | None = None,
        org: bool = False,
        thresholds: tuple[float, ...] | list[float] | None = None,
    ) -> Budget:
        """A limit that resets on Monday at midnight in ``tz``."""
        return cls._make(Period.WEEKLY, limit, tokens, calls, tz, shared, org, thresholds)

    @classmethod
    def monthly(
        cls,
        limit: float | int | str | None = None,
        *,
        tokens: int | None = None,
        calls: int | None = None,
        tz: str | None = None,
        shared: str | None = None,
        org: bool = False,
        thresholds: tuple[float, ...] | list[float] | None = None,
    ) -> Budget:
        """A limit that resets on the 1st of the month at midnight in ``tz``."""
        return cls._make(Period.MONTHLY, limit, tokens, calls, tz, shared, org, thresholds)

    @classmethod
    def total(
        cls,
        limit: float | int | str | None = None,
        *,
        tokens: int | None = None,
        calls: int | None = None,
        shared: str | None = None,
        org: bool = False,
        thresholds: tuple[float, ...] | list[float] | None = None,
    ) -> Budget:
        """A limit that never resets."""
        return cls._make(Period.TOTAL, limit, tokens, calls, None, shared, org, thresholds)

    @classmethod
    def per_run(
        cls,
        limit: float | int | str | None = None,
        *,
        tokens: int | None = None,
        calls: int | None = None,
        thresholds: tuple[float, ...] | list[float] | None = None,
    ) -> Budget:
        """A limit for each run (one agent invocation, see ``guard.run()``)."""
        return cls._make(Period.PER_RUN, limit, tokens, calls, None, None, False, thresholds)

    # -- naming -------------------------------------------------------------------------

    @property
    def scope(self) -> str:
        """``agent``, ``shared:<name>`` or ``org``."""
        if self.shared is not None:
            return f"shared:{self.shared}"
        return "org" if self.org else "agent"

    @property
    def label(self) -> str:
        """A human name: ``daily``, ``shared:team daily``, ``org monthly tokens``."""
        parts = [] if self.scope == "agent" else [self.scope]
        parts.append(self.period.value)
        if self.unit != "usd":
            parts.append(self.unit)
        return " ".join(parts)

    def scope_key(self, agent: str) -> str:
        if self.shared is not None:
            return f"shared:{self.shared}"
        return "org" if self.org else f"agent:{agent}"

    def window(self, now: datetime, run_id: str = "") -> tuple[str, datetime | None]:
        """The current period's id and when it resets (UTC), for ``now`` (aware, any zone)."""
        if self.period is Period.TOTAL:
            return "total", None
        if self.period is Period.PER_RUN:
            return f"run:{run_id}", None
        local = now.astimezone(_zone(self.tz))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period is Period.DAILY:
            period_id = local.date().isoformat()
            nxt = midnight + timedelta(days=1)
        elif self.period is Period.WEEKLY:
            year, week, _ = local.isocalendar()
            period_id = f"{year}-W{week:02d}"
            nxt = midnight + timedelta(days=7 - local.weekday())
        else:
            period_id = f"{local.year:04d}-{local.month:02d}"
            y, m = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
            nxt = midnight.replace(year=y, month=m, day=1)
        # Re-attach the zone so a DST change between now and the reset is respected.
        nxt = nxt.replace(tzinfo=None).replace(tzinfo=_zone(self.tz))
        return period_id, nxt.astimezone(UTC)

    def key(self, agent: str, now: datetime, run_id: str = "") -> tuple[str, datetime | None]:
        """The ledger key for this budget now, and when it resets.

        ``agent:bot:daily:2026-11-28``, ``shared:team:monthly:2026-11``,
        ``agent:bot:tokens:per_run:run:abc``.
        """
        period_id, resets_at = self.window(now, run_id)
        unit = "" if self.unit == "usd" else f"{self.unit}:"
        return f"{self.scope_key(agent)}:{unit}{self.period.value}:{period_id}", resets_at

    def format_amount(self, amount: int) -> str:
        return fmt_usd(amount) if self.unit == "usd" else f"{amount:,} {self.unit}"

    @property
    def dollars(self) -> float | None:
        """The limit in dollars for cost budgets, else ``None``."""
        return self.limit / 1e9 if self.unit == "usd" else None


def _dollars(limit: float | int | str) -> int:
    """A dollar limit in nano-dollars, or a KavachConfigError saying what is wrong with it."""
    try:
        amount = Decimal(str(limit)) if not isinstance(limit, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        raise KavachConfigError(
            f"budget limit must be a finite dollar amount such as 50 or '12.5', got {limit!r}"
        )
    return to_nanos(amount)
