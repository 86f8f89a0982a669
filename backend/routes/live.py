"""The dashboard's live feed: agents' status and spend as server-sent events.

``GET /v1/live`` is authenticated like every dashboard read (session cookie or bearer).
It sends a ``snapshot`` on connect and again whenever something a person would see
changes: an agent stopped or resumed, a budget edited (woken at once by the control
hub), or spend moved (ingest does not publish, so the rollups are read every
``poll_seconds``; one indexed aggregate per connected dashboard). The session is checked
again on every poll: the feed ends once it is logged out, the password changes or the
user leaves the organization.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.response import ServerSentEvent, ServerSentEventMessage

from backend.auth import UserPrincipal, session_is_current
from backend.control import ControlHub
from backend.deps import USER
from backend.spend import utc_now
from backend.tables import Agent

__all__ = ["ROUTES", "live_snapshot"]

POLL_SECONDS = 1.0


async def live_snapshot(org_id: int) -> dict[str, Any]:
    """Status and today's and this month's spend of every agent of the organization."""
    today = utc_now().date()
    month_start = today.replace(day=1)
    agents = (
        await Agent.select(
            Agent.id, Agent.name, Agent.status, Agent.kill_reason, Agent.last_seen_at
        )
        .where(Agent.org == org_id)
        .order_by(Agent.name)
    )
    rows = await Agent.raw(
        "SELECT agent, "
        "CAST(COALESCE(SUM(CASE WHEN day = {} THEN cost_nanos ELSE 0 END), 0) AS BIGINT) AS today, "
        "CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS month, "
        "CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS calls, "
        "CAST(COALESCE(SUM(refusals), 0) AS BIGINT) AS refusals "
        "FROM spend_daily WHERE org = {} AND day >= {} GROUP BY agent",
        today,
        org_id,
        month_start,
    )
    spend = {r["agent"]: r for r in rows}
    body: list[dict[str, Any]] = []
    for agent in agents:
        row = spend.get(agent["id"], {})
        body.append(
            {
                "name": agent["name"],
                "status": agent["status"],
                "reason": agent["kill_reason"],
                "last_seen_at": str(agent["last_seen_at"]) if agent["last_seen_at"] else None,
                "spend_today_nanos": int(row.get("today") or 0),
                "spend_month_nanos": int(row.get("month") or 0),
                "calls_month": int(row.get("calls") or 0),
                "refusals_month": int(row.get("refusals") or 0),
            }
        )
    return {
        "type": "snapshot",
        "today_nanos": sum(a["spend_today_nanos"] for a in body),
        "month_nanos": sum(a["spend_month_nanos"] for a in body),
        "agents": body,
    }


@get("/v1/live", dependencies=USER, tags=["dashboard"])
async def live(
    request: Request[Any, Any, Any], user: NamedDependency[UserPrincipal]
) -> ServerSentEvent:
    """Server-sent ``snapshot`` events for the dashboard (see the module docstring)."""
    hub: ControlHub = request.app.state.hub
    keepalive: float = request.app.state.settings.keepalive_seconds
    org_id = user.org_id

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        async with hub.subscribe(org_id) as queue:
            last: str | None = None
            idle = 0.0
            while True:
                if not await session_is_current(request):
                    return
                data = json.dumps(await live_snapshot(org_id), sort_keys=True)
                if data != last:
                    last, idle = data, 0.0
                    yield ServerSentEventMessage(data=data, event="snapshot")
                elif idle >= keepalive:
                    idle = 0.0
                    yield ServerSentEventMessage(comment="keepalive", data=None)
                try:
                    await asyncio.wait_for(queue.get(), timeout=POLL_SECONDS)
                except TimeoutError:
                    idle += POLL_SECONDS

    return ServerSentEvent(messages(), headers={"Cache-Control": "no-store"})


ROUTES = [live]
