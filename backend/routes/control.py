"""Ingest, the control channel (kill, resume, SSE stream, long-poll), budgets and alerts."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotAuthorizedException, NotFoundException
from litestar.params import JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from piccolo.columns import Column

from backend import db
from backend.admission import plan_refused
from backend.agent_state import (
    ORG_WIDE,
    budget_json,
    bump_versions,
    control_states,
    find_agent,
    publish_change,
    raise_to_org_version,
)
from backend.alert_worker import AlertWorker
from backend.auth import KeyPrincipal, UserPrincipal, key_is_active, require_admin
from backend.channel_config import masked_target
from backend.control import KEY_REVOKED, ControlHub
from backend.deps import KEY, USER, AgentNamePath, ObjectId
from backend.ingest import BatchError, PlanLimitExceeded, decode_batch, store_batch
from backend.settings import Settings
from backend.tables import Agent, AlertChannel, AlertEvent, AlertRule, Budget
from kavach._money import NANOS_PER_DOLLAR, fmt_usd, to_nanos
from kavach.alerts.channels.base import check_url
from kavach.alerts.channels.email import check_address
from kavach.errors import KavachConfigError

_I64 = 2**63 - 1
Kind = Literal["usd", "tokens", "calls"]
Period = Literal["daily", "weekly", "monthly", "total"]
AgentName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


def _hub(request: Request[Any, Any, Any]) -> ControlHub:
    hub: ControlHub = request.app.state.hub
    return hub


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _alerts(request: Request[Any, Any, Any]) -> AlertWorker:
    worker: AlertWorker = request.app.state.ops.worker
    return worker


_MAX_WATCHED = 1000


def _agent_list(agents: str | None) -> list[str] | None:
    if agents is None or not agents.strip():
        return None
    names = sorted({a.strip() for a in agents.split(",") if a.strip()})
    if len(names) > _MAX_WATCHED:
        # Dropping the rest would leave those agents deaf to a stop.
        raise ClientException(
            f"agents= lists {len(names)} agents; at most {_MAX_WATCHED} per request: split them "
            "over several, or leave agents out to follow every agent of the organization"
        )
    return names


class HTTPStatusError(ClientException):
    def __init__(self, detail: str, status_code: int) -> None:
        super().__init__(detail=detail, status_code=status_code)


# ---------------------------------------------------------------- ingest


@post(
    "/v1/ingest",
    status_code=202,
    dependencies=KEY,
    tags=["sdk"],
    exception_handlers={PlanLimitExceeded: plan_refused},
)
async def ingest(
    request: Request[Any, Any, Any], key: NamedDependency[KeyPrincipal]
) -> dict[str, Any]:
    """Store a batch of SDK events (JSON, optionally gzip); answer with the agents' control state.

    Replaying a batch is safe: events are de-duplicated by their ``id``.
    """
    settings = _settings(request)
    body = await request.body()
    try:
        batch = decode_batch(
            body,
            content_encoding=request.headers.get("content-encoding", ""),
            max_decoded_bytes=settings.max_body_bytes * 8,
            max_events=settings.max_events_per_batch,
        )
    except BatchError as exc:
        raise HTTPStatusError(str(exc), exc.status) from None
    # The plan the admission check found (none when billing is off).
    stored = await store_batch(key.org_id, batch, request.state.get("ingest_plan"))
    return {
        "accepted": stored.accepted,
        "duplicates": stored.duplicates,
        "control": stored.control,
    }


# ---------------------------------------------------------------- kill / resume


class KillBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = "stopped from the dashboard"


async def _set_status(
    request: Request[Any, Any, Any],
    user: UserPrincipal,
    name: str,
    stop: bool,
    reason: str | None,
) -> dict[str, Any]:
    require_admin(user)
    agent = await find_agent(user.org_id, name)
    kind = "kill" if stop else "resume"
    async with db.transaction():
        await Agent.update(
            {
                Agent.status: "stopped" if stop else "running",
                Agent.kill_reason: reason if stop else None,
                Agent.control_version: Agent.control_version + 1,
            }
        ).where(Agent.id == agent["id"])
        await raise_to_org_version(user.org_id, [agent["id"]])
        message = f"{user.email} {'stopped' if stop else 'resumed'} agent {name}"
        await AlertEvent.insert(
            AlertEvent(
                org=user.org_id,
                agent=agent["id"],
                kind=kind,
                message=message + (f": {reason}" if stop and reason else ""),
                actor=user.user_id,
                details=json.dumps({"reason": reason}),
            )
        )
    await publish_change(_hub(request), user.org_id, kind, [name])
    if not stop:
        await _alerts(request).resolve_resumed(user.org_id, agent["id"])
    state = (await control_states(user.org_id, [name]))[name]
    return {"agent": name, **state}


@post("/v1/agents/{name:str}/kill", status_code=200, dependencies=USER, tags=["control"])
async def kill_agent(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    name: AgentNamePath,
    data: JSONBody[KillBody | None] = None,
) -> dict[str, Any]:
    """Stop an agent: every SDK process of it refuses calls once it hears (within a second)."""
    reason = (data.reason if data else None) or "stopped from the dashboard"
    return await _set_status(request, user, name, True, reason)


@post("/v1/agents/{name:str}/resume", status_code=200, dependencies=USER, tags=["control"])
async def resume_agent(
    request: Request[Any, Any, Any], user: NamedDependency[UserPrincipal], name: AgentNamePath
) -> dict[str, Any]:
    return await _set_status(request, user, name, False, None)


# ---------------------------------------------------------------- control channel


def _concerns(message: dict[str, Any], names: list[str] | None) -> bool:
    """Whether a hub message is an agent change for a subscriber watching ``names``."""
    return "agent" in message and (names is None or message["agent"] in names)


def _org_wide(message: dict[str, Any]) -> bool:
    """An org-wide change (a budget of the whole org): it concerns every subscriber, whose
    agents may not be in the database yet, so each reads its agents' state."""
    return message.get("scope") == ORG_WIDE


