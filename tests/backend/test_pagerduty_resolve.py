"""The backend resolves the PagerDuty incidents its alert worker opens: when the agent is
resumed, when the budget's period resets and when the budget is deleted. Each incident is
triggered once and resolved once, with the trigger's ``dedup_key``, through the channel that
opened it.

On SQLite two replicas share the database file, so both evaluate and race for every claim.
On PostgreSQL one replica runs: in one process Piccolo's engine (an asyncpg pool) is global
and bound to one event loop, so two in-process servers cannot share it (test_alert_worker
covers two PostgreSQL processes for triggers)."""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.fernet import Fernet

from backend import db
from backend.alert_worker import AlertWorker
from backend.spend import utc_now
from tests.backend.conftest import (
    Account,
    LiveServer,
    batch,
    event,
    register,
    start_server,
    stop_server,
)
from tests.backend.ops_helpers import Recorder, fresh_postgres, recorder, wait_for

ROUTING_KEY = "Q" * 32
DOLLAR = 1_000_000_000
PD_REPLY = {"status": "success", "message": "Event processed"}


@dataclass
class Replicas:
    servers: list[LiveServer]

    @property
    def url(self) -> str:
        return self.servers[0].url

    def workers(self) -> list[AlertWorker]:
        return [s.server.config.app.state.ops.worker for s in self.servers]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    previous = db._current  # Piccolo's engine is global: give it back to other modules
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = str(tmp_path_factory.mktemp("pd") / "pd.sqlite")
        else:
            url = stack.enter_context(fresh_postgres())
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setenv("AGENTKAVACH_ENCRYPTION_KEY", Fernet.generate_key().decode())
        patch.setenv("AGENTKAVACH_ALERT_INTERVAL_SECONDS", "0.3")
        patch.setenv("AGENTKAVACH_ALERT_RETRY_SECONDS", "0")
        servers = [start_server(url) for _ in range(2 if request.param == "sqlite" else 1)]
        try:
            yield Replicas(servers)
        finally:
            for server in servers:
                stop_server(server)
            if previous is not None:
                db.use_engine(previous)


@pytest.fixture
def pagerduty() -> Iterator[Recorder]:
    with recorder(reply=PD_REPLY, status=202) as pd:
        yield pd


@pytest.fixture
def account(replicas: Replicas, pagerduty: Recorder) -> Iterator[Account]:
    acc = register(replicas.url)
    made = acc.client.post(
        "/v1/channels",
        json={
            "name": "on-call",
            "kind": "pagerduty",
            "config": {"thresholds": [0.5, 1.0], "api_url": pagerduty.url + "/v2/enqueue"},
            "secrets": {"routing_key": ROUTING_KEY},
        },
    )
    assert made.status_code == 201, made.text
    yield acc
    acc.client.close()


def _spend(account: Account, agent: str, nanos: int) -> None:
    with account.sdk() as sdk:
        sent = sdk.post("/v1/ingest", json=batch(event(agent=agent, cost_nanos=nanos)))
        assert sent.status_code == 202, sent.text


def _settle() -> None:
    """Long enough for both replicas to evaluate again on their interval."""
    time.sleep(1.5)


def _actions(pd: Recorder) -> list[tuple[str, str]]:
    return [(b["event_action"], b["dedup_key"]) for b in pd.bodies()]


def test_resuming_a_stopped_agent_resolves_its_incident_once(
    account: Account, pagerduty: Recorder
) -> None:
    _spend(account, "billing-bot", 1)
    budget = account.client.post(
        "/v1/agents/billing-bot/budgets",
        json={"kind": "usd", "period": "daily", "limit_usd": "1.00"},
    )
    assert budget.status_code == 201, budget.text

    _spend(account, "billing-bot", DOLLAR)
    assert wait_for(lambda: len(pagerduty.requests) >= 1, 10)
    trigger = pagerduty.bodies()[0]
    assert trigger["event_action"] == "trigger"
    assert trigger["payload"]["severity"] == "critical"
    dedup_key = trigger["dedup_key"]
    assert "billing-bot" in dedup_key
    assert wait_for(lambda: account.client.get("/v1/agents").json()[0]["status"] == "stopped", 10)

    resumed = account.client.post("/v1/agents/billing-bot/resume")
    assert resumed.status_code == 200, resumed.text
    assert wait_for(lambda: len(pagerduty.requests) >= 2, 10)
    assert pagerduty.bodies()[1] == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": dedup_key,
    }

    # More spend in the same period, another resume, both replicas evaluating: nothing new.
    _spend(account, "billing-bot", 1)
    assert account.client.post("/v1/agents/billing-bot/resume").status_code == 200
    _settle()
    assert _actions(pagerduty) == [("trigger", dedup_key), ("resolve", dedup_key)]
    history = account.client.get("/v1/alerts").json()
    resolves = [h for h in history if h["kind"] == "resolve"]
    assert len(resolves) == 1
    assert resolves[0]["message"] == "billing-bot: resolved (the agent was resumed)"
    assert resolves[0]["details"]["outcome"] == "sent"
    assert ROUTING_KEY not in str(history)


