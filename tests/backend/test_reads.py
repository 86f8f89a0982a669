"""Spend seeding, overview and stats numbers from known events, pricing, status, schema."""

from __future__ import annotations

import calendar
import datetime

import httpx

from tests.backend.conftest import Account, LiveServer, batch, event


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _at(moment: datetime.datetime) -> str:
    return moment.isoformat()


def test_spend_endpoint_sums_the_current_periods(account: Account) -> None:
    now = _now()
    last_year = now - datetime.timedelta(days=400)
    usage = {"input_tokens": 100, "output_tokens": 20}
    with account.sdk() as sdk:
        sdk.post(
            "/v1/ingest",
            json=batch(
                event(cost_nanos=1_000, usage=usage, started_at=_at(now)),
                event(cost_nanos=2_000, usage=usage, started_at=_at(now)),
                event(cost_nanos=0, status="refused", refusal_reason="budget", started_at=_at(now)),
                event(cost_nanos=50_000, usage=usage, started_at=_at(last_year)),
                event(agent="someone-else", cost_nanos=7, started_at=_at(now)),
            ),
        )
        spend = sdk.get("/v1/agents/research-bot/spend")
        unseen = sdk.get("/v1/agents/never-seen/spend")
    assert spend.status_code == 200
    body = spend.json()
    assert body["agent"] == "research-bot"
    today = now.date()
    assert body["daily"] == {
        "period_id": today.isoformat(),
        "cost_nanos": 3_000,
        "tokens": 2 * 120 + 15,  # the refused event still reports its (default) usage
        "calls": 2,
    }
    iso = today.isocalendar()
    assert body["weekly"]["period_id"] == f"{iso[0]}-W{iso[1]:02d}"
    assert body["weekly"]["cost_nanos"] == 3_000
    assert body["monthly"]["period_id"] == today.strftime("%Y-%m")
    assert body["monthly"]["cost_nanos"] == 3_000
    assert body["total"] == {
        "period_id": "total",
        "cost_nanos": 53_000,
        "tokens": 3 * 120 + 15,
        "calls": 3,
    }
    assert unseen.status_code == 200
    assert unseen.json()["daily"]["cost_nanos"] == 0
    # Users may read it too; for them an unknown agent is a 404.
    assert account.client.get("/v1/agents/research-bot/spend").json() == body
    assert account.client.get("/v1/agents/never-seen/spend").status_code == 404


def test_overview_numbers(account: Account) -> None:
    now = _now()
    with account.sdk() as sdk:
        sdk.post(
            "/v1/ingest",
            json=batch(
                event(agent="big", model="gpt-4o", cost_nanos=3_000_000_000, started_at=_at(now)),
                event(agent="big", model="gpt-4o-mini", cost_nanos=1_000_000, started_at=_at(now)),
                event(agent="small", model="gpt-4o-mini", cost_nanos=500, started_at=_at(now)),
                event(agent="small", status="refused", refusal_reason="budget", cost_nanos=0),
                event(agent="small", status="refused", refusal_reason="budget", cost_nanos=0),
                event(agent="small", status="refused", refusal_reason="loop", cost_nanos=0),
            ),
        )
    overview = account.client.get("/v1/dashboard/overview")
    assert overview.status_code == 200
    body = overview.json()
    total = 3_000_000_000 + 1_000_000 + 500
    assert body["today"]["cost_nanos"] == total
    assert body["today"]["cost_usd"] == "$3.00"
    assert body["month"]["cost_nanos"] == total
    assert body["month"]["calls"] == 3 and body["month"]["refusals"] == 3
    assert [a["agent"] for a in body["top_agents"]] == ["big", "small"]
    assert body["top_agents"][0]["cost_nanos"] == 3_001_000_000
    assert [m["model"] for m in body["top_models"]] == ["gpt-4o", "gpt-4o-mini"]
    assert body["top_models"][1]["cost_nanos"] == 1_000_500
    assert body["refusals_by_reason"] == {"budget": 2, "loop": 1}
    # Projection: month-to-date spend scaled to the whole month, at least the spend so far.
    days = calendar.monthrange(now.year, now.month)[1]
    assert total <= body["projection_month_end"]["cost_nanos"] <= total * days * 24


