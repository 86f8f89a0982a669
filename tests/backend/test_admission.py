"""The plan's events-per-month limit at ingest, counted as events arrive (calls and refusals)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend import db
from backend.admission import Admission, _Agentname, _Shape
from backend.billing import plan_for
from backend.ops_settings import OpsSettings
from backend.ratelimit import MemoryLimiter
from backend.settings import DatabaseURL, Settings
from backend.tables import Agent, Organization, SpendDaily, Subscription, UsageMonthly

BILLING = OpsSettings(
    stripe_secret_key="sk_test_x",
    stripe_webhook_secret="whsec_x",
    stripe_price_pro="p1",
    stripe_price_max="p2",
)
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[None]:
    previous = db._current
    await db.migrate(db.engine_for(DatabaseURL.parse(str(tmp_path / "a.sqlite"))))
    try:
        yield
    finally:
        if previous is not None:
            db.use_engine(previous)


async def _org_with_usage(plan: str, calls: int, refusals: int) -> int:
    org_id = int((await Organization.insert(Organization(name=plan)))[0]["id"])
    await Subscription.insert(Subscription(org=org_id, plan=plan, status="active"))
    agent = int((await Agent.insert(Agent(org=org_id, name="bot")))[0]["id"])
    last_month = NOW.date().replace(day=1) - datetime.timedelta(days=1)
    for day, n in ((NOW.date(), calls), (last_month, 10**9)):
        await SpendDaily.insert(
            SpendDaily(org=org_id, agent=agent, model="m", day=day, calls=n, refusals=refusals)
        )
    # What ingest counts as the events arrive; the rollups above file them by start time.
    await UsageMonthly.insert(
        UsageMonthly(org=org_id, month=NOW.date().replace(day=1), events=calls + refusals)
    )
    return org_id


@pytest.mark.anyio
async def test_events_per_month_are_enforced_with_a_clear_reason(engine: None) -> None:
    admission = Admission(Settings(secret_key="k" * 32), BILLING, MemoryLimiter())
    org_id = await _org_with_usage("free", calls=99_990, refusals=8)
    two = _Shape(events=[_Agentname("bot"), _Agentname("bot")])
    plan = await plan_for(BILLING, org_id)
    assert await admission._plan(plan, org_id, two, 2, NOW) is None  # 99,998 + 2 = the limit
    three = _Shape(events=[_Agentname("bot")] * 3)
    refused = await admission._plan(plan, org_id, three, 3, NOW)
    assert refused is not None and refused.status_code == 429
    body = refused.content
    assert body["reason"] == "plan_events"
    assert "Free plan includes 100,000 events per month and 99,998 were received" in body["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # The same usage is well inside Pro.
    pro = await _org_with_usage("pro", calls=99_990, refusals=8)
    assert await admission._plan(await plan_for(BILLING, pro), pro, three, 3, NOW) is None