def test_a_new_period_resolves_the_incident_of_the_last_one(
    replicas: Replicas, account: Account, pagerduty: Recorder
) -> None:
    budget = account.client.post(
        "/v1/budgets", json={"kind": "usd", "period": "daily", "limit_usd": "1.00"}
    )
    assert budget.status_code == 201, budget.text
    _spend(account, "research-bot", DOLLAR * 6 // 10)
    assert wait_for(lambda: len(pagerduty.requests) >= 1, 10)
    trigger = pagerduty.bodies()[0]
    assert trigger["event_action"] == "trigger"
    assert trigger["payload"]["severity"] == "warning"
    assert trigger["payload"]["custom_details"]["threshold"] == "50%"
    dedup_key = trigger["dedup_key"]

    # Tomorrow, for both replicas: the spend above is yesterday's.
    tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    workers = replicas.workers()
    try:
        for worker in workers:
            worker.clock = lambda: tomorrow
        assert wait_for(lambda: len(pagerduty.requests) >= 2, 10)
        _settle()
    finally:
        for worker in workers:
            worker.clock = utc_now
    assert _actions(pagerduty) == [("trigger", dedup_key), ("resolve", dedup_key)]
    assert pagerduty.bodies()[1]["routing_key"] == ROUTING_KEY
    history = account.client.get("/v1/alerts").json()
    assert [h["message"] for h in history if h["kind"] == "resolve"] == [
        f"{account.email}: resolved (a new period started)"
    ]


def test_deleting_the_budget_resolves_its_incident(account: Account, pagerduty: Recorder) -> None:
    _spend(account, "support-bot", 1)
    budget = account.client.post(
        "/v1/agents/support-bot/budgets",
        json={"kind": "usd", "period": "monthly", "limit_usd": "1.00"},
    )
    assert budget.status_code == 201, budget.text
    _spend(account, "support-bot", DOLLAR * 6 // 10)
    assert wait_for(lambda: len(pagerduty.requests) >= 1, 10)
    dedup_key = pagerduty.bodies()[0]["dedup_key"]

    deleted = account.client.delete(f"/v1/budgets/{budget.json()['id']}")
    assert deleted.status_code == 204
    assert wait_for(lambda: len(pagerduty.requests) >= 2, 10)
    _settle()
    assert _actions(pagerduty) == [("trigger", dedup_key), ("resolve", dedup_key)]


def test_a_resolve_pagerduty_fails_to_take_is_retried_until_it_lands(
    account: Account, pagerduty: Recorder
) -> None:
    budget = account.client.post(
        "/v1/budgets", json={"kind": "usd", "period": "monthly", "limit_usd": "1.00"}
    )
    assert budget.status_code == 201, budget.text
    _spend(account, "ops-bot", DOLLAR * 6 // 10)
    assert wait_for(lambda: len(pagerduty.requests) >= 1, 10)
    dedup_key = pagerduty.bodies()[0]["dedup_key"]

    pagerduty.status = 503  # PagerDuty is down when the budget is deleted
    assert account.client.delete(f"/v1/budgets/{budget.json()['id']}").status_code == 204
    # Past the first delivery's own attempts (3): a later evaluation took the resolve over.
    assert wait_for(lambda: len(pagerduty.requests) >= 5, 20)
    pagerduty.status = 202

    def landed() -> bool:
        history = account.client.get("/v1/alerts").json()
        return any(h["kind"] == "resolve" and h["details"]["outcome"] == "sent" for h in history)

    assert wait_for(landed, 20)
    _settle()
    attempts = _actions(pagerduty)
    assert attempts[0] == ("trigger", dedup_key)
    assert set(attempts[1:]) == {("resolve", dedup_key)}
    _settle()
    assert len(pagerduty.requests) == len(attempts)  # nothing more once it landed
    history = account.client.get("/v1/alerts").json()
    failed = [h for h in history if h["kind"] == "resolve" and h["details"]["outcome"] == "failed"]
    assert failed and all("pagerduty failed" in h["message"] for h in failed)
    assert ROUTING_KEY not in str(history)