def _revokes(message: dict[str, Any], key: KeyPrincipal) -> bool:
    return message.get("type") == KEY_REVOKED and message.get("key") == key.key_id


def _initial(name: str, state: dict[str, Any]) -> dict[str, Any]:
    kind = "kill" if state["status"] == "stopped" else "resume"
    return {"type": kind, "agent": name, "initial": True, **state}


@get("/v1/control/stream", dependencies=KEY, tags=["sdk"])
async def control_stream(
    request: Request[Any, Any, Any],
    key: NamedDependency[KeyPrincipal],
    agents: Annotated[str | None, QueryParameter(max_length=20_000)] = None,
) -> ServerSentEvent:
    """Server-sent events: the current state of each agent on connect, then every change
    (``{"type": "kill"|"resume"|"budget", "agent", "status", "reason", "version",
    "budgets"}``), with keepalive comments in between. No ``agents``: all of the org's.

    The stream ends when its key is revoked: at once through the hub, and in any case by
    the next keepalive, when the key is checked again."""
    names = _agent_list(agents)
    hub = _hub(request)
    keepalive = _settings(request).keepalive_seconds

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        # Subscribe before reading the state, so a change in between is not lost.
        async with hub.subscribe(key.org_id) as queue:
            states = await control_states(key.org_id, names)
            for name, state in states.items():
                yield ServerSentEventMessage(data=json.dumps(_initial(name, state), default=str))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=keepalive)
                except TimeoutError:
                    if not await key_is_active(key.key_id):
                        return
                    yield ServerSentEventMessage(comment="keepalive", data=None)
                    continue
                if _revokes(message, key):
                    return
                if _org_wide(message):
                    states = await control_states(key.org_id, names)
                    for name, state in states.items():
                        change = {"type": message["type"], "agent": name, **state}
                        yield ServerSentEventMessage(data=json.dumps(change, default=str))
                elif _concerns(message, names):
                    yield ServerSentEventMessage(data=json.dumps(message, default=str))

    return ServerSentEvent(messages(), headers={"Cache-Control": "no-store"})


