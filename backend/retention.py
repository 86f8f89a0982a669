"""Retention: delete events older than each organization's plan allows, in batches.

The hourly and daily rollups stay, so spend history and budgets are unaffected; only
the per-call detail goes. Alert history (and the delivery records that de-duplicate
alerts) older than ``alert_history_days`` goes too, as do PagerDuty incidents resolved before
then (open ones stay until they are resolved), and log-outs whose tokens have expired
anyway. Runs in every replica on an
interval; deletes are idempotent, so replicas running it at once only share the work.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

from backend import billing, db
from backend.ops_settings import OpsSettings
from backend.tables import Event, Organization

__all__ = ["prune", "RetentionJob", "Pruned"]

logger = logging.getLogger("agentkavach.backend.retention")


@dataclass(frozen=True)
class Pruned:
    events: int
    alert_events: int
    deliveries: int
    incidents: int = 0
    sessions: int = 0


Stopping = Callable[[], bool]


def _running() -> bool:
    return False


async def _delete_batches(
    sql_ids: str, sql_delete: str, args: list[object], batch: int, stopping: Stopping
) -> int:
    total = 0
    while not stopping():
        rows = await Event.raw(sql_ids + f" LIMIT {int(batch)}", *args)
        if not rows:
            return total
        ids = [r["id"] for r in rows]
        placeholders = ", ".join(["{}"] * len(ids))
        await Event.raw(sql_delete.format(ids=placeholders), *ids)
        total += len(ids)
        if len(ids) < batch:
            return total
        await asyncio.sleep(0)  # let requests through between batches
    return total


async def prune(
    settings: OpsSettings,
    now: datetime.datetime | None = None,
    stopping: Stopping = _running,
) -> Pruned:
    """One pass over every organization; answers how many rows went.

    ``stopping``: asked before each batch; once it answers true, the pass ends there (the
    server is shutting down) and the next pass deletes the rest."""
    now = now or datetime.datetime.now(datetime.UTC)
    events = 0
    for org in await Organization.select(Organization.id):
        plan = await billing.plan_for(settings, org["id"])
        if plan.retention_days is None:
            continue
        cutoff = now - datetime.timedelta(days=plan.retention_days)
        events += await _delete_batches(
            "SELECT id FROM events WHERE org = {} AND started_at < {} ORDER BY id",
            "DELETE FROM events WHERE id IN ({ids})",
            [org["id"], cutoff],
            settings.retention_batch,
            stopping,
        )
    cutoff = now - datetime.timedelta(days=settings.alert_history_days)
    alert_events = await _delete_batches(
        "SELECT id FROM alert_events WHERE created_at < {} ORDER BY id",
        "DELETE FROM alert_events WHERE id IN ({ids})",
        [cutoff],
        settings.retention_batch,
        stopping,
    )
    deliveries = await _delete_batches(
        "SELECT id FROM alert_deliveries WHERE created_at < {} ORDER BY id",
        "DELETE FROM alert_deliveries WHERE id IN ({ids})",
        [cutoff],
        settings.retention_batch,
        stopping,
    )
    incidents = await _delete_batches(
        "SELECT id FROM pagerduty_incidents WHERE resolved_at < {} ORDER BY id",
        "DELETE FROM pagerduty_incidents WHERE id IN ({ids})",
        [cutoff],
        settings.retention_batch,
        stopping,
    )
    sessions = await _delete_batches(
        "SELECT id FROM revoked_sessions WHERE expires_at < {} ORDER BY id",
        "DELETE FROM revoked_sessions WHERE id IN ({ids})",
        [now],
        settings.retention_batch,
        stopping,
    )
    return Pruned(events, alert_events, deliveries, incidents, sessions)


class RetentionJob:
    def __init__(self, settings: OpsSettings, on_pruned: object = None) -> None:
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._on_pruned = on_pruned
        self._wake: asyncio.Event | None = None
        self._stopping = False

    stop_timeout = 10.0
    """How long ``stop`` waits for a batch in progress before cancelling the pass."""

    def start(self) -> None:
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="agentkavach-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True  # the pass ends after the batch in progress
            if self._wake is not None:
                self._wake.set()
            await db.finish_or_cancel(self._task, self.stop_timeout)
            self._task = None

    def _stopped(self) -> bool:
        return self._stopping

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:  # only stop() sets it
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.retention_interval)
            except TimeoutError:
                pass
            if self._stopping:
                return
            try:
                pruned = await prune(self.settings, stopping=self._stopped)
            except Exception:  # noqa: BLE001 - housekeeping must not take the server down
                logger.warning("retention: pruning failed; retrying next interval", exc_info=True)
                continue
            if callable(self._on_pruned):
                self._on_pruned(pruned)
            if pruned.events or pruned.alert_events:
                logger.info(
                    "retention: deleted %d events, %d alert events, %d delivery records",
                    pruned.events,
                    pruned.alert_events,
                    pruned.deliveries,
                )
