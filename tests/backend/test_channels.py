"""/v1/channels: secrets encrypted and masked, CRUD, org isolation; alert rules from
/v1/alert-rules deliver through a named channel once per period; an agent budget at 100%
stops that agent only."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.backend.conftest import batch, event
from tests.backend.ops_helpers import (  # noqa: F401 - accounts_fixture is a fixture
    Process,
    accounts_fixture,
    fresh_postgres,
    recorder,
    start_process,
    wait_for,
)

HOOK_PATH = "/services/T000/B000/" + "k" * 24


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "db.sqlite")
    else:
        with fresh_postgres() as url:
            yield url


@pytest.fixture
def backend(database: str, tmp_path: Path) -> Iterator[Process]:
    env = {
        "AGENTKAVACH_DATABASE_URL": database,
        "AGENTKAVACH_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "AGENTKAVACH_ALERT_RETRY_SECONDS": "1",
        "AGENTKAVACH_ALERT_INTERVAL_SECONDS": "0.5",
    }
    proc = start_process(env, tmp_path / "backend.log")
    yield proc
    proc.stop()


def test_channel_crud_masks_secrets_and_isolates_orgs(backend: Process, accounts: Any) -> None:
    account, other = accounts(backend.url), accounts(backend.url)
    hook = "https://hooks.slack.com" + HOOK_PATH
    created = account.client.post(
        "/v1/channels",
        json={"name": "ops", "kind": "slack", "secrets": {"webhook_url": hook}},
    )
    assert created.status_code == 201, created.text
    channel = created.json()
    assert channel["secrets"] == {"webhook_url": "https://hooks.slack.com/********"}
    channel_id = channel["id"]
    assert hook not in account.client.get(f"/v1/channels/{channel_id}").text

    # Settings change without touching the secret; then the secret is replaced.
    renamed = account.client.patch(
        f"/v1/channels/{channel_id}", json={"name": "ops-2", "config": {"thresholds": [0.8]}}
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["config"] == {"thresholds": [0.8]}
    assert renamed.json()["secrets"] == {"webhook_url": "https://hooks.slack.com/********"}
    rotated = account.client.patch(
        f"/v1/channels/{channel_id}",
        json={"secrets": {"webhook_url": "https://hooks.slack.com/services/T/B/" + "z" * 20}},
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secrets"] == {"webhook_url": "https://hooks.slack.com/********"}
    # A short token at the end of a URL is not shown, not even its last characters.
    webhook = account.client.post(
        "/v1/channels",
        json={
            "name": "relay",
            "kind": "webhook",
            "secrets": {"url": "https://relay.example.com/" + "h" * 20 + "?token=abc"},
        },
    )
    assert webhook.status_code == 201, webhook.text
    assert webhook.json()["secrets"]["url"] == "https://relay.example.com/********"
    assert account.client.delete(f"/v1/channels/{webhook.json()['id']}").status_code == 204

    bad = account.client.post(
        "/v1/channels",
        json={"name": "x", "kind": "slack", "secrets": {"webhook_url": "http://example.com/h"}},
    )
    assert bad.status_code == 400 and "https" in bad.json()["detail"]
    unknown = account.client.post(
        "/v1/channels",
        json={"name": "y", "kind": "slack", "config": {"colour": "red"}, "secrets": {}},
    )
    assert unknown.status_code == 400 and "colour" in unknown.json()["detail"]
    duplicate = account.client.post(
        "/v1/channels", json={"name": "ops-2", "kind": "slack", "secrets": {"webhook_url": hook}}
    )
    assert duplicate.status_code == 409

    assert other.client.get(f"/v1/channels/{channel_id}").status_code == 404
    assert other.client.delete(f"/v1/channels/{channel_id}").status_code == 404
    assert other.client.get("/v1/channels").json() == []
    assert account.client.delete(f"/v1/channels/{channel_id}").status_code == 204
    assert account.client.get("/v1/channels").json() == []


def test_alert_rule_sends_through_a_named_channel_once_per_period(
    backend: Process, accounts: Any
) -> None:
    account = accounts(backend.url)
    with recorder(reply="ok") as slack:
        made = account.client.post(
            "/v1/channels",
            json={
                "name": "team-slack",
                "kind": "slack",
                "secrets": {"webhook_url": slack.url + HOOK_PATH},
            },
        )
        assert made.status_code == 201
        rule = account.client.post(
            "/v1/alert-rules",
            json={
                "name": "daily spend",
                "kind": "usd",
                "period": "daily",
                "threshold": 5000,
                "channel": "slack",
                "target": "team-slack",
            },
        )
        assert rule.status_code == 201, rule.text
        with account.sdk() as sdk:
            assert sdk.post("/v1/ingest", json=batch(event(cost_nanos=3000))).status_code == 202
            time.sleep(0.5)
            assert slack.requests == []
            assert sdk.post("/v1/ingest", json=batch(event(cost_nanos=3000))).status_code == 202
            assert wait_for(lambda: len(slack.requests) == 1, 5)
            assert sdk.post("/v1/ingest", json=batch(event(cost_nanos=3000))).status_code == 202
            time.sleep(0.5)
        assert len(slack.requests) == 1
        assert slack.requests[0][0] == HOOK_PATH
        assert "alert rule daily spend" in str(slack.bodies()[0])
        history = account.client.get("/v1/alerts").json()
        assert [h["kind"] for h in history] == ["threshold"]


def test_alert_rule_url_target_is_masked_for_members_and_kept_on_edit(
    backend: Process, accounts: Any
) -> None:
    """A Slack or webhook URL in a rule carries its token: members (viewers too) see its
    scheme and host only, and an edit that sends the masked target back keeps the real one."""
    account = accounts(backend.url)
    token = "k" * 24
    invited = account.client.post(
        "/v1/orgs/members", json={"email": "viewer@example.com", "role": "viewer"}
    ).json()
    with httpx.Client(base_url=backend.url) as anon:
        login = anon.post(
            "/v1/auth/login",
            json={"email": "viewer@example.com", "password": invited["one_time_password"]},
        )
    viewer = httpx.Client(
        base_url=backend.url, headers={"Authorization": f"Bearer {login.json()['access_token']}"}
    )
    with recorder(reply="ok") as slack, viewer:
        created = account.client.post(
            "/v1/alert-rules",
            json={
                "name": "daily spend",
                "kind": "usd",
                "period": "daily",
                "threshold": 5000,
                "channel": "slack",
                "target": slack.url + HOOK_PATH,
            },
        )
        assert created.status_code == 201, created.text
        rule = created.json()
        shown = slack.url + "/********"
        assert rule["target"] == shown
        rule_id = rule["id"]
        answers = [
            viewer.get("/v1/alert-rules").json()[0],
            viewer.get(f"/v1/alert-rules/{rule_id}").json(),
            account.client.get("/v1/alert-rules").json()[0],
        ]
        assert [a["target"] for a in answers] == [shown] * 3
        # The dashboard sends the rule back as it showed it: the stored URL stays.
        edited = account.client.patch(
            f"/v1/alert-rules/{rule_id}", json={"name": "spend", "target": shown}
        )
        assert edited.status_code == 200, edited.text
        assert (edited.json()["name"], edited.json()["target"]) == ("spend", shown)
        with account.sdk() as sdk:
            assert sdk.post("/v1/ingest", json=batch(event(cost_nanos=6000))).status_code == 202
            assert wait_for(lambda: len(slack.requests) == 1, 5)
        assert slack.requests[0][0] == HOOK_PATH
    backend.stop()
    assert token not in backend.log.read_text()


def test_agent_budget_at_100_percent_stops_that_agent_only(backend: Process, accounts: Any) -> None:
    account = accounts(backend.url)
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event(agent="bot-x"), event(agent="bot-y")))
        budget = account.client.post(
            "/v1/agents/bot-x/budgets", json={"kind": "calls", "period": "daily", "limit": 3}
        )
        assert budget.status_code == 201, budget.text
        sdk.post("/v1/ingest", json=batch(event(agent="bot-x"), event(agent="bot-y")))
        time.sleep(0.5)
        assert account.client.get("/v1/agents/bot-x").json()["status"] == "running"
        answer = sdk.post("/v1/ingest", json=batch(event(agent="bot-x")))
        assert answer.status_code == 202

        def status(name: str) -> str:
            return str(account.client.get(f"/v1/agents/{name}").json()["status"])

        assert wait_for(lambda: status("bot-x") == "stopped", 3)
        assert status("bot-y") == "running"
        kills = [h for h in account.client.get("/v1/alerts").json() if h["kind"] == "kill"]
        assert len(kills) == 1 and "agent daily calls budget is spent" in kills[0]["message"]


class _SMTPSink:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def test_email_and_signed_webhook_channels_deliver_once(backend: Process, accounts: Any) -> None:
    from aiosmtpd.controller import Controller

    from kavach.alerts import sign_webhook

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = _SMTPSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    account = accounts(backend.url)
    try:
        with recorder(reply={"ok": True}) as hook:
            for body in (
                {
                    "name": "mail",
                    "kind": "email",
                    "config": {
                        "to": ["oncall@example.com"],
                        "smtp_host": "127.0.0.1",
                        "smtp_port": port,
                        "security": "none",
                        "thresholds": [1.0],
                    },
                },
                {
                    "name": "hook",
                    "kind": "webhook",
                    "config": {"thresholds": [1.0]},
                    "secrets": {"url": hook.url + "/alerts", "signing_secret": "s3cret-signing"},
                },
            ):
                made = account.client.post("/v1/channels", json=body)
                assert made.status_code == 201, made.text
            account.client.post(
                "/v1/budgets", json={"kind": "calls", "period": "daily", "limit": 2}
            )
            with account.sdk() as sdk:
                for _ in range(3):
                    assert sdk.post("/v1/ingest", json=batch(event())).status_code == 202
            assert wait_for(lambda: len(sink.messages) == 1 and len(hook.requests) == 1, 5)
            time.sleep(0.5)
            assert len(sink.messages) == 1 and len(hook.requests) == 1
            rcpt, content = sink.messages[0]
            assert rcpt == ["oncall@example.com"] and b"org daily calls budget" in content
            path, headers, raw = hook.requests[0]
            assert path == "/alerts"
            stamp = headers["X-AgentKavach-Timestamp"]
            assert headers["X-AgentKavach-Signature"] == sign_webhook("s3cret-signing", stamp, raw)
            assert "s3cret-signing" not in account.client.get("/v1/channels").text
    finally:
        controller.stop()


def test_a_failed_delivery_is_retried_later_and_sent_once(backend: Process, accounts: Any) -> None:
    account = accounts(backend.url)
    with recorder(reply="server_error", status=500) as slack:
        made = account.client.post(
            "/v1/channels",
            json={
                "name": "flaky",
                "kind": "slack",
                "config": {"thresholds": [1.0]},
                "secrets": {"webhook_url": slack.url + HOOK_PATH},
            },
        )
        assert made.status_code == 201
        account.client.post("/v1/budgets", json={"kind": "calls", "period": "daily", "limit": 1})
        with account.sdk() as sdk:
            assert sdk.post("/v1/ingest", json=batch(event())).status_code == 202
        # Three attempts, all answered 500: the delivery waits for its retry window.
        assert wait_for(lambda: len(slack.requests) == 3, 5)
        slack.status, slack.reply = 200, "ok"
        # The periodic sweep takes it over once the window has passed, and sends it once.
        assert wait_for(lambda: len(slack.requests) == 4, 5)
        time.sleep(2.0)
        assert len(slack.requests) == 4
        outcomes = [
            h["details"]["outcome"]
            for h in account.client.get("/v1/alerts").json()
            if h["kind"] == "threshold"
        ]
        assert sorted(outcomes) == ["failed", "sent"]
