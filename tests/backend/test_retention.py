"""Retention prunes events past each plan's retention (in batches), alert history past 30
days, and nothing else: rollups, newer events and other organizations' rows stay."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from backend import db
from backend.ingest import decode_batch, store_batch
from backend.ops_settings import OpsSettings
from backend.retention import prune
from backend.settings import DatabaseURL
from backend.tables import (
    AlertEvent,
    Event,
    Organization,
    PagerDutyIncident,
    SpendDaily,
    SpendHourly,
    Subscription,
)
from tests.backend.conftest import batch, event
from tests.backend.ops_helpers import fresh_postgres

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
BILLING = OpsSettings(
    stripe_secret_key="sk_test_x",
    stripe_webhook_secret="whsec_x",
    stripe_price_pro="p1",
    stripe_price_max="p2",
    retention_batch=2,
)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "retention.sqlite")
    else:
        with fresh_postgres() as url:
            yield url


@pytest.fixture
async def engine(database: str) -> AsyncIterator[None]:
    previous = db._current
    engine = db.engine_for(DatabaseURL.parse(database))
    await db.migrate(engine)
    try:
        yield
    finally:
        if previous is not None:
            db.use_engine(previous)


def _ago(days: float) -> str:
    return (NOW - datetime.timedelta(days=days)).isoformat()


async def _org(plan: str) -> int:
    org_id = int((await Organization.insert(Organization(name=plan)))[0]["id"])
    await Subscription.insert(Subscription(org=org_id, plan=plan, status="active"))
    return org_id


async def _ingest(org_id: int, *events: dict[str, Any]) -> None:
    body = json.dumps(batch(*events)).encode()
    decoded = decode_batch(body, content_encoding="", max_decoded_bytes=10**7, max_events=1000)
    await store_batch(org_id, decoded)


async def _keys(org_id: int) -> set[str]:
    rows = await Event.select(Event.idempotency_key).where(Event.org == org_id)
    return {r["idempotency_key"] for r in rows}


async def _rollup_totals() -> tuple[int, int]:
    daily = await SpendDaily.raw("SELECT CAST(SUM(cost_nanos) AS BIGINT) AS c FROM spend_daily")
    hourly = await SpendHourly.raw("SELECT CAST(SUM(cost_nanos) AS BIGINT) AS c FROM spend_hourly")
    return int(daily[0]["c"]), int(hourly[0]["c"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_prune_removes_what_it_should_and_nothing_else(engine: None) -> None:
    free, pro = await _org("free"), await _org("pro")
    free_old = [event(started_at=_ago(8 + i), cost_nanos=100) for i in range(5)]
    free_new = [event(started_at=_ago(6), cost_nanos=100), event(started_at=_ago(0.1))]
    pro_old = [event(started_at=_ago(91 + i), cost_nanos=7) for i in range(3)]
    pro_kept = [event(started_at=_ago(30)), event(started_at=_ago(89))]
    await _ingest(free, *free_old, *free_new)
    await _ingest(pro, *pro_old, *pro_kept)
    rollups = await _rollup_totals()
    for org_id, days in ((free, 45), (free, 29), (pro, 31)):
        await AlertEvent.insert(
            AlertEvent(
                org=org_id,
                kind="kill",
                message=f"{days} days ago",
                created_at=NOW - datetime.timedelta(days=days),
            )
        )

    for name, resolved_days_ago in (("old resolved", 45), ("recent", 2), ("open", None)):
        await PagerDutyIncident.insert(
            PagerDutyIncident(
                org=free,
                channel=1,
                dedup_key=name,
                budget=1,
                period_id="2026-10-01",
                subject="bot",
                opened_at=NOW - datetime.timedelta(days=60),
                resolved_at=None
                if resolved_days_ago is None
                else NOW - datetime.timedelta(days=resolved_days_ago),
            )
        )

    pruned = await prune(BILLING, now=NOW)

    # Incidents resolved long ago go; an open one stays however old, so it can be resolved.
    kept = await PagerDutyIncident.select(PagerDutyIncident.dedup_key)
    assert sorted(r["dedup_key"] for r in kept) == ["open", "recent"]
    assert pruned.incidents == 1
    assert pruned.events == 8  # five of Free (7 days), three of Pro (90 days), batches of 2
    assert await _keys(free) == {e["id"] for e in free_new}
    assert await _keys(pro) == {e["id"] for e in pro_kept}
    assert await _rollup_totals() == rollups  # spend history is untouched
    left = await AlertEvent.select(AlertEvent.message).order_by(AlertEvent.id)
    assert [r["message"] for r in left] == ["29 days ago"]
    assert pruned.alert_events == 2
    # A second pass finds nothing more.
    again = await prune(BILLING, now=NOW)
    assert (again.events, again.alert_events) == (0, 0)


@pytest.mark.anyio
async def test_self_hosted_keeps_events_unless_told(engine: None) -> None:
    org_id = await _org("free")
    await _ingest(org_id, event(started_at=_ago(400)), event(started_at=_ago(2)))
    assert (await prune(OpsSettings(), now=NOW)).events == 0
    assert len(await _keys(org_id)) == 2
    assert (await prune(OpsSettings(retention_days=30), now=NOW)).events == 1
    assert len(await _keys(org_id)) == 1


@pytest.mark.anyio
async def test_a_pass_told_to_stop_ends_after_the_batch_in_progress(engine: None) -> None:
    # The server shutting down: the pass stops between batches, and the next deletes the rest.
    free = await _org("free")
    await _ingest(free, *(event(started_at=_ago(8 + i)) for i in range(5)))
    asked: list[int] = []

    def stopping() -> bool:
        asked.append(1)
        return len(asked) > 1  # after the first batch

    first = await prune(BILLING, now=NOW, stopping=stopping)
    assert (first.events, len(await _keys(free))) == (2, 3)  # one batch of 2
    rest = await prune(BILLING, now=NOW)
    assert (rest.events, await _keys(free)) == (3, set())


def test_stopping_the_job_lets_a_pass_in_progress_finish_its_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As the alert worker's (test_alert_worker_stop.py): cancelled mid-query, a pass left
    # aiosqlite's thread to answer the event loop the server closes next.
    from backend import retention

    finished: list[str] = []

    async def main() -> None:
        entered, answered = asyncio.Event(), asyncio.Event()

        async def prune(settings: OpsSettings, stopping: Any) -> retention.Pruned:
            entered.set()
            await answered.wait()  # a batch in flight
            finished.append("batch")
            assert stopping()  # the pass is told to end here
            return retention.Pruned(0, 0, 0)

        monkeypatch.setattr(retention, "prune", prune)
        job = retention.RetentionJob(OpsSettings(retention_interval=0.01))
        job.start()
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.create_task(job.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the batch, not cancelling it
        answered.set()
        await asyncio.wait_for(stopping, 5)

    asyncio.run(main())
    assert finished == ["batch"]


def test_stopping_the_job_cancels_a_pass_that_does_not_finish_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backend import retention

    cancelled: list[bool] = []

    async def main() -> None:
        entered = asyncio.Event()

        async def prune(settings: OpsSettings, stopping: Any) -> retention.Pruned:
            entered.set()
            try:
                await asyncio.Event().wait()  # a query that never answers
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            raise AssertionError("unreachable")

        monkeypatch.setattr(retention, "prune", prune)
        job = retention.RetentionJob(OpsSettings(retention_interval=0.01))
        job.stop_timeout = 0.2
        job.start()
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.wait_for(job.stop(), 5)

    asyncio.run(main())
    assert cancelled == [True]


def test_stopping_an_idle_job_returns_at_once() -> None:
    from backend import retention

    async def main() -> float:
        job = retention.RetentionJob(OpsSettings(retention_interval=3600))
        job.start()
        await asyncio.sleep(0)
        job.stop_timeout = 30
        loop = asyncio.get_running_loop()
        started = loop.time()
        await job.stop()
        return loop.time() - started

    assert asyncio.run(main()) < 5  # woken, not waiting out the 30 s timeout or the hour
