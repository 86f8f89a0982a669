"""Server-side alerts for budgets that span SDK processes: org budgets and agent budgets
shared by many processes, evaluated from ingested spend.

After accepted ingests (at most five rounds a second, and on an interval as a fallback)
the worker sums the org's spend per budget from the daily rollups. For each configured
channel it sends the highest threshold crossed once per budget, period, threshold and
channel: the replica whose ``INSERT ... ON CONFLICT DO NOTHING`` into
``alert_deliveries`` returns a row sends, every other replica finds the row and does
nothing. Delivery uses the SDK's own channel classes (``kavach.alerts``): their pure
``request``/``check`` with an httpx client here, or SMTP in a thread for e-mail.

At 100% of a budget the agents under it are stopped through the control channel, as a
Stop from the dashboard is: status ``stopped``, ``control_version`` bumped, the change
published to every SDK (through Redis to every replica's subscribers).

A PagerDuty trigger that PagerDuty accepts is remembered in ``pagerduty_incidents``; the
incident is resolved (``event_action: resolve``, same ``dedup_key``, same channel) when the
budget's period resets (seen by the next evaluation), when the agents it concerns are
resumed (``resolve_resumed``) and when its budget is deleted (``resolve_budget``). A
resolve is claimed and retried like a trigger, under the delivery key ``pd-resolve:<id>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx

from backend import db
from backend.agent_state import publish_change, raise_to_org_version
from backend.channel_config import build_channel
from backend.spend import agent_spend, period_starts, utc_now
from backend.tables import (
    Agent,
    AlertChannel,
    AlertDelivery,
    AlertEvent,
    AlertRule,
    Budget,
    Organization,
    PagerDutyIncident,
)
from kavach.alerts.alert import Alert, from_crossing
from kavach.alerts.channels import PagerDutyChannel
from kavach.alerts.channels.base import DeliveryError, HttpResponse
from kavach.alerts.secret import hide_in_logs, redact, show_in_logs
from kavach.events import ThresholdCrossing

if TYPE_CHECKING:
    from backend.ops import Operations

__all__ = ["AlertWorker"]

logger = logging.getLogger("agentkavach.backend.alerts")

_METRIC = {"usd": "cost_nanos", "tokens": "tokens", "calls": "calls"}
DEFAULT_THRESHOLDS = (0.5, 0.9, 1.0)
_ATTEMPTS = 3
_RESOLVE = "pd-resolve:"
# Rounds of evaluation start at most this often. Under steady ingest every batch wakes
# the worker, and evaluating an org after each of a hundred batches a second cost the
# ingest path a tenth of the server's time; the batches that arrive meanwhile are
# evaluated together in the next round, a fraction of a second later.
_ROUND_GAP = 0.2


def _resets_at(period: str, today: datetime.date) -> datetime.datetime | None:
    start = period_starts(today)[period][1]
    if start is None:
        return None
    if period == "daily":
        end = start + datetime.timedelta(days=1)
    elif period == "weekly":
        end = start + datetime.timedelta(days=7)
    else:
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    return datetime.datetime.combine(end, datetime.time(), datetime.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class _Incident:
    """What a PagerDuty trigger is about, recorded once PagerDuty accepts it."""

    budget: int
    agent: int | None
    period_id: str
    subject: str


class AlertWorker:
    def __init__(self, ops: Operations, clock: Callable[[], datetime.datetime] = utc_now) -> None:
        self.ops = ops
        self.clock = clock
        """What time the budgets are evaluated at (their periods); tests move it forward."""
        self._pending: set[int] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._hub: Any = None
        self._client: httpx.AsyncClient | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._stopping = False

    stop_timeout = 10.0
    """How long ``stop`` waits for a round in progress before cancelling it."""

    def queue_depth(self) -> int:
        return len(self._pending)

    def notify(self, org_id: int) -> None:
        self._pending.add(org_id)
        if self._wake is not None:
            self._wake.set()

    async def start(self, app: Any) -> None:
        self._hub = app.state.hub
        self._stopping = False
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        self._task = asyncio.create_task(self._run(), name="agentkavach-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True  # the round in progress finishes its queries
            if self._wake is not None:
                self._wake.set()
            await db.finish_or_cancel(self._task, self.stop_timeout)
            self._task = None
        if self._sends:
            await asyncio.wait(self._sends, timeout=5.0)
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        assert self._wake is not None
        interval = self.ops.settings.alert_interval
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            except TimeoutError:
                rows = await Budget.select(Budget.org).distinct()
                self._pending.update(r["org"] for r in rows)
                # Incidents whose budget is gone, and resolves waiting for a retry.
                rows = (
                    await PagerDutyIncident.select(PagerDutyIncident.org)
                    .distinct()
                    .where(PagerDutyIncident.resolved_at.is_null())
                )
                self._pending.update(r["org"] for r in rows)
                rows = (
                    await AlertDelivery.select(AlertDelivery.org)
                    .distinct()
                    .where(
                        (AlertDelivery.status == "retry")
                        & AlertDelivery.dedup_key.like(_RESOLVE + "%")
                    )
                )
                self._pending.update(r["org"] for r in rows)
            self._wake.clear()
            if self._stopping:
                return
            orgs, self._pending = self._pending, set()
            for org_id in orgs:
                if self._stopping:  # the next process's first round evaluates every budget
                    break
                try:
                    await self.evaluate(org_id)
                except Exception:  # noqa: BLE001 - alerts fail open; the next ingest retries
                    logger.warning("alerts: evaluating org %s failed", org_id, exc_info=True)
            await asyncio.sleep(_ROUND_GAP)

    # -- evaluation ------------------------------------------------------------------------

    async def evaluate(self, org_id: int) -> None:
        budgets = await Budget.select().where(Budget.org == org_id).order_by(Budget.id)
        rules = await AlertRule.select().where(
            (AlertRule.org == org_id) & (AlertRule.enabled == True)  # noqa: E712
        )
        await self._retry_resolves(org_id)
        incidents = await self._open_incidents(org_id)
        if not budgets and not rules and not incidents:
            return
        channels = await AlertChannel.select().where(
            (AlertChannel.org == org_id) & (AlertChannel.enabled == True)  # noqa: E712
        )
        org = await Organization.select(Organization.name).where(Organization.id == org_id).first()
        org_name = org["name"] if org else str(org_id)
        names = {
            a["id"]: a["name"]
            for a in await Agent.select(Agent.id, Agent.name).where(Agent.org == org_id)
        }
        now = self.clock()
        today = now.date()
        spend_cache: dict[int | None, dict[str, Any]] = {}

        async def spend(agent_id: int | None) -> dict[str, Any]:
            if agent_id not in spend_cache:
                spend_cache[agent_id] = await agent_spend(org_id, agent_id, today)
            return spend_cache[agent_id]

        by_id = {b["id"]: b for b in budgets}
        for open_incident in incidents:
            budget = by_id.get(open_incident["budget"])
            if budget is None:
                await self._resolve(org_id, open_incident, "the budget was deleted")
                continue
            current = (await spend(budget["agent"]))[budget["period"]]["period_id"]
            if current != open_incident["period_id"]:
                await self._resolve(org_id, open_incident, "a new period started")

        for budget in budgets:
            if budget["limit_value"] <= 0:
                continue
            period = (await spend(budget["agent"]))[budget["period"]]
            spent = int(period[_METRIC[budget["kind"]]])
            fraction = spent / budget["limit_value"]
            scope = "org" if budget["agent"] is None else "agent"
            who = org_name if scope == "org" else names.get(budget["agent"], "?")
            label = f"{scope} {budget['period']}" + (
                f" {budget['kind']}" if budget["kind"] != "usd" else ""
            )
            crossing = ThresholdCrossing(
                agent=who,
                budget=label,
                budget_key=f"{scope}:{who}:{budget['period']}:{period['period_id']}",
                unit=budget["kind"],
                period=budget["period"],
                period_id=period["period_id"],
                threshold=0.0,
                spent=spent,
                limit=budget["limit_value"],
                resets_at=_resets_at(budget["period"], today),
                at=now,
            )
            incident = _Incident(budget["id"], budget["agent"], period["period_id"], who)
            for channel in channels:
                config = _json(channel["config"])
                thresholds = sorted(float(t) for t in config.get("thresholds", DEFAULT_THRESHOLDS))
                crossed = [t for t in thresholds if fraction >= t - 1e-12]
                if not crossed:
                    continue
                top = crossed[-1]
                key = f"budget:{budget['id']}:{period['period_id']}:{top:g}:ch{channel['id']}"
                if not await self._claim(org_id, key):
                    continue
                for lower in crossed[:-1]:  # passed in the same jump: never send them later
                    await self._claim(
                        org_id,
                        f"budget:{budget['id']}:{period['period_id']}:{lower:g}:ch{channel['id']}",
                        status="skipped",
                    )
                alert = from_crossing(_with_threshold(crossing, top), self._dashboard())
                self._spawn(self._deliver(org_id, key, channel, alert, incident))
            if fraction >= 1.0:
                history = f"budget:{budget['id']}:{period['period_id']}:stop"
                if await self._claim(org_id, history):
                    await self._stop(org_id, budget, crossing, names)

        for rule in rules:
            if rule["threshold"] <= 0:
                continue
            agent_id = rule["agent"]
            period = (await spend(agent_id))[rule["period"]]
            spent = int(period[_METRIC[rule["kind"]]])
            if spent < rule["threshold"]:
                continue
            key = f"rule:{rule['id']}:{period['period_id']}"
            if not await self._claim(org_id, key):
                continue
            who = org_name if agent_id is None else names.get(agent_id, "?")
            channel_row = next((c for c in channels if c["name"] == rule["target"]), None)
            crossing = ThresholdCrossing(
                agent=who,
                budget=f"alert rule {rule['name']}",
                budget_key=f"rule:{rule['id']}:{period['period_id']}",
                unit=rule["kind"],
                period=rule["period"],
                period_id=period["period_id"],
                threshold=1.0 if spent >= rule["threshold"] else 0.0,
                spent=spent,
                limit=rule["threshold"],
                resets_at=_resets_at(rule["period"], today),
                at=now,
            )
            alert = from_crossing(crossing, self._dashboard())
            row = channel_row or {
                "id": 0,
                "kind": rule["channel"],
                "config": "{}",
                "secret": None,
                "direct_target": rule["target"],
            }
            self._spawn(self._deliver(org_id, key, row, alert))

    def _dashboard(self) -> str:
        return self.ops.settings.public_url.rstrip("/") + "/"

    async def _claim(self, org_id: int, key: str, status: str = "claimed") -> bool:
        """True for the one replica that may send: it inserted the row, or took over a
        delivery that failed in a retryable way long enough ago."""
        now = datetime.datetime.now(datetime.UTC)
        retry_before = now - datetime.timedelta(seconds=self.ops.settings.alert_retry_seconds)
        rows = await AlertDelivery.raw(
            "INSERT INTO alert_deliveries (org, dedup_key, status, created_at) "
            "VALUES ({}, {}, {}, {}) ON CONFLICT (org, dedup_key) DO UPDATE "
            "SET status = excluded.status, created_at = excluded.created_at "
            "WHERE alert_deliveries.status = 'retry' AND alert_deliveries.created_at < {} "
            "RETURNING id",
            org_id,
            key[:400],
            status,
            now,
            retry_before,
        )
        return bool(rows)

    async def _stop(
        self,
        org_id: int,
        budget: dict[str, Any],
        crossing: ThresholdCrossing,
        names: dict[int, str],
    ) -> None:
        reason = (
            f"the {crossing.budget} budget is spent "
            f"({from_crossing(crossing, None).fmt(crossing.spent)} of "
            f"{from_crossing(crossing, None).fmt(crossing.limit)}, period {crossing.period_id})"
        )
        async with db.transaction():
            query = Agent.update(
                {
                    Agent.status: "stopped",
                    Agent.kill_reason: reason,
                    Agent.control_version: Agent.control_version + 1,
                }
            ).where((Agent.org == org_id) & (Agent.status == "running"))
            if budget["agent"] is not None:
                query = query.where(Agent.id == budget["agent"])
            stopped = await query.returning(Agent.id, Agent.name)
            await raise_to_org_version(org_id, [row["id"] for row in stopped])
            for row in stopped:
                await AlertEvent.insert(
                    AlertEvent(
                        org=org_id,
                        agent=row["id"],
                        kind="kill",
                        message=f"stopped by the server: {reason}",
                        actor=None,
                        details=json.dumps({"reason": reason, "budget": budget["id"]}),
                    )
                )
        agents = [r["name"] for r in stopped]
        if agents:
            self.ops.metrics.inc("agentkavach_agents_stopped_total", len(agents))
            logger.info("alerts: stopped %d agents of org %s: %s", len(agents), org_id, reason)
            await publish_change(self._hub, org_id, "kill", agents)

    # -- PagerDuty incidents -----------------------------------------------------------------

    async def resolve_resumed(self, org_id: int, agent_id: int) -> None:
        """After ``agent_id`` is resumed: resolve the incidents of its own budgets, and those
        of org-wide budgets once no agent of the org is stopped any more. Never raises: the
        resume is done whatever happens to the alerts."""
        try:
            stopped = await Agent.exists().where(
                (Agent.org == org_id) & (Agent.status == "stopped")
            )
            for incident in await self._open_incidents(org_id):
                if incident["agent"] == agent_id or (incident["agent"] is None and not stopped):
                    await self._resolve(org_id, incident, "the agent was resumed")
        except Exception:  # noqa: BLE001 - alerts fail open
            logger.warning("alerts: resolving incidents of org %s failed", org_id, exc_info=True)

    async def resolve_budget(self, org_id: int, budget_id: int) -> None:
        """After the budget is deleted: resolve its incidents. Never raises; an incident
        left open is resolved by the next evaluation, which finds its budget gone."""
        try:
            for incident in await self._open_incidents(org_id):
                if incident["budget"] == budget_id:
                    await self._resolve(org_id, incident, "the budget was deleted")
        except Exception:  # noqa: BLE001 - alerts fail open
            logger.warning("alerts: resolving incidents of org %s failed", org_id, exc_info=True)

    async def _open_incidents(self, org_id: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await PagerDutyIncident.select().where(
            (PagerDutyIncident.org == org_id) & PagerDutyIncident.resolved_at.is_null()
        )
        return rows

    async def _opened(
        self, org_id: int, channel_id: int, dedup_key: str, incident: _Incident
    ) -> None:
        # A 90% then a 100% trigger share the dedup key: one incident, the first row stays.
        await PagerDutyIncident.raw(
            "INSERT INTO pagerduty_incidents "
            "(org, channel, dedup_key, budget, agent, period_id, subject, opened_at) "
            "VALUES ({}, {}, {}, {}, {}, {}, {}, {}) "
            "ON CONFLICT (org, channel, dedup_key) WHERE resolved_at IS NULL DO NOTHING",
            org_id,
            channel_id,
            dedup_key,
            incident.budget,
            incident.agent,
            incident.period_id[:16],
            incident.subject[:200],
            utc_now(),
        )

    async def _resolve(self, org_id: int, incident: dict[str, Any], why: str) -> None:
        """Send the incident's resolve, from the one replica that claims it."""
        key = f"{_RESOLVE}{incident['id']}"
        if not await self._claim(org_id, key):
            return
        await PagerDutyIncident.update(
            {PagerDutyIncident.resolved_at: utc_now(), PagerDutyIncident.resolve_reason: why}
        ).where(PagerDutyIncident.id == incident["id"])
        await self._send_resolve(org_id, key, {**incident, "resolve_reason": why})

    async def _retry_resolves(self, org_id: int) -> None:
        """Take over resolves that failed in a retryable way long enough ago."""
        retry_before = utc_now() - datetime.timedelta(seconds=self.ops.settings.alert_retry_seconds)
        rows = await AlertDelivery.select(AlertDelivery.dedup_key).where(
            (AlertDelivery.org == org_id)
            & (AlertDelivery.status == "retry")
            & AlertDelivery.dedup_key.like(_RESOLVE + "%")
            & (AlertDelivery.created_at < retry_before)
        )
        for row in rows:
            key = row["dedup_key"]
            incident = (
                await PagerDutyIncident.select()
                .where(
                    (PagerDutyIncident.id == int(key[len(_RESOLVE) :]))
                    & (PagerDutyIncident.org == org_id)
                )
                .first()
            )
            if incident is not None and await self._claim(org_id, key):
                await self._send_resolve(org_id, key, incident)

    async def _send_resolve(self, org_id: int, key: str, incident: dict[str, Any]) -> None:
        # The channel as it is now (enabled or not: the incident it opened must still close).
        channel = (
            await AlertChannel.select()
            .where((AlertChannel.id == incident["channel"]) & (AlertChannel.org == org_id))
            .first()
        )
        why = incident["resolve_reason"] or "resolved"
        alert = Alert(
            kind="resolve",
            agent=incident["subject"],
            severity="info",
            summary=f"{incident['subject']}: resolved ({why})",
            message=why,
            at=utc_now(),
            incident_key=incident["dedup_key"],
            period_id=incident["period_id"],
            dashboard_url=self._dashboard(),
        )
        self._spawn(self._deliver(org_id, key, channel, alert))

    # -- delivery --------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _deliver(
        self,
        org_id: int,
        key: str,
        row: dict[str, Any] | None,
        alert: Alert,
        incident: _Incident | None = None,
    ) -> None:
        """Send ``alert`` through the channel ``row`` (None: a resolve whose channel was
        deleted since) and record the outcome; a PagerDuty trigger about ``incident``
        that PagerDuty accepted is remembered, to be resolved later."""
        kind = "pagerduty" if row is None else str(row["kind"])
        name = kind if row is None else row.get("name", kind)
        error: str | None = None
        retryable = False
        secrets: tuple[Any, ...] = ()
        opened: str | None = None
        try:
            if row is None:
                raise DeliveryError("the channel was deleted", retryable=False)
            channel = build_channel(self.ops.box, row)
            secrets = channel.secrets()
            # httpx logs each request's full URL at INFO: a webhook URL is a credential.
            hide_in_logs(secrets)
            try:
                await self._send(channel, alert)
            finally:
                show_in_logs(secrets)
            if incident is not None and isinstance(channel, PagerDutyChannel):
                opened = str(channel.event(alert)["dedup_key"])  # as the trigger sent it
        except DeliveryError as exc:
            error, retryable = exc.reason, exc.retryable
        except Exception as exc:  # noqa: BLE001 - alerts fail open
            error = redact(f"{type(exc).__name__}: {exc}", secrets)
        outcome = "sent" if error is None else "failed"
        # A retryable failure (timeout, 429, 5xx) is taken over by the next evaluation
        # after alert_retry_seconds; a refusal (revoked webhook, bad key) is final.
        status = "retry" if retryable else outcome
        self.ops.metrics.inc("agentkavach_alert_deliveries_total", channel=kind, outcome=outcome)
        if error is not None:
            logger.warning("alerts: %s delivery failed: %s", kind, redact(error, secrets))
        try:
            await AlertDelivery.raw(
                "UPDATE alert_deliveries SET status = {}, error = {}, created_at = {} "
                "WHERE org = {} AND dedup_key = {}",
                status,
                None if error is None else redact(error, secrets)[:2000],
                datetime.datetime.now(datetime.UTC),
                org_id,
                key[:400],
            )
            if opened is not None and row is not None and incident is not None:
                await self._opened(org_id, int(row["id"]), opened, incident)
            await AlertEvent.insert(
                AlertEvent(
                    org=org_id,
                    agent=None,
                    kind="resolve" if alert.kind == "resolve" else "threshold",
                    message=alert.summary + ("" if error is None else f" ({kind} failed)"),
                    actor=None,
                    details=json.dumps({"channel": name, "kind": kind, "outcome": outcome}),
                )
            )
        except Exception:  # noqa: BLE001
            logger.warning("alerts: could not record a delivery", exc_info=True)

    async def _send(self, channel: Any, alert: Alert) -> None:
        assert self._client is not None
        request = channel.request(alert, time.time())
        if request is None:
            if channel.kind == "email":
                await anyio.to_thread.run_sync(channel.send_smtp, channel.message(alert))
            return
        for attempt in range(_ATTEMPTS):
            try:
                response = await self._client.post(
                    request.url, content=request.body, headers=dict(request.headers)
                )
                channel.check(
                    HttpResponse(response.status_code, response.text, dict(response.headers))
                )
                return
            except httpx.HTTPError as exc:
                failure = DeliveryError(
                    f"{channel.kind} unreachable ({type(exc).__name__})", retryable=True
                )
            except DeliveryError as exc:
                failure = exc
            if not failure.retryable or attempt == _ATTEMPTS - 1:
                raise failure
            await asyncio.sleep(min(30.0, failure.retry_after or 0.5 * 2**attempt))


def _with_threshold(c: ThresholdCrossing, threshold: float) -> ThresholdCrossing:
    return dataclasses.replace(c, threshold=threshold)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}
