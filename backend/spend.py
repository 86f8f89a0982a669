"""Spend per UTC period (day, ISO week, month, all time), summed from the daily rollups."""

from __future__ import annotations

import datetime
from typing import Any

from backend.tables import SpendDaily

__all__ = ["period_starts", "agent_spend", "utc_now"]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def period_starts(today: datetime.date) -> dict[str, tuple[str, datetime.date | None]]:
    """Period id and first day of each period containing ``today``."""
    iso = today.isocalendar()
    week_start = today - datetime.timedelta(days=today.weekday())
    return {
        "daily": (today.isoformat(), today),
        "weekly": (f"{iso[0]}-W{iso[1]:02d}", week_start),
        "monthly": (f"{today.year}-{today.month:02d}", today.replace(day=1)),
        "total": ("total", None),
    }


async def agent_spend(org_id: int, agent_id: int | None, today: datetime.date) -> dict[str, Any]:
    """``{"daily": {"period_id", "cost_nanos", "tokens", "calls"}, "weekly": ...}`` in one query."""
    starts = period_starts(today)
    columns: list[str] = []
    args: list[Any] = []
    for period, (_, start) in starts.items():
        for metric in _METRICS:
            if start is None:
                expr = f"SUM({metric})"
            else:
                expr = f"SUM(CASE WHEN day >= {{}} THEN {metric} ELSE 0 END)"
                args.append(start)
            columns.append(f"CAST(COALESCE({expr}, 0) AS BIGINT) AS {period}_{metric}")
    sql = f"SELECT {', '.join(columns)} FROM spend_daily WHERE org = {{}}"
    args.append(org_id)
    if agent_id is not None:
        sql += " AND agent = {}"
        args.append(agent_id)
    row = (await SpendDaily.raw(sql, *args))[0]
    return {
        period: {
            "period_id": period_id,
            **{metric: int(row[f"{period}_{metric}"] or 0) for metric in _METRICS},
        }
        for period, (period_id, _) in starts.items()
    }


_METRICS = ("cost_nanos", "tokens", "calls")
