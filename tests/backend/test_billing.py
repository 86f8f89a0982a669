"""Plans and Stripe billing: the webhook (signed with the stripe library's own helper),
checkout and portal against a loopback stand-in for Stripe's API, plan limits at ingest,
and billing switched off when no Stripe key is configured."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import stripe

from tests.backend.conftest import batch, event
from tests.backend.ops_helpers import (  # noqa: F401 - accounts_fixture is a fixture
    Process,
    Recorder,
    accounts_fixture,
    fresh_postgres,
    recorder,
    start_process,
)

WHSEC = "whsec_test_" + "a" * 24
PRICE_PRO, PRICE_MAX = "price_pro_test", "price_max_test"


def _stripe_reply(path: str, body: bytes) -> dict[str, Any]:
    if path.startswith("/v1/checkout/sessions"):
        return {
            "id": "cs_test_123",
            "object": "checkout.session",
            "url": "https://checkout.stripe.com/c/pay/cs_test_123",
        }
    if path.startswith("/v1/billing_portal/sessions"):
        return {
            "id": "bps_test_123",
            "object": "billing_portal.session",
            "url": "https://billing.stripe.com/p/session/test_123",
        }
    return {"error": {"message": "unknown path", "type": "invalid_request_error"}}


@pytest.fixture
def stripe_api() -> Iterator[Recorder]:
    with recorder(reply=_stripe_reply) as rec:
        yield rec


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "db.sqlite")
    else:
        with fresh_postgres() as url:
            yield url


@pytest.fixture
def billing_backend(database: str, tmp_path: Path, stripe_api: Recorder) -> Iterator[Process]:
    env = {
        "AGENTKAVACH_DATABASE_URL": database,
        "STRIPE_SECRET_KEY": "sk_test_" + "x" * 24,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "AGENTKAVACH_STRIPE_PRICE_PRO": PRICE_PRO,
        "AGENTKAVACH_STRIPE_PRICE_MAX": PRICE_MAX,
        "AGENTKAVACH_STRIPE_API_BASE": stripe_api.url,
        "AGENTKAVACH_PUBLIC_URL": "https://kavach.example.com",
    }
    proc = start_process(env, tmp_path / "backend.log")
    yield proc
    proc.stop()


def _signed(event_body: dict[str, Any], secret: str = WHSEC) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(event_body)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret)
    return payload.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }


def _completed(org_id: int, plan: str = "pro") -> dict[str, Any]:
    return _event(
        "checkout.session.completed",
        {
            "id": "cs_test_123",
            "object": "checkout.session",
            "client_reference_id": str(org_id),
            "customer": "cus_test_1",
            "subscription": "sub_test_1",
            "metadata": {"org_id": str(org_id), "plan": plan},
        },
    )


def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url + "/v1/billing/webhook", content=body, headers=headers, timeout=10)


def test_signed_checkout_completed_upgrades_the_org(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    before = account.client.get("/v1/billing/plan").json()
    assert before["billing"] == "enabled" and before["plan"] == "free"
    assert before["limits"] == {"agents": 3, "events_per_month": 100_000, "retention_days": 7}

    body, headers = _signed(_completed(account.org_id, "pro"))
    answer = _post(billing_backend.url, body, headers)
    assert answer.status_code == 200, answer.text
    plan = account.client.get("/v1/billing/plan").json()
    assert plan["plan"] == "pro" and plan["limits"]["agents"] == 25
    # The dashboard's Billing page reads /v1/billing: usage keyed like the limits.
    page = account.client.get("/v1/billing").json()
    assert page["plan"] == "pro" and page["self_hosted"] is False
    assert set(page["usage"]) == {"agents", "events_per_month"}

    # Another organization is untouched.
    other = accounts(billing_backend.url)
    assert other.client.get("/v1/billing/plan").json()["plan"] == "free"


def test_the_billing_page_shows_usage_only_for_limits_that_have_one(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    with account.sdk() as sdk:
        assert sdk.post("/v1/ingest", json=batch(event())).status_code == 202
    page = account.client.get("/v1/billing").json()
    assert page["limits"] == {"agents": 3, "events_per_month": 100_000, "retention_days": 7}
    # Retention is a setting, not something used up: no "used 7 of 7".
    assert page["usage"] == {"agents": 1, "events_per_month": 1}


def test_bad_signature_is_refused_and_changes_nothing(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    event_body = _completed(account.org_id, "max")
    body, _ = _signed(event_body)
    _, wrong = _signed(event_body, secret="whsec_wrong_" + "b" * 20)
    for headers in (wrong, {"Content-Type": "application/json"}):
        answer = _post(billing_backend.url, body, headers)
        assert answer.status_code == 400
        assert answer.json()["detail"] == "invalid Stripe signature"
    # A body changed after signing fails too.
    _, good = _signed(event_body)
    tampered = body.replace(b'"max"', b'"pro"')
    assert _post(billing_backend.url, tampered, good).status_code == 400
    assert account.client.get("/v1/billing/plan").json()["plan"] == "free"


def test_replayed_event_changes_nothing(billing_backend: Process, accounts: Any) -> None:
    account = accounts(billing_backend.url)
    upgrade = _completed(account.org_id, "pro")
    body, headers = _signed(upgrade)
    assert _post(billing_backend.url, body, headers).json()["outcome"].endswith("on pro")
    cancel = _event(
        "customer.subscription.deleted",
        {"id": "sub_test_1", "object": "subscription", "customer": "cus_test_1"},
    )
    assert _post(billing_backend.url, *_signed(cancel)).status_code == 200
    assert account.client.get("/v1/billing/plan").json()["plan"] == "free"
    # Stripe retries (or someone replays) the old upgrade, freshly signed: nothing changes.
    replay = _post(billing_backend.url, *_signed(upgrade))
    assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    assert account.client.get("/v1/billing/plan").json()["plan"] == "free"


def test_subscription_updated_moves_the_plan_by_price(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    assert _post(billing_backend.url, *_signed(_completed(account.org_id))).status_code == 200
    updated = _event(
        "customer.subscription.updated",
        {
            "id": "sub_test_1",
            "object": "subscription",
            "customer": "cus_test_1",
            "status": "active",
            "items": {"data": [{"price": {"id": PRICE_MAX}, "current_period_end": 1893456000}]},
        },
    )
    assert _post(billing_backend.url, *_signed(updated)).status_code == 200
    plan = account.client.get("/v1/billing/plan").json()
    assert plan["plan"] == "max" and plan["limits"]["agents"] is None
    assert plan["current_period_end"].startswith("2030-01-01")


def test_checkout_and_portal_call_stripe(
    billing_backend: Process, stripe_api: Recorder, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    # No customer yet: the portal says to subscribe first.
    refused = account.client.post("/v1/billing/portal", json={})
    assert refused.status_code == 409 and "checkout" in refused.json()["detail"]

    answer = account.client.post("/v1/billing/checkout", json={"plan": "pro"})
    assert answer.status_code == 201, answer.text
    assert answer.json() == {
        "id": "cs_test_123",
        "url": "https://checkout.stripe.com/c/pay/cs_test_123",
    }
    path, headers, body = stripe_api.requests[-1]
    assert path == "/v1/checkout/sessions"
    assert headers["Authorization"] == "Bearer sk_test_" + "x" * 24
    form = parse_qs(body.decode())
    assert form["mode"] == ["subscription"]
    assert form["line_items[0][price]"] == [PRICE_PRO]
    assert form["client_reference_id"] == [str(account.org_id)]
    assert form["metadata[plan]"] == ["pro"]
    assert form["customer_email"] == [account.email]
    assert form["success_url"][0].startswith("https://kavach.example.com/")

    assert _post(billing_backend.url, *_signed(_completed(account.org_id))).status_code == 200
    portal = account.client.post("/v1/billing/portal", json={})
    assert portal.status_code == 201, portal.text
    assert portal.json()["url"] == "https://billing.stripe.com/p/session/test_123"
    path, _, body = stripe_api.requests[-1]
    assert path == "/v1/billing_portal/sessions"
    assert parse_qs(body.decode())["customer"] == ["cus_test_1"]


def test_plan_limit_on_agents_is_a_clear_429(billing_backend: Process, accounts: Any) -> None:
    account = accounts(billing_backend.url)
    with account.sdk() as sdk:
        three = [event(agent=f"bot-{i}") for i in range(3)]
        assert sdk.post("/v1/ingest", json=batch(*three)).status_code == 202
        # Known agents keep reporting.
        assert sdk.post("/v1/ingest", json=batch(event(agent="bot-1"))).status_code == 202
        refused = sdk.post("/v1/ingest", json=batch(event(agent="bot-4")))
        assert refused.status_code == 429
        body = refused.json()
        assert body["reason"] == "plan_agents"
        assert "Free plan includes 3 agents" in body["detail"]
        assert "https://kavach.example.com/billing" in body["detail"]
        assert int(refused.headers["Retry-After"]) == 3600
        # After an upgrade the same batch goes through.
        assert _post(billing_backend.url, *_signed(_completed(account.org_id))).status_code == 200
        assert sdk.post("/v1/ingest", json=batch(event(agent="bot-4"))).status_code == 202


def _post_at_once(url: str, key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            return await asyncio.gather(*(client.post("/v1/ingest", json=b) for b in bodies))

    return asyncio.run(post_all())


def test_concurrent_first_batches_of_new_agents_cannot_pass_the_agent_limit(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    key = account.new_key()
    bodies = [batch(event(agent=f"bot-{i}")) for i in range(10)]
    answers = _post_at_once(billing_backend.url, key, bodies)
    assert sorted(a.status_code for a in answers) == [202] * 3 + [429] * 7
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["reason"] == "plan_agents"
        assert "Free plan includes 3 agents" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) == 3600
    admitted = sorted(
        b["events"][0]["agent"]
        for b, a in zip(bodies, answers, strict=True)
        if a.status_code == 202
    )
    assert [a["name"] for a in account.client.get("/v1/agents").json()] == admitted
    assert account.client.get("/v1/billing/plan").json()["usage"]["agents"] == 3


def test_self_hosted_has_billing_off_and_no_limits(tmp_path: Path, accounts: Any) -> None:
    proc = start_process(
        {"AGENTKAVACH_DATABASE_URL": str(tmp_path / "db.sqlite")}, tmp_path / "b.log"
    )
    try:
        account = accounts(proc.url)
        assert account.client.get("/v1/billing/plan").json() == {
            "billing": "disabled",
            "plan": "self-hosted",
            "limits": None,
            "message": "billing is disabled on this server (no STRIPE_SECRET_KEY is "
            "configured): it is self-hosted and has no plan limits",
        }
        assert account.client.get("/v1/billing").status_code == 404  # the page stays hidden
        for path, body in (("/v1/billing/checkout", {"plan": "pro"}), ("/v1/billing/portal", {})):
            answer = account.client.post(path, json=body)
            assert answer.status_code == 404
            assert "billing is disabled" in answer.json()["detail"]
        with account.sdk() as sdk:
            many = [event(agent=f"bot-{i}") for i in range(30)]
            assert sdk.post("/v1/ingest", json=batch(*many)).status_code == 202
    finally:
        proc.stop()


def test_the_sdk_logs_the_plan_limit_once_and_keeps_the_events(
    billing_backend: Process, tmp_path: Path, accounts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from kavach.reporting.api import BackendAPI, BackendConfig
    from kavach.reporting.sender import Reporter

    account = accounts(billing_backend.url)
    api = BackendAPI(BackendConfig(api_key=account.new_key(), endpoint=billing_backend.url))
    # A long flush interval: the five events go in one batch, sent when flush() asks (with
    # 10 ms, a slow machine sent the first three alone, and the backend rightly took them).
    reporter = Reporter(api, spool_root=tmp_path / "spool", batch_size=10, flush_interval=60)

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if "plan limit" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="kavach"):
        for i in range(5):
            reporter.enqueue(event(agent=f"agent-{i}"))
        deadline = time.monotonic() + 30
        while not messages() and time.monotonic() < deadline:
            assert not reporter.flush(timeout=0.5)
        assert not reporter.flush(timeout=0.5)  # refused again: not logged again
        reporter.close(timeout=1)
    assert len(messages()) == 1
    message = messages()[0]
    assert "Free plan includes 3 agents" in message and "3600" in message
    assert reporter.pending == 5  # kept on disk for the next try


def test_a_late_older_event_does_not_undo_a_newer_one(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    upgrade = _completed(account.org_id, "pro")
    assert _post(billing_backend.url, *_signed(upgrade)).status_code == 200
    now = upgrade["created"]
    subscription = {"id": "sub_test_1", "object": "subscription", "customer": "cus_test_1"}
    updated = _event(
        "customer.subscription.updated",
        {
            **subscription,
            "status": "active",
            "items": {"data": [{"price": {"id": PRICE_MAX}, "current_period_end": 1893456000}]},
        },
    )
    updated["created"] = now + 10
    deleted = _event("customer.subscription.deleted", subscription)
    deleted["created"] = now + 20
    # Stripe delivers the cancellation first and the earlier upgrade to max after it.
    assert _post(billing_backend.url, *_signed(deleted)).json()["outcome"].endswith("deleted")
    late = _post(billing_backend.url, *_signed(updated))
    assert late.status_code == 200 and late.json()["outcome"] == "stale"
    plan = account.client.get("/v1/billing/plan").json()
    assert plan["plan"] == "free"
    # A newer event still applies.
    again = _completed(account.org_id, "max")
    again["created"] = now + 30
    assert _post(billing_backend.url, *_signed(again)).json()["outcome"].endswith("on max")
    assert account.client.get("/v1/billing/plan").json()["plan"] == "max"


def _backdated(count: int, days: int = 40) -> list[dict[str, Any]]:
    """Events that claim to have started ``days`` ago: always in an earlier month."""
    import datetime

    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)
    return [
        {
            "id": uuid.uuid4().hex,
            "agent": "bot",
            "provider": "openai",
            "model": "gpt-4o",
            "status": "ok",
            "started_at": started.isoformat(),
            "cost_nanos": 1,
        }
        for _ in range(count)
    ]


def test_backdated_events_count_toward_this_months_usage(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    with account.sdk() as sdk:
        assert sdk.post("/v1/ingest", json=batch(*_backdated(250))).status_code == 202
        assert sdk.post("/v1/ingest", json=batch(event(agent="bot"))).status_code == 202
        replay = batch(*_backdated(3))
        assert sdk.post("/v1/ingest", json=replay).status_code == 202
        assert sdk.post("/v1/ingest", json=replay).json()["duplicates"] == 3  # counted once
    plan = account.client.get("/v1/billing/plan").json()
    assert plan["usage"]["events_this_month"] == 254
    assert account.client.get("/v1/billing").json()["usage"]["events_per_month"] == 254


def test_backdated_events_cannot_get_past_the_monthly_event_limit(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    with account.sdk() as sdk:
        for _ in range(20):  # the Free plan's 100,000 events, all dated 40 days ago
            answer = sdk.post("/v1/ingest", json=batch(*_backdated(5000)))
            assert answer.status_code == 202, answer.text
        refused = sdk.post("/v1/ingest", json=batch(*_backdated(1)))
        assert refused.status_code == 429, refused.text
        assert refused.json()["reason"] == "plan_events"
        assert "100,000 were received this month" in refused.json()["detail"]


def test_concurrent_batches_cannot_pass_the_monthly_event_limit(
    billing_backend: Process, accounts: Any
) -> None:
    account = accounts(billing_backend.url)
    key = account.new_key()
    with account.sdk(key) as sdk:
        for _ in range(19):  # 95,000 of the Free plan's 100,000 events
            assert sdk.post("/v1/ingest", json=batch(*_backdated(5000))).status_code == 202
    answers = _post_at_once(billing_backend.url, key, [batch(*_backdated(1000)) for _ in range(10)])
    assert sorted(a.status_code for a in answers) == [202] * 5 + [429] * 5
    assert {a.json()["reason"] for a in answers if a.status_code == 429} == {"plan_events"}
    assert account.client.get("/v1/billing/plan").json()["usage"]["events_this_month"] == 100_000


def test_a_resent_batch_at_the_monthly_event_limit_is_not_refused(
    billing_backend: Process, accounts: Any
) -> None:
    """The SDK sends a batch again when the reply was lost; at the limit, the events it
    already stored add nothing, so the early check must not refuse them."""
    account = accounts(billing_backend.url)
    with account.sdk() as sdk:
        for size in [5000] * 19 + [4000]:  # 99,000 of the Free plan's 100,000 events
            assert sdk.post("/v1/ingest", json=batch(*_backdated(size))).status_code == 202
        last = batch(*_backdated(1000))
        first = sdk.post("/v1/ingest", json=last)
        assert first.status_code == 202 and first.json()["accepted"] == 1000  # at the limit
        resent = sdk.post("/v1/ingest", json=last)
        assert resent.status_code == 202, resent.text
        assert (resent.json()["accepted"], resent.json()["duplicates"]) == (0, 1000)
        # One new event with the resent ones is still one too many, and stores nothing.
        mixed = batch(*last["events"][:10], *_backdated(1))
        refused = sdk.post("/v1/ingest", json=mixed)
        assert refused.status_code == 429, refused.text
        assert refused.json()["reason"] == "plan_events"
    assert account.client.get("/v1/billing/plan").json()["usage"]["events_this_month"] == 100_000


def test_a_key_in_x_api_key_beside_another_bearer_is_held_to_the_plan(
    billing_backend: Process, accounts: Any
) -> None:
    """Ingest takes the key from X-API-Key when the bearer is not an API key; the plan and
    rate limits looked only at the bearer and let such a batch through unchecked."""
    account = accounts(billing_backend.url)
    key = account.new_key()
    headers = {"Authorization": "Bearer not-an-api-key", "X-API-Key": key}
    with httpx.Client(base_url=billing_backend.url, headers=headers, timeout=30) as sdk:
        for i in range(3):  # the Free plan's 3 agents
            assert sdk.post("/v1/ingest", json=batch(event(agent=f"bot-{i}"))).status_code == 202
        refused = sdk.post("/v1/ingest", json=batch(event(agent="bot-3")))
        assert refused.status_code == 429, refused.text
        assert refused.json()["reason"] == "plan_agents"
    assert account.client.get("/v1/billing/plan").json()["usage"]["agents"] == 3
