"""Server-side alerts across two backend processes sharing PostgreSQL and Redis: an org
budget crossing 90% sends exactly one Slack message and one PagerDuty event; at 100% every
SDK guard of the org is stopped through the control channel within a second."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from kavach import AgentKavach, AgentKilledError, ModelPrice, Usage
from kavach.spec import CallSpec
from tests.backend.conftest import batch, event
from tests.backend.ops_helpers import (  # noqa: F401 - accounts_fixture is a fixture
    REDIS_URL,
    accounts_fixture,
    fresh_postgres,
    need_redis,
    recorder,
    start_process,
    wait_for,
)

PRICES = {"test-model": ModelPrice(1.0, 1.0)}
ROUTING_KEY = "R" * 32
DOLLAR = 1_000_000_000


def _spec(i: int) -> CallSpec:
    return CallSpec(
        provider="openai",
        model="test-model",
        input_tokens=10,
        max_output_tokens=10,
        messages=[{"role": "user", "content": str(i)}],
    )


def test_org_budget_alerts_once_across_replicas_and_stops_every_sdk(
    tmp_path: Path, accounts: Any
) -> None:
    need_redis()
    with (
        fresh_postgres() as database_url,
        recorder(reply="ok") as slack,
        recorder(reply={"status": "success", "message": "Event processed"}, status=202) as pd,
    ):
        env = {
            "AGENTKAVACH_DATABASE_URL": database_url,
            "AGENTKAVACH_REDIS_URL": REDIS_URL,
            "AGENTKAVACH_REDIS_PREFIX": f"test:{uuid.uuid4().hex}:",
            "AGENTKAVACH_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "AGENTKAVACH_ALERT_INTERVAL_SECONDS": "1",
        }
        first = start_process(env, tmp_path / "a.log")
        second = start_process(env, tmp_path / "b.log")
        backends = [first, second]
        guards: list[AgentKavach] = []
        try:
            account = accounts(first.url)
            key = account.new_key()
            hook = slack.url + "/services/T000/B000/" + "s" * 24
            made = account.client.post(
                "/v1/channels",
                json={
                    "name": "ops-slack",
                    "kind": "slack",
                    "config": {"thresholds": [0.9, 1.0]},
                    "secrets": {"webhook_url": hook},
                },
            )
            assert made.status_code == 201, made.text
            assert made.json()["secrets"] == {"webhook_url": slack.url + "/********"}
            made = account.client.post(
                "/v1/channels",
                json={
                    "name": "ops-pager",
                    "kind": "pagerduty",
                    "config": {"thresholds": [0.9, 1.0], "api_url": pd.url + "/v2/enqueue"},
                    "secrets": {"routing_key": ROUTING_KEY},
                },
            )
            assert made.status_code == 201, made.text
            listed = httpx.get(
                second.url + "/v1/channels", headers={"Authorization": f"Bearer {account.token}"}
            ).text
            assert hook not in listed and ROUTING_KEY not in listed
            budget = account.client.post(
                "/v1/budgets", json={"kind": "usd", "period": "monthly", "limit_usd": "1.00"}
            )
            assert budget.status_code == 201, budget.text

            # Four SDK processes' guards (two agents), connected to either backend.
            kills: list[str] = []
            for i, name in enumerate(["bot-a", "bot-b", "bot-a", "bot-b"]):
                guard = AgentKavach(
                    name,
                    prices=PRICES,
                    api_key=key,
                    endpoint=backends[i % 2].url,
                    spool_dir=tmp_path / f"spool{i}",
                    on_kill=kills.append,
                )
                guards.append(guard)
                assert guard.backend is not None
                assert wait_for(guard.backend.control.connected.is_set, 10)
                guard.reserve(_spec(i)).commit(Usage(10, 10))
                assert guard.backend.reporter.flush(5)

            # 0.92 dollars in 46 batches sent concurrently to both replicas.
            sdk = [
                httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {key}"})
                for b in backends
            ]

            def send(i: int, cost: int) -> int:
                agent = "bot-a" if i % 2 else "bot-b"
                body = batch(event(agent=agent, model="test-model", cost_nanos=cost))
                return sdk[i % 2].post("/v1/ingest", json=body).status_code

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda i: send(i, DOLLAR // 50), range(46)))
            assert set(codes) == {202}
            assert wait_for(lambda: len(slack.requests) >= 1 and len(pd.requests) >= 1, 5)
            time.sleep(2.5)  # both replicas evaluated, and swept on their interval, since
            assert len(slack.requests) == 1
            assert len(pd.requests) == 1
            slack_text = str(slack.bodies()[0])
            assert "passed 90%" in slack_text and "org monthly" in slack_text
            page = pd.bodies()[0]
            assert page["routing_key"] == ROUTING_KEY
            assert page["payload"]["severity"] == "error"
            assert not any(g.killed for g in guards)

            # Past 100%: every guard of the org refuses within a second.
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda i: send(i, DOLLAR // 50), range(5)))
            sent = time.monotonic()
            assert set(codes) == {202}
            assert wait_for(lambda: all(g.killed for g in guards), 1.0), [
                (g.killed, time.monotonic() - sent) for g in guards
            ]
            stop_latency = time.monotonic() - sent
            for i, guard in enumerate(guards):
                with pytest.raises(AgentKilledError):
                    guard.reserve(_spec(100 + i))
            assert len(kills) == 4 and "org monthly budget is spent" in kills[0]
            agents = account.client.get("/v1/agents").json()
            assert {a["name"]: a["status"] for a in agents} == {
                "bot-a": "stopped",
                "bot-b": "stopped",
            }
            time.sleep(2.0)
            assert len(slack.requests) == 2  # the 100% alert, once
            assert len(pd.requests) == 2
            assert pd.bodies()[1]["payload"]["severity"] == "critical"
            history = account.client.get("/v1/alerts").json()
            assert sum(1 for h in history if h["kind"] == "kill") == 2
            metrics = (
                httpx.get(first.url + "/metrics").text + httpx.get(second.url + "/metrics").text
            )
            assert "agentkavach_alert_deliveries_total" in metrics
            print(f"stop reached every SDK {stop_latency * 1000:.0f} ms after the ingest answer")
            for client in sdk:
                client.close()
        finally:
            for guard in guards:
                guard.close()
            second.stop()
            first.stop()


def test_channel_secrets_need_an_encryption_key(tmp_path: Path, accounts: Any) -> None:
    proc = start_process(
        {"AGENTKAVACH_DATABASE_URL": str(tmp_path / "db.sqlite")}, tmp_path / "b.log"
    )
    try:
        account = accounts(proc.url)
        refused = account.client.post(
            "/v1/channels",
            json={
                "name": "s",
                "kind": "slack",
                "secrets": {"webhook_url": "https://hooks.slack.com/services/T/B/xyz"},
            },
        )
        assert refused.status_code == 409
        assert "AGENTKAVACH_ENCRYPTION_KEY" in refused.json()["detail"]
        assert account.client.get("/v1/channels").json() == []
        bad = account.client.post(
            "/v1/channels",
            json={"name": "p", "kind": "pagerduty", "secrets": {"routing_key": "short"}},
        )
        assert bad.status_code == 400 and "32 letters" in bad.json()["detail"]
        assert "short" not in bad.text
    finally:
        proc.stop()
