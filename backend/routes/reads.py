"""Read APIs: status, agents, runs, events, spend, dashboard, pricing."""

from __future__ import annotations

import calendar
import datetime
import json
from typing import Annotated, Any, Literal

from litestar import get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import QueryParameter

import kavach
from backend import db
from backend.agent_state import control_states, find_agent
from backend.auth import Principal, UserPrincipal
from backend.deps import ANY, USER, AgentNamePath, ObjectId
from backend.pricing import search_prices
from backend.spend import agent_spend, utc_now
from backend.tables import Agent, Event, Run
from kavach._money import fmt_usd


def _money(nanos: int) -> dict[str, Any]:
    return {"cost_nanos": nanos, "cost_usd": fmt_usd(nanos)}


def _as_datetime(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    parsed = datetime.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _as_date(value: Any) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    return datetime.date.fromisoformat(str(value)[:10])


def _int(value: Any) -> int:
    return int(value or 0)


@get("/v1/status", tags=["meta"])
async def status() -> dict[str, Any]:
    """Public: the version and whether the database answers."""
    try:
        await Agent.raw("SELECT 1")
        database = "ok"
    except Exception:  # noqa: BLE001 - reported, not raised: this is the health check
        database = "unavailable"
    return {
        "service": "agentkavach",
        "version": kavach.__version__,
        "database": database,
        "database_kind": db.current_engine().engine_type,
    }


async def _spend_by_agent(org_id: int, since: datetime.date) -> dict[int, int]:
    rows = await Agent.raw(
        "SELECT agent, CAST(SUM(cost_nanos) AS BIGINT) AS cost FROM spend_daily "
        "WHERE org = {} AND day >= {} GROUP BY agent",
        org_id,
        since,
    )
    return {r["agent"]: _int(r["cost"]) for r in rows}


def _agent_json(row: dict[str, Any], today: int, month: int) -> dict[str, Any]:
    return {
        "name": row["name"],
        "status": row["status"],
        "kill_reason": row["kill_reason"],
        "control_version": row["control_version"],
        "created_at": row["created_at"],
        "last_seen_at": row["last_seen_at"],
        "spend_today": _money(today),
        "spend_month": _money(month),
    }


@get("/v1/agents", dependencies=USER, tags=["agents"])
async def list_agents(user: NamedDependency[UserPrincipal]) -> list[dict[str, Any]]:
    today = utc_now().date()
    rows = await Agent.select().where(Agent.org == user.org_id).order_by(Agent.name)
    day = await _spend_by_agent(user.org_id, today)
    month = await _spend_by_agent(user.org_id, today.replace(day=1))
    return [_agent_json(r, day.get(r["id"], 0), month.get(r["id"], 0)) for r in rows]


@get("/v1/agents/{name:str}", dependencies=USER, tags=["agents"])
async def get_agent(user: NamedDependency[UserPrincipal], name: AgentNamePath) -> dict[str, Any]:
    """An agent with its status, today's and this month's spend, and its budgets."""
    row = await find_agent(user.org_id, name)
    spend = await agent_spend(user.org_id, row["id"], utc_now().date())
    state = (await control_states(user.org_id, [name]))[name]
    body = _agent_json(row, spend["daily"]["cost_nanos"], spend["monthly"]["cost_nanos"])
    body["budgets"] = state["budgets"]
    body["spend"] = spend
    return body


@get("/v1/agents/{name:str}/spend", dependencies=ANY, tags=["sdk"])
async def get_agent_spend(
    principal: NamedDependency[Principal], name: AgentNamePath
) -> dict[str, Any]:
    """Spend of the agent's current UTC day, ISO week, month and all time, to seed an SDK's
    ledger after a restart. An agent never seen has spent nothing."""
    try:
        agent_id: int | None = (await find_agent(principal.org_id, name))["id"]
    except NotFoundException:
        if principal.is_key:
            agent_id = None
        else:
            raise
    today = utc_now().date()
    if agent_id is None:
        spend = {
            period: {"period_id": value["period_id"], "cost_nanos": 0, "tokens": 0, "calls": 0}
            for period, value in (await agent_spend(principal.org_id, -1, today)).items()
        }
    else:
        spend = await agent_spend(principal.org_id, agent_id, today)
    return {"agent": name, **spend}


def _run_json(row: dict[str, Any], agent_name: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "agent": agent_name,
        "run_id": row["run_key"],
        "started_at": row["started_at"],
        "last_event_at": row["last_event_at"],
        "calls": row["calls"],
        **_money(row["cost_nanos"]),
    }


@get("/v1/agents/{name:str}/runs", dependencies=USER, tags=["agents"])
async def list_agent_runs(
    user: NamedDependency[UserPrincipal],
    name: AgentNamePath,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    agent = await find_agent(user.org_id, name)
    rows = (
        await Run.select()
        .where((Run.org == user.org_id) & (Run.agent == agent["id"]))
        .order_by(Run.last_event_at, ascending=False)
        .limit(limit)
    )
    return [_run_json(r, name) for r in rows]


async def _own_run(org_id: int, run_id: int) -> dict[str, Any]:
    row = (
        await Run.select(*Run.all_columns(), Run.agent.name)
        .where((Run.id == run_id) & (Run.org == org_id))
        .first()
    )
    if row is None:
        raise NotFoundException("no such run")
    return row


async def _run_event_totals(org_id: int, run_id: int) -> dict[str, int]:
    """Totals over every stored event of a run, however many the timeline has loaded."""
    rows = await Event.raw(
        "SELECT COUNT(*) AS events, "
        "CAST(COALESCE(SUM(CASE WHEN status = 'refused' THEN 1 ELSE 0 END), 0) AS BIGINT) "
        "AS refused, CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, "
        "CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, "
        "CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS cost_nanos "
        "FROM events WHERE org = {} AND run = {}",
        org_id,
        run_id,
    )
    return {name: int(value) for name, value in rows[0].items()}


@get("/v1/runs/{run_id:int}", dependencies=USER, tags=["agents"])
async def get_run(user: NamedDependency[UserPrincipal], run_id: ObjectId) -> dict[str, Any]:
    """A run with ``totals`` over all its stored events (``events``, ``refused``,
    ``input_tokens``, ``output_tokens``, ``cost_nanos``)."""
    async with db.read_transaction():
        row = await _own_run(user.org_id, run_id)
        totals = await _run_event_totals(user.org_id, run_id)
    return {**_run_json(row, row["agent.name"]), "totals": totals}


def _event_json(row: dict[str, Any], agent_name: str) -> dict[str, Any]:
    details = row["details"]
    if isinstance(details, str):
        details = json.loads(details)
    return {
        "id": row["idempotency_key"],
        "agent": agent_name,
        "run": row["run"],
        "provider": row["provider"],
        "model": row["model"],
        "operation": row["operation"],
        "status": row["status"],
        "refusal_reason": row["refusal_reason"],
        "error": row["error"],
        "started_at": row["started_at"],
        "duration_ms": row["duration_ms"],
        **_money(row["cost_nanos"]),
        "reserved_nanos": row["reserved_nanos"],
        "usage": {
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cache_read_tokens": row["cache_read_tokens"],
            "cache_write_tokens": row["cache_write_tokens"],
            "reasoning_tokens": row["reasoning_tokens"],
        },
        "prompt": row["prompt"],
        "details": details,
    }


@get("/v1/runs/{run_id:int}/events", dependencies=USER, tags=["agents"])
async def list_run_events(
    user: NamedDependency[UserPrincipal],
    run_id: ObjectId,
    limit: Annotated[int, QueryParameter(ge=1, le=5000)] = 500,
    offset: Annotated[int, QueryParameter(ge=0, le=2**31 - 1)] = 0,
    order: Annotated[Literal["oldest", "newest"], QueryParameter()] = "oldest",
) -> list[dict[str, Any]]:
    """A page of the run's calls, oldest first, or newest first (where a runaway loop
    ends); ``offset`` skips that many in that order. ``GET /v1/runs/{id}`` counts them all."""
    run = await _own_run(user.org_id, run_id)
    ascending = order == "oldest"
    rows = (
        await Event.select()
        .where((Event.org == user.org_id) & (Event.run == run_id))
        .order_by(Event.started_at, Event.id, ascending=ascending)
        .limit(limit)
        .offset(offset)
    )
    return [_event_json(r, run["agent.name"]) for r in rows]


@get("/v1/events", dependencies=USER, tags=["agents"])
async def list_events(
    user: NamedDependency[UserPrincipal],
    agent: Annotated[str | None, QueryParameter(max_length=200)] = None,
    status: Annotated[str | None, QueryParameter(max_length=16)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The latest events, newest first."""
    query = Event.select(*Event.all_columns(), Event.agent.name).where(Event.org == user.org_id)
    if agent is not None:
        query = query.where(Event.agent == (await find_agent(user.org_id, agent))["id"])
    if status is not None:
        query = query.where(Event.status == status)
    rows = await query.order_by(Event.started_at, ascending=False).limit(limit)
    return [_event_json(r, r["agent.name"]) for r in rows]


@get("/v1/dashboard/overview", dependencies=USER, tags=["dashboard"])
async def overview(user: NamedDependency[UserPrincipal]) -> dict[str, Any]:
    """Spend today and this month, the projection to month end, top agents and models,
    refusals by reason (this month, UTC)."""
    now = utc_now()
    today = now.date()
    month_start = today.replace(day=1)
    month_begin = datetime.datetime.combine(month_start, datetime.time(), datetime.UTC)
    org = user.org_id
    async with db.read_transaction():
        totals = (
            await Agent.raw(
                "SELECT CAST(COALESCE(SUM(CASE WHEN day = {} THEN cost_nanos ELSE 0 END), 0) "
                "AS BIGINT) AS today, CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS month, "
                "CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS calls, "
                "CAST(COALESCE(SUM(tokens), 0) AS BIGINT) AS tokens, "
                "CAST(COALESCE(SUM(refusals), 0) AS BIGINT) AS refusals "
                "FROM spend_daily WHERE org = {} AND day >= {}",
                today,
                org,
                month_start,
            )
        )[0]
        top_agents = await Agent.raw(
            "SELECT a.name AS name, CAST(SUM(s.cost_nanos) AS BIGINT) AS cost, "
            "CAST(SUM(s.calls) AS BIGINT) AS calls FROM spend_daily s "
            "JOIN agents a ON a.id = s.agent WHERE s.org = {} AND s.day >= {} "
            "GROUP BY a.name ORDER BY cost DESC, a.name LIMIT 10",
            org,
            month_start,
        )
        top_models = await Agent.raw(
            "SELECT model, CAST(SUM(cost_nanos) AS BIGINT) AS cost, CAST(SUM(calls) AS BIGINT) "
            "AS calls FROM spend_daily WHERE org = {} AND day >= {} "
            "GROUP BY model ORDER BY cost DESC, model LIMIT 10",
            org,
            month_start,
        )
        refusals = await Agent.raw(
            "SELECT COALESCE(refusal_reason, 'unknown') AS reason, COUNT(*) AS n FROM events "
            "WHERE org = {} AND status = 'refused' AND started_at >= {} "
            "GROUP BY COALESCE(refusal_reason, 'unknown') ORDER BY n DESC",
            org,
            month_begin,
        )
    month_nanos = _int(totals["month"])
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    elapsed = max((now - month_begin).total_seconds(), 3600.0)  # no wild guesses in hour one
    projection = int(month_nanos * (days_in_month * 86400) / elapsed)
    return {
        "today": _money(_int(totals["today"])),
        "month": {
            **_money(month_nanos),
            "calls": _int(totals["calls"]),
            "tokens": _int(totals["tokens"]),
            "refusals": _int(totals["refusals"]),
        },
        "projection_month_end": _money(projection),
        "top_agents": [
            {"agent": r["name"], "calls": _int(r["calls"]), **_money(_int(r["cost"]))}
            for r in top_agents
        ],
        "top_models": [
            {"model": r["model"], "calls": _int(r["calls"]), **_money(_int(r["cost"]))}
            for r in top_models
        ],
        "refusals_by_reason": {r["reason"]: _int(r["n"]) for r in refusals},
    }


@get("/v1/dashboard/stats", dependencies=USER, tags=["dashboard"])
async def stats(
    user: NamedDependency[UserPrincipal],
    granularity: Annotated[str, QueryParameter(pattern="^(hour|day)$")] = "day",
    days: Annotated[int, QueryParameter(ge=1, le=366)] = 30,
) -> dict[str, Any]:
    """Spend over time by agent and by model, from the hourly or daily rollups."""
    now = utc_now()
    if granularity == "hour":
        table, column = "spend_hourly", "bucket"
        since: Any = (now - datetime.timedelta(days=days)).replace(
            minute=0, second=0, microsecond=0
        )
    else:
        table, column = "spend_daily", "day"
        since = now.date() - datetime.timedelta(days=days - 1)
    series: dict[str, list[dict[str, Any]]] = {}
    for dimension, select in (("by_agent", "a.name"), ("by_model", "s.model")):
        rows = await Agent.raw(
            f"SELECT s.{column} AS bucket, {select} AS label, "
            "CAST(SUM(s.cost_nanos) AS BIGINT) AS cost, CAST(SUM(s.calls) AS BIGINT) AS calls, "
            "CAST(SUM(s.tokens) AS BIGINT) AS tokens, "
            "CAST(SUM(s.refusals) AS BIGINT) AS refusals "
            f"FROM {table} s JOIN agents a ON a.id = s.agent "
            f"WHERE s.org = {{}} AND s.{column} >= {{}} "
            f"GROUP BY s.{column}, {select} ORDER BY s.{column}, {select}",
            user.org_id,
            since,
        )
        key = "agent" if dimension == "by_agent" else "model"
        series[dimension] = [
            {
                "bucket": (
                    _as_datetime(r["bucket"]).isoformat()
                    if granularity == "hour"
                    else _as_date(r["bucket"]).isoformat()
                ),
                key: r["label"],
                "calls": _int(r["calls"]),
                "tokens": _int(r["tokens"]),
                "refusals": _int(r["refusals"]),
                **_money(_int(r["cost"])),
            }
            for r in rows
        ]
    return {"granularity": granularity, "days": days, "since": str(since), **series}


@get("/v1/pricing", tags=["meta"])
async def pricing(
    q: Annotated[str | None, QueryParameter(max_length=200)] = None,
    provider: Annotated[str | None, QueryParameter(max_length=64)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=5000)] = 100,
) -> dict[str, Any]:
    """Public: model prices in USD per million tokens, from genai-prices."""
    models = search_prices(q, provider, limit)
    return {"source": "genai-prices", "unit": "USD per million tokens", "models": models}


ROUTES = [
    status,
    list_agents,
    get_agent,
    get_agent_spend,
    list_agent_runs,
    get_run,
    list_run_events,
    list_events,
    overview,
    stats,
    pricing,
]
