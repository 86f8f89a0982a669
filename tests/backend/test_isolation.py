"""Org isolation: another organization's objects are 404 on every endpoint, never 403."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backend.conftest import Account, batch, event

AGENT = "secret-agent"


@pytest.fixture
def owned(account: Account) -> dict[str, Any]:
    """Org A's objects: an agent with a run and events, a key, budgets, an alert rule."""
    with account.sdk() as sdk:
        assert (
            sdk.post(
                "/v1/ingest", json=batch(event(agent=AGENT, run_id="r-secret", cost_nanos=999))
            ).status_code
            == 202
        )
    run_id = account.client.get(f"/v1/agents/{AGENT}/runs").json()[0]["id"]
    key_id = account.client.get("/v1/keys").json()[0]["id"]
    budget = account.client.post(
        f"/v1/agents/{AGENT}/budgets", json={"kind": "calls", "period": "daily", "limit": 5}
    ).json()
    rule = account.client.post(
        "/v1/alert-rules",
        json={
            "name": "r",
            "kind": "calls",
            "period": "daily",
            "threshold": 4,
            "channel": "webhook",
            "target": "https://example.invalid/hook",
        },
    ).json()
    return {"run": run_id, "key": key_id, "budget": budget["id"], "rule": rule["id"]}


def test_every_object_endpoint_is_404_for_another_org(
    account: Account, other_account: Account, owned: dict[str, Any]
) -> None:
    run, key, budget, rule = owned["run"], owned["key"], owned["budget"], owned["rule"]
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/v1/agents/{AGENT}", None),
        ("GET", f"/v1/agents/{AGENT}/runs", None),
        ("GET", f"/v1/agents/{AGENT}/spend", None),
        ("GET", f"/v1/agents/{AGENT}/budgets", None),
        ("POST", f"/v1/agents/{AGENT}/budgets", {"kind": "usd", "period": "daily", "limit": 1}),
        ("POST", f"/v1/agents/{AGENT}/kill", {"reason": "hostile"}),
        ("POST", f"/v1/agents/{AGENT}/resume", None),
        ("GET", f"/v1/runs/{run}", None),
        ("GET", f"/v1/runs/{run}/events", None),
        ("GET", f"/v1/events?agent={AGENT}", None),
        ("GET", f"/v1/alerts?agent={AGENT}", None),
        ("DELETE", f"/v1/keys/{key}", None),
        ("POST", f"/v1/keys/{key}/rotate", None),
        ("GET", f"/v1/budgets/{budget}", None),
        ("PATCH", f"/v1/budgets/{budget}", {"limit": 1_000_000}),
        ("DELETE", f"/v1/budgets/{budget}", None),
        ("GET", f"/v1/alert-rules/{rule}", None),
        ("PATCH", f"/v1/alert-rules/{rule}", {"enabled": False}),
        ("DELETE", f"/v1/alert-rules/{rule}", None),
        (
            "POST",
            "/v1/alert-rules",
            {
                "name": "x",
                "agent": AGENT,
                "kind": "usd",
                "period": "daily",
                "threshold": 1,
                "channel": "email",
                "target": "a@b.example",
            },
        ),
    ]
    for method, path, body in calls:
        response = other_account.client.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.status_code, response.text)

    # Nothing of org A changed.
    detail = account.client.get(f"/v1/agents/{AGENT}").json()
    assert detail["status"] == "running" and detail["control_version"] == 1  # its budget only
    assert account.client.get(f"/v1/budgets/{budget}").json()["limit"] == 5
    assert account.client.get(f"/v1/alert-rules/{rule}").json()["enabled"] is True
    assert account.client.get("/v1/keys").json()[0]["revoked_at"] is None


def test_lists_and_dashboards_show_only_the_own_org(
    account: Account, other_account: Account, owned: dict[str, Any]
) -> None:
    other = other_account.client
    assert other.get("/v1/agents").json() == []
    assert other.get("/v1/keys").json() == []
    assert other.get("/v1/budgets").json() == []
    assert other.get("/v1/alert-rules").json() == []
    assert other.get("/v1/alerts").json() == []
    assert other.get("/v1/events").json() == []
    assert [m["user"]["email"] for m in other.get("/v1/orgs/members").json()] == [
        other_account.email
    ]
    overview = other.get("/v1/dashboard/overview").json()
    assert overview["month"]["cost_nanos"] == 0 and overview["top_agents"] == []
    stats = other.get("/v1/dashboard/stats").json()
    assert stats["by_agent"] == [] and stats["by_model"] == []


def test_sdk_keys_see_only_their_org(
    account: Account, other_account: Account, owned: dict[str, Any]
) -> None:
    account.client.post(f"/v1/agents/{AGENT}/kill", json={"reason": "mine"})
    with other_account.sdk() as sdk:
        spend = sdk.get(f"/v1/agents/{AGENT}/spend").json()
        assert spend["total"]["cost_nanos"] == 0
        control = sdk.get("/v1/control", params={"agents": AGENT}).json()
        assert control["control"][AGENT]["status"] == "running"
        assert control["control"][AGENT]["budgets"] == []
        # Same agent name in another org: its own agent, A's stays stopped.
        answer = sdk.post("/v1/ingest", json=batch(event(agent=AGENT))).json()
        assert answer["control"][AGENT]["status"] == "running"
    assert account.client.get(f"/v1/agents/{AGENT}").json()["status"] == "stopped"
    assert len(account.client.get("/v1/events").json()) == 1