@get("/v1/control", dependencies=KEY, tags=["sdk"])
async def control_poll(
    request: Request[Any, Any, Any],
    key: NamedDependency[KeyPrincipal],
    agents: Annotated[str | None, QueryParameter(max_length=20_000)] = None,
    since: Annotated[int | None, QueryParameter(ge=-1, le=_I64)] = None,
    wait: Annotated[float, QueryParameter(ge=0, le=300)] = 25.0,
) -> dict[str, Any]:
    """Long-poll: answers at once if an agent's version is above ``since``, else when one
    changes, else after ``wait`` seconds (capped), with ``{"control": ..., "version"}``."""
    names = _agent_list(agents)
    hub = _hub(request)
    wait = min(wait, _settings(request).long_poll_max_seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with hub.subscribe(key.org_id) as queue:
        states = await control_states(key.org_id, names)
        version = max((s["version"] for s in states.values()), default=0)
        if since is None or version > since:
            return {"control": states, "version": version, "changed": True}
        while (remaining := deadline - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(queue.get(), timeout=remaining)
            except TimeoutError:
                break
            if _revokes(message, key):
                raise NotAuthorizedException("invalid or revoked API key")
            if _org_wide(message) or _concerns(message, names):
                states = await control_states(key.org_id, names)
                version = max((s["version"] for s in states.values()), default=0)
                return {"control": states, "version": version, "changed": True}
    return {"control": states, "version": version, "changed": False}


# ---------------------------------------------------------------- budgets


class BudgetBody(msgspec.Struct, forbid_unknown_fields=True):
    kind: Kind
    period: Period
    limit: Annotated[int, msgspec.Meta(ge=0, le=_I64)] | None = None
    limit_usd: Annotated[str, msgspec.Meta(max_length=32)] | float | None = None


class BudgetPatch(msgspec.Struct, forbid_unknown_fields=True):
    kind: Kind | None = None
    period: Period | None = None
    limit: Annotated[int, msgspec.Meta(ge=0, le=_I64)] | None = None
    limit_usd: Annotated[str, msgspec.Meta(max_length=32)] | float | None = None


# The largest dollar amount whose nano-dollars fit the BIGINT column.
_MAX_USD = Decimal(_I64) / NANOS_PER_DOLLAR


def _limit(kind: str, limit: int | None, limit_usd: str | float | None) -> int:
    if limit_usd is not None:
        if kind != "usd":
            raise ClientException("limit_usd only applies to usd budgets; use limit")
        # 0 is a limit, as for the SDK's Budget (it refuses every call); a negative amount is
        # not, and is checked before rounding up to nano-dollars could turn it into 0.
        wanted = (
            f'limit_usd must be a dollar amount from 0 to {_MAX_USD:,.2f} such as "25" or '
            f'"0.50" (got {limit_usd!r})'
        )
        try:
            dollars = Decimal(str(limit_usd))
            if not dollars.is_finite() or not 0 <= dollars <= _MAX_USD:
                raise ClientException(wanted)
            nanos = to_nanos(dollars)
        except ArithmeticError:  # decimal's InvalidOperation and Overflow
            raise ClientException(wanted) from None
        if nanos > _I64:
            raise ClientException(wanted)
        return nanos
    if limit is None:
        raise ClientException("give limit (nano-dollars for usd, a count otherwise) or limit_usd")
    return limit


async def _agent_names(org_id: int) -> dict[int, str]:
    rows = await Agent.select(Agent.id, Agent.name).where(Agent.org == org_id)
    return {r["id"]: r["name"] for r in rows}


async def _budget_changed(
    request: Request[Any, Any, Any], org_id: int, agent_id: int | None
) -> None:
    """Bump the version of every agent the budget applies to (for an org-wide budget, those
    not seen yet too) and tell their SDKs."""
    async with db.transaction():
        await bump_versions(org_id, agent_id)
    names = None
    if agent_id is not None:
        names = [(await _agent_names(org_id))[agent_id]]
    await publish_change(_hub(request), org_id, "budget", names)


async def _create_budget(
    request: Request[Any, Any, Any],
    user: UserPrincipal,
    agent_id: int | None,
    data: JSONBody[BudgetBody],
) -> dict[str, Any]:
    require_admin(user)
    limit = _limit(data.kind, data.limit, data.limit_usd)
    budget = Budget(
        org=user.org_id, agent=agent_id, kind=data.kind, period=data.period, limit_value=limit
    )
    await budget.save()
    await _budget_changed(request, user.org_id, agent_id)
    row = await Budget.select().where(Budget.id == budget.id).first()
    assert row is not None
    return budget_json(row, await _agent_names(user.org_id))


async def _own_budget(org_id: int, budget_id: int) -> dict[str, Any]:
    row = await Budget.select().where((Budget.id == budget_id) & (Budget.org == org_id)).first()
    if row is None:
        raise NotFoundException("no such budget")
    return row


@get("/v1/budgets", dependencies=USER, tags=["budgets"])
async def list_budgets(user: NamedDependency[UserPrincipal]) -> list[dict[str, Any]]:
    """Every budget of the organization, org-wide and per agent."""
    rows = await Budget.select().where(Budget.org == user.org_id).order_by(Budget.id)
    names = await _agent_names(user.org_id)
    return [budget_json(r, names) for r in rows]


@post("/v1/budgets", status_code=201, dependencies=USER, tags=["budgets"])
async def create_org_budget(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    data: JSONBody[BudgetBody],
) -> dict[str, Any]:
    """An org-wide budget: it applies to every agent of the organization."""
    return await _create_budget(request, user, None, data)


@get("/v1/agents/{name:str}/budgets", dependencies=USER, tags=["budgets"])
async def list_agent_budgets(
    user: NamedDependency[UserPrincipal], name: AgentNamePath
) -> list[dict[str, Any]]:
    agent = await find_agent(user.org_id, name)
    rows = (
        await Budget.select()
        .where((Budget.org == user.org_id) & (Budget.agent == agent["id"]))
        .order_by(Budget.id)
    )
    return [budget_json(r, {agent["id"]: name}) for r in rows]


@post("/v1/agents/{name:str}/budgets", status_code=201, dependencies=USER, tags=["budgets"])
async def create_agent_budget(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    name: AgentNamePath,
    data: JSONBody[BudgetBody],
) -> dict[str, Any]:
    agent = await find_agent(user.org_id, name)
    return await _create_budget(request, user, agent["id"], data)


@get("/v1/budgets/{budget_id:int}", dependencies=USER, tags=["budgets"])
async def get_budget(user: NamedDependency[UserPrincipal], budget_id: ObjectId) -> dict[str, Any]:
    row = await _own_budget(user.org_id, budget_id)
    return budget_json(row, await _agent_names(user.org_id))


@patch("/v1/budgets/{budget_id:int}", dependencies=USER, tags=["budgets"])
async def update_budget(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    budget_id: ObjectId,
    data: JSONBody[BudgetPatch],
) -> dict[str, Any]:
    require_admin(user)
    row = await _own_budget(user.org_id, budget_id)
    kind = data.kind or row["kind"]
    changes: dict[Any, Any] = {
        Budget.kind: kind,
        Budget.period: data.period or row["period"],
        Budget.updated_at: datetime.datetime.now(datetime.UTC),
    }
    if data.limit is not None or data.limit_usd is not None:
        changes[Budget.limit_value] = _limit(kind, data.limit, data.limit_usd)
    elif kind != row["kind"]:
        # The limit is in the kind's unit: $10 would silently become 10,000,000,000 tokens.
        raise ClientException(
            f"changing kind from {row['kind']} to {kind} needs a new limit in that unit: "
            "give limit (a count for tokens and calls, nano-dollars for usd) or limit_usd"
        )
    await Budget.update(changes).where(Budget.id == budget_id)
    await _budget_changed(request, user.org_id, row["agent"])
    updated = await _own_budget(user.org_id, budget_id)
    return budget_json(updated, await _agent_names(user.org_id))


@delete("/v1/budgets/{budget_id:int}", status_code=204, dependencies=USER, tags=["budgets"])
async def delete_budget(
    request: Request[Any, Any, Any], user: NamedDependency[UserPrincipal], budget_id: ObjectId
) -> None:
    require_admin(user)
    row = await _own_budget(user.org_id, budget_id)
    await Budget.delete().where(Budget.id == budget_id)
    await _budget_changed(request, user.org_id, row["agent"])
    await _alerts(request).resolve_budget(user.org_id, budget_id)


# ---------------------------------------------------------------- alert rules and history


class AlertRuleBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    kind: Kind
    period: Period
    threshold: Annotated[int, msgspec.Meta(ge=0, le=_I64)]
    channel: Literal["email", "slack", "webhook"]
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    agent: AgentName | None = None
    enabled: bool = True


class AlertRulePatch(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    kind: Kind | None = None
    period: Period | None = None
    threshold: Annotated[int, msgspec.Meta(ge=0, le=_I64)] | None = None
    channel: Literal["email", "slack", "webhook"] | None = None
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
    enabled: bool | None = None


def _rule_json(row: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    body = {
        "id": row["id"],
        "name": row["name"],
        "agent": None if row["agent"] is None else names.get(row["agent"]),
        "kind": row["kind"],
        "period": row["period"],
        "threshold": row["threshold"],
        "channel": row["channel"],
        # Slack and webhook URLs carry their token: every member sees this, viewers too.
        "target": masked_target(row["target"]),
        "enabled": row["enabled"],
        "created_at": row["created_at"],
    }
    if row["kind"] == "usd":
        body["threshold_usd"] = fmt_usd(row["threshold"])
    return body


async def _check_target(org_id: int, channel: str, target: str) -> None:
    """A rule's target is the name of one of the org's channels or, checked as delivery
    will use it, an address for its channel: an https URL for slack and webhook (http only
    to a loopback address), an e-mail address for email. A bad one fails here, not when
    the alert fires."""
    named = await AlertChannel.exists().where(
        (AlertChannel.org == org_id) & (AlertChannel.name == target)
    )
    if named:
        return
    try:
        if channel == "email":
            check_address(target, "target")
        else:
            check_url(target, "target")
    except KavachConfigError as exc:
        # Not repeated: a URL may carry a token (Slack hooks do).
        raise ClientException(f"{exc}; or give the name of a channel from /v1/channels") from None


async def _own_rule(org_id: int, rule_id: int) -> dict[str, Any]:
    row = (
        await AlertRule.select()
        .where((AlertRule.id == rule_id) & (AlertRule.org == org_id))
        .first()
    )
    if row is None:
        raise NotFoundException("no such alert rule")
    return row


@get("/v1/alert-rules", dependencies=USER, tags=["alerts"])
async def list_alert_rules(user: NamedDependency[UserPrincipal]) -> list[dict[str, Any]]:
    rows = await AlertRule.select().where(AlertRule.org == user.org_id).order_by(AlertRule.id)
    names = await _agent_names(user.org_id)
    return [_rule_json(r, names) for r in rows]


@post("/v1/alert-rules", status_code=201, dependencies=USER, tags=["alerts"])
async def create_alert_rule(
    user: NamedDependency[UserPrincipal], data: JSONBody[AlertRuleBody]
) -> dict[str, Any]:
    require_admin(user)
    agent_id = None
    if data.agent is not None:
        agent_id = (await find_agent(user.org_id, data.agent))["id"]
    await _check_target(user.org_id, data.channel, data.target)
    rule = AlertRule(
        org=user.org_id,
        agent=agent_id,
        name=data.name,
        kind=data.kind,
        period=data.period,
        threshold=data.threshold,
        channel=data.channel,
        target=data.target,
        enabled=data.enabled,
    )
    await rule.save()
    return _rule_json(await _own_rule(user.org_id, rule.id), await _agent_names(user.org_id))


@get("/v1/alert-rules/{rule_id:int}", dependencies=USER, tags=["alerts"])
async def get_alert_rule(user: NamedDependency[UserPrincipal], rule_id: ObjectId) -> dict[str, Any]:
    return _rule_json(await _own_rule(user.org_id, rule_id), await _agent_names(user.org_id))


@patch("/v1/alert-rules/{rule_id:int}", dependencies=USER, tags=["alerts"])
async def update_alert_rule(
    user: NamedDependency[UserPrincipal], rule_id: ObjectId, data: JSONBody[AlertRulePatch]
) -> dict[str, Any]:
    require_admin(user)
    row = await _own_rule(user.org_id, rule_id)
    if data.target is not None and data.target == masked_target(row["target"]):
        # The masked target as the API showed it, sent back unchanged: keep the stored one.
        data.target = None
    if data.channel is not None or data.target is not None:
        await _check_target(
            user.org_id, data.channel or row["channel"], data.target or row["target"]
        )
    fields = {
        AlertRule.name: data.name,
        AlertRule.kind: data.kind,
        AlertRule.period: data.period,
        AlertRule.threshold: data.threshold,
        AlertRule.channel: data.channel,
        AlertRule.target: data.target,
        AlertRule.enabled: data.enabled,
    }
    changes: dict[Column | str, Any] = {
        column: value for column, value in fields.items() if value is not None
    }
    if changes:
        await AlertRule.update(changes).where(AlertRule.id == rule_id)
    return _rule_json(await _own_rule(user.org_id, rule_id), await _agent_names(user.org_id))


@delete("/v1/alert-rules/{rule_id:int}", status_code=204, dependencies=USER, tags=["alerts"])
async def delete_alert_rule(user: NamedDependency[UserPrincipal], rule_id: ObjectId) -> None:
    require_admin(user)
    await _own_rule(user.org_id, rule_id)
    await AlertRule.delete().where(AlertRule.id == rule_id)


@get("/v1/alerts", dependencies=USER, tags=["alerts"])
async def alert_history(
    user: NamedDependency[UserPrincipal],
    agent: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Alert history, newest first: kills, resumes, thresholds."""
    query = AlertEvent.select().where(AlertEvent.org == user.org_id)
    if agent is not None:
        query = query.where(AlertEvent.agent == (await find_agent(user.org_id, agent))["id"])
    rows = await query.order_by(AlertEvent.id, ascending=False).limit(limit)
    names = await _agent_names(user.org_id)
    return [
        {
            "id": r["id"],
            "kind": r["kind"],
            "agent": None if r["agent"] is None else names.get(r["agent"]),
            "message": r["message"],
            "actor": r["actor"],
            "details": json.loads(r["details"]) if isinstance(r["details"], str) else r["details"],
            "created_at": r["created_at"],
        }
        for r in rows
    ]


ROUTES = [
    ingest,
    kill_agent,
    resume_agent,
    control_stream,
    control_poll,
    list_budgets,
    create_org_budget,
    list_agent_budgets,
    create_agent_budget,
    get_budget,
    update_budget,
    delete_budget,
    list_alert_rules,
    create_alert_rule,
    get_alert_rule,
    update_alert_rule,
    delete_alert_rule,
    alert_history,
]