def test_stats_by_agent_and_model(account: Account) -> None:
    now = _now()
    yesterday = now - datetime.timedelta(days=1)
    with account.sdk() as sdk:
        sdk.post(
            "/v1/ingest",
            json=batch(
                event(agent="a", model="m1", cost_nanos=10, started_at=_at(now)),
                event(agent="a", model="m2", cost_nanos=20, started_at=_at(now)),
                event(agent="b", model="m1", cost_nanos=40, started_at=_at(yesterday)),
            ),
        )
    daily = account.client.get("/v1/dashboard/stats", params={"granularity": "day", "days": 7})
    assert daily.status_code == 200
    body = daily.json()
    by_agent = {(r["bucket"], r["agent"]): r["cost_nanos"] for r in body["by_agent"]}
    assert by_agent == {
        (now.date().isoformat(), "a"): 30,
        (yesterday.date().isoformat(), "b"): 40,
    }
    by_model = {(r["bucket"], r["model"]): r["cost_nanos"] for r in body["by_model"]}
    assert by_model[(now.date().isoformat(), "m2")] == 20
    hourly = account.client.get("/v1/dashboard/stats", params={"granularity": "hour", "days": 2})
    hours = {r["bucket"]: r["cost_nanos"] for r in hourly.json()["by_agent"] if r["agent"] == "a"}
    this_hour = now.replace(minute=0, second=0, microsecond=0).isoformat()
    assert hours == {this_hour: 30}
    bad = account.client.get("/v1/dashboard/stats", params={"granularity": "week"})
    assert bad.status_code == 400


def test_agent_detail_has_spend_budgets_and_status(account: Account) -> None:
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event(cost_nanos=42)))
    account.client.post(
        "/v1/agents/research-bot/budgets",
        json={"kind": "usd", "period": "monthly", "limit": 5_000_000_000},
    )
    detail = account.client.get("/v1/agents/research-bot").json()
    assert detail["status"] == "running"
    assert detail["spend_today"]["cost_nanos"] == 42
    assert detail["spend_month"]["cost_nanos"] == 42
    assert detail["budgets"][0]["limit_usd"] == "$5.00"
    listed = account.client.get("/v1/agents").json()
    assert listed[0]["spend_today"]["cost_nanos"] == 42


def test_budget_crud(account: Account) -> None:
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event()))
    created = account.client.post(
        "/v1/budgets", json={"kind": "usd", "period": "daily", "limit_usd": 1.5}
    )
    assert created.status_code == 201
    budget = created.json()
    assert budget["scope"] == "org" and budget["limit"] == 1_500_000_000
    updated = account.client.patch(f"/v1/budgets/{budget['id']}", json={"limit_usd": "2"})
    assert updated.status_code == 200 and updated.json()["limit"] == 2_000_000_000
    assert account.client.get(f"/v1/budgets/{budget['id']}").json()["limit_usd"] == "$2.00"
    assert len(account.client.get("/v1/budgets").json()) == 1
    bad = account.client.post(
        "/v1/budgets", json={"kind": "tokens", "period": "daily", "limit_usd": 3}
    )
    assert bad.status_code == 400
    assert account.client.delete(f"/v1/budgets/{budget['id']}").status_code == 204
    assert account.client.get(f"/v1/budgets/{budget['id']}").status_code == 404


def test_alert_rule_crud(account: Account) -> None:
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event()))
    rule = {
        "name": "80% of daily",
        "agent": "research-bot",
        "kind": "usd",
        "period": "daily",
        "threshold": 800_000_000,
        "channel": "slack",
        "target": "https://hooks.slack.example/x",
    }
    created = account.client.post("/v1/alert-rules", json=rule)
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    assert created.json()["threshold_usd"] == "$0.80"
    patched = account.client.patch(f"/v1/alert-rules/{rule_id}", json={"enabled": False})
    assert patched.json()["enabled"] is False
    assert [r["id"] for r in account.client.get("/v1/alert-rules").json()] == [rule_id]
    assert account.client.delete(f"/v1/alert-rules/{rule_id}").status_code == 204
    assert account.client.get(f"/v1/alert-rules/{rule_id}").status_code == 404


def test_pricing_is_public_and_from_genai_prices(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as anon:
        response = anon.get("/v1/pricing", params={"q": "gpt-4o-mini", "provider": "openai"})
    assert response.status_code == 200
    models = {m["model"]: m for m in response.json()["models"]}
    assert models["gpt-4o-mini"]["input_per_mtok"] == "0.15"
    assert models["gpt-4o-mini"]["output_per_mtok"] == "0.6"


def test_status_and_openapi_schema(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as anon:
        status = anon.get("/v1/status").json()
        schema = anon.get("/schema/openapi.json")
    assert status["database"] == "ok" and status["version"]
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/v1/ingest", "/v1/control/stream", "/v1/agents/{name}/kill", "/v1/pricing"):
        assert path in paths


def test_unknown_route_and_method_are_clean_4xx(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as anon:
        missing = anon.get("/v1/nope")
        wrong_method = anon.put("/v1/status")
    assert missing.status_code == 404 and "Traceback" not in missing.text
    assert wrong_method.status_code == 405


def test_ids_above_int32_are_400_on_every_database(account: Account) -> None:
    # Ids are int32 on PostgreSQL: a larger one is refused like 0 is, never a 500.
    for big in (2**31, 2**63 - 1):
        for method, path in (
            ("GET", f"/v1/runs/{big}"),
            ("GET", f"/v1/runs/{big}/events"),
            ("DELETE", f"/v1/keys/{big}"),
            ("POST", f"/v1/keys/{big}/rotate"),
            ("GET", f"/v1/budgets/{big}"),
            ("DELETE", f"/v1/budgets/{big}"),
            ("GET", f"/v1/alert-rules/{big}"),
            ("DELETE", f"/v1/alert-rules/{big}"),
            ("GET", f"/v1/channels/{big}"),
            ("DELETE", f"/v1/channels/{big}"),
        ):
            answer = account.client.request(method, path)
            assert answer.status_code == 400, (method, path, answer.status_code, answer.text)
    assert account.client.get(f"/v1/runs/{2**31 - 1}").status_code == 404


def test_run_detail_counts_the_whole_run_and_pages_from_its_newest_call(
    account: Account,
) -> None:
    # More calls than one page of the timeline: the totals are the run's, not the page's,
    # and the end of a runaway loop is what a newest-first page shows.
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    calls = [
        event(
            run_id="loop",
            started_at=_at(start + datetime.timedelta(seconds=i)),
            cost_nanos=1_000_000,
            usage={"input_tokens": 10, "output_tokens": 5},
        )
        for i in range(620)
    ]
    calls.append(
        event(
            run_id="loop",
            started_at=_at(start + datetime.timedelta(seconds=620)),
            status="refused",
            refusal_reason="budget",
            cost_nanos=0,
            usage={"input_tokens": 0, "output_tokens": 0},
        )
    )
    with account.sdk() as sdk:
        assert sdk.post("/v1/ingest", json=batch(*calls)).json()["accepted"] == 621
    run_id = account.client.get("/v1/agents/research-bot/runs").json()[0]["id"]
    run = account.client.get(f"/v1/runs/{run_id}").json()
    assert run["cost_nanos"] == 620_000_000
    assert run["totals"] == {
        "events": 621,
        "refused": 1,
        "input_tokens": 6200,
        "output_tokens": 3100,
        "cost_nanos": 620_000_000,
    }
    events = f"/v1/runs/{run_id}/events"
    newest = account.client.get(events, params={"order": "newest", "limit": 200}).json()
    assert [e["started_at"][:19] for e in newest[:2]] == [
        "2025-01-01T00:10:20",
        "2025-01-01T00:10:19",
    ]
    assert newest[0]["status"] == "refused"
    older = account.client.get(
        events, params={"order": "newest", "limit": 500, "offset": 200}
    ).json()
    assert len(older) == 421
    seen = {e["id"] for e in newest} | {e["id"] for e in older}
    assert len(seen) == 621
    # Without paging parameters the oldest calls come first, as before.
    assert account.client.get(events).json()[0]["started_at"][:19] == "2025-01-01T00:00:00"
