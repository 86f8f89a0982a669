"""Each channel against real receivers: a loopback HTTP server that records, a local SMTP server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import logging
import re
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kavach import AgentKavach, CallSpec, KavachConfigError, ThresholdCrossing, Usage
from kavach.alerts import Alert, AlertDispatcher, build_alerting
from kavach.alerts.channels import webhook as webhook_module
from kavach.alerts.rules import merge
from tests.kavach.alerts.support import HttpRecorder, Reply, alert_guard, spend

ROUTING_KEY = "R0123456789abcdef0123456789ABCDE"
SECRET = "whsec-0123456789abcdef"

# -- Slack ---------------------------------------------------------------------------------


def assert_block_kit(payload: dict[str, Any]) -> None:
    """The structure Slack's Block Kit accepts for these block types (text limits included)."""
    assert isinstance(payload["text"], str) and payload["text"]
    blocks = payload["blocks"]
    assert 0 < len(blocks) <= 50
    kinds = [b["type"] for b in blocks]
    assert kinds[0] == "header" and "section" in kinds and kinds[-1] == "context"
    for block in blocks:
        assert set(block) <= {"type", "text", "fields", "elements", "block_id", "accessory"}
        if block["type"] == "header":
            text = block["text"]
            assert text["type"] == "plain_text" and 0 < len(text["text"]) <= 150
        elif block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] in ("mrkdwn", "plain_text")
                assert 0 < len(block["text"]["text"]) <= 3000
            for f in block.get("fields", []):
                assert f["type"] in ("mrkdwn", "plain_text") and 0 < len(f["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        elif block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
            for e in block["elements"]:
                assert e["type"] in ("mrkdwn", "plain_text", "image") and e["text"]
        else:
            raise AssertionError(f"unexpected block {block['type']}")


def test_slack_block_kit_message_at_threshold(recorder: HttpRecorder) -> None:
    guard = alert_guard(
        105,
        channels=[AgentKavach.channel("slack", threshold=0.7, webhook_url=recorder.url + "/slack")],
        dashboard_url="https://app.agentkavach.dev/agents/bot",
    )
    spend(guard, 75)
    guard.close()
    [req] = recorder.at("/slack")
    payload = req.json()
    assert_block_kit(payload)
    header = payload["blocks"][0]["text"]["text"]
    assert header.startswith("WARNING: bot: daily budget passed 70%")
    fields = " ".join(f["text"] for f in payload["blocks"][2]["fields"])
    for expected in (
        "*Agent*\nbot",
        "daily (usd)",
        "$0.074 / $0.105",
        "*Remaining*\n$0.031",
        "*Resets*",
    ):
        assert expected in fields
    assert "https://app.agentkavach.dev/agents/bot" in payload["blocks"][-1]["elements"][0]["text"]
    assert "70%" in payload["text"]


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (400, "invalid_payload", "malformed"),
        (404, "channel_not_found", "no longer exists"),
        (403, "invalid_token", "revoked"),
    ],
)
def test_slack_errors_are_explained_logged_once_and_not_retried(
    recorder: HttpRecorder, caplog: pytest.LogCaptureFixture, status: int, code: str, words: str
) -> None:
    recorder.script("/T0/B0/tok3n", Reply(status, code))
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel(
                "slack", thresholds=[0.5, 0.7], webhook_url=recorder.url + "/T0/B0/tok3n"
            )
        ],
    )
    with caplog.at_level(logging.DEBUG, logger="kavach.alerts"):
        spend(guard, 75)
        guard.close()
    assert len(recorder.at("/T0/B0/tok3n")) == 2  # two alerts, no retries
    stats = guard.alerts.stats.channels["slack"]  # type: ignore[union-attr]
    assert stats.failed == 2 and stats.retries == 0
    assert code in (stats.last_error or "") and words in (stats.last_error or "")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert code in warnings[0].getMessage() and words in warnings[0].getMessage()
    assert "tok3n" not in caplog.text


# -- PagerDuty -----------------------------------------------------------------------------


def pd_guard(recorder: HttpRecorder, **kw: Any) -> AgentKavach:
    return alert_guard(
        105,
        channels=[
            AgentKavach.channel(
                "pagerduty",
                thresholds=[0.7, 0.9, 1.0],
                routing_key=ROUTING_KEY,
                api_url=recorder.url + "/v2/enqueue",
                **kw,
            )
        ],
    )


def assert_pd_event(event: dict[str, Any]) -> None:
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] in ("trigger", "resolve")
    assert isinstance(event["dedup_key"], str) and 0 < len(event["dedup_key"]) <= 255
    if event["event_action"] == "trigger":
        p = event["payload"]
        assert p["summary"] and len(p["summary"]) <= 1024
        assert p["source"]
        assert p["severity"] in ("critical", "error", "warning", "info")


def test_pagerduty_severity_by_threshold_one_incident_per_period(recorder: HttpRecorder) -> None:
    guard = alert_guard(
        100,
        channels=[
            AgentKavach.channel(
                "pagerduty",
                thresholds=[0.7, 0.9, 1.0],
                routing_key=ROUTING_KEY,
                api_url=recorder.url + "/v2/enqueue",
            )
        ],
        unknown_model_price=None,
    )
    # 100 calls of $0.001 against $0.100: the 100th reservation would need $0.001001, so
    # spend 99 and then a last call that lands exactly on the limit.
    spend(guard, 99)
    with guard.reserve(
        CallSpec(provider="openai", model="m", input_tokens=1000, max_output_tokens=0)
    ) as r:
        r.commit(Usage(input_tokens=1000))
    assert guard.killed
    guard.close()
    events = [r.json() for r in recorder.at("/v2/enqueue")]
    for e in events:
        assert_pd_event(e)
    by_severity = sorted(
        (e["payload"]["severity"], e["payload"]["custom_details"]["threshold"]) for e in events
    )
    assert by_severity == [("critical", "100%"), ("error", "90%"), ("warning", "70%")]
    assert len({e["dedup_key"] for e in events}) == 1
    assert "bot" in events[0]["dedup_key"] and "daily" in events[0]["dedup_key"]


def test_pagerduty_resolves_when_the_agent_is_resumed(recorder: HttpRecorder) -> None:
    guard = pd_guard(recorder)
    spend(guard, 75)
    recorder.wait_for("/v2/enqueue", 1)
    guard.kill("manual stop")
    guard.resume()
    guard.close()
    events = [r.json() for r in recorder.at("/v2/enqueue")]
    assert [e["event_action"] for e in events] == ["trigger", "resolve"]
    assert events[0]["dedup_key"] == events[1]["dedup_key"]
    assert_pd_event(events[1])


def crossing(period_id: str, threshold: float, resets_at: datetime | None) -> ThresholdCrossing:
    return ThresholdCrossing(
        agent="bot",
        budget="daily",
        budget_key=f"agent:bot:daily:{period_id}",
        unit="usd",
        period="daily",
        period_id=period_id,
        threshold=threshold,
        spent=int(threshold * 10**9),
        limit=10**9,
        resets_at=resets_at,
        at=datetime.now(UTC),
    )


def test_pagerduty_resolves_when_a_new_period_starts(recorder: HttpRecorder) -> None:
    config = merge(
        [
            AgentKavach.channel(
                "pagerduty", threshold=0.9, routing_key=ROUTING_KEY, api_url=recorder.url + "/pd"
            )
        ]
    )
    dispatcher = AlertDispatcher(config)
    later = datetime.now(UTC) + timedelta(days=1)
    # Yesterday's incident is resolved by the first crossing of today's period ...
    dispatcher.on_threshold(crossing("2026-11-27", 0.9, later))
    assert len(recorder.wait_for("/pd", 1)) == 1
    dispatcher.on_threshold(crossing("2026-11-28", 0.9, later))
    events = [r.json() for r in recorder.wait_for("/pd", 3)]
    actions = sorted((e["event_action"], e["dedup_key"].rsplit(":", 1)[1]) for e in events)
    assert actions == [
        ("resolve", "2026-11-27"),
        ("trigger", "2026-11-27"),
        ("trigger", "2026-11-28"),
    ]
    # ... and today's by the period's reset time, with no further crossing.
    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    dispatcher.on_threshold(crossing("2026-11-29", 0.9, soon))
    events = [r.json() for r in recorder.wait_for("/pd", 6, timeout=5)]
    resolved = [e["dedup_key"].rsplit(":", 1)[1] for e in events if e["event_action"] == "resolve"]
    assert sorted(resolved) == ["2026-11-27", "2026-11-28", "2026-11-29"]
    assert dispatcher.close()


def test_pagerduty_custom_template_filled_and_routing_key_injected(recorder: HttpRecorder) -> None:
    template = {
        "payload": {
            "summary": "{agent_name} used {pct}% of {budget_fmt} ({budget_type}), {remaining_fmt} left",
            "source": "billing",
            "custom_details": {
                "resets": "{resets_at}",
                "threshold": "{threshold}",
                "sev": "{severity}",
            },
        }
    }
    guard = pd_guard(recorder, template=template)
    spend(guard, 75)
    guard.close()
    [event] = [r.json() for r in recorder.at("/v2/enqueue")]
    assert_pd_event(event)
    assert event["payload"]["summary"] == "bot used 70% of $0.105 (daily), $0.031 left"
    assert event["payload"]["severity"] == "warning"
    assert event["payload"]["source"] == "billing"
    assert event["payload"]["custom_details"]["threshold"] == "70"
    assert event["payload"]["custom_details"]["resets"].endswith("+00:00")


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ({"payload": {"summary": "{agent} is over"}}, "unknown placeholder {agent}"),
        ({"payload": {"source": "x"}}, "payload.summary"),
        ({"summary": "{agent_name}"}, "'payload' object is required"),
        ({"payload": {"summary": "x", "severity": "urgent"}}, "payload.severity"),
        ({"routing_key": "k", "payload": {"summary": "x"}}, "routing_key"),
        ('{"payload": ', "not valid JSON"),
    ],
)
def test_pagerduty_template_checked_at_load(template: Any, words: str) -> None:
    with pytest.raises(KavachConfigError, match=re.escape(words)):
        AgentKavach.channel("pagerduty", threshold=0.9, routing_key=ROUTING_KEY, template=template)


# -- Webhook -------------------------------------------------------------------------------


def documented_verifier() -> Any:
    """The verification snippet exactly as the webhook module documents it."""
    doc = webhook_module.__doc__ or ""
    start = doc.index("    import hashlib")
    end = doc.index("    # e.g. in a Flask view")
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(doc[start:end]), namespace)  # noqa: S102 - our own docstring
    return namespace["verify_agentkavach"]


def test_webhook_signature_verifies_with_the_documented_snippet(recorder: HttpRecorder) -> None:
    guard = alert_guard(
        105,
        webhook_url=recorder.url + "/hook",
        webhook_secret=SECRET,
    )
    spend(guard, 75)
    guard.close()
    [req] = recorder.at("/hook")
    verify = documented_verifier()
    ts, sig = req.headers["x-agentkavach-timestamp"], req.headers["x-agentkavach-signature"]
    assert verify(SECRET, req.body, ts, sig)
    assert not verify("another-secret-0123456789", req.body, ts, sig)
    assert not verify(SECRET, req.body.replace(b"bot", b"bat"), ts, sig)
    assert not verify(SECRET, req.body, str(int(ts) - 3600), sig)
    body = req.json()
    assert body["type"] == "threshold" and body["agent"] == "bot"
    assert body["budget"]["threshold"] == 0.7 and body["budget"]["spent"] == 74_000_000
    expected = hmac.new(SECRET.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert sig == "sha256=" + expected


# -- Email ---------------------------------------------------------------------------------


def test_email_reaches_smtp_server_with_html_and_text_parts(smtp: Any) -> None:
    sink, port = smtp
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel(
                "email",
                threshold=0.9,
                to=["ops@example.com", "cto@example.com"],
                smtp_host="127.0.0.1",
                smtp_port=port,
            )
        ],
        dashboard_url="https://dash.example.com/bot",
    )
    spend(guard, 95)
    guard.close()
    [(mail_from, rcpts, raw)] = sink.messages
    assert rcpts == ["ops@example.com", "cto@example.com"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert "[ERROR] bot: daily budget passed 90%" in str(msg["Subject"])
    types = [part.get_content_type() for part in msg.walk()]
    assert "text/plain" in types and "text/html" in types
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Remaining: $0.01" in text and "https://dash.example.com/bot" in text
    assert "<table>" in html and "https://dash.example.com/bot" in html


def test_email_through_an_http_api(recorder: HttpRecorder) -> None:
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel(
                "email",
                threshold=0.7,
                to="ops@example.com",
                api="resend",
                api_url=recorder.url,
                api_key="re_live_secret_key",
            )
        ],
    )
    spend(guard, 75)
    guard.close()
    [req] = recorder.at("/emails")
    assert req.headers["authorization"] == "Bearer re_live_secret_key"
    body = req.json()
    assert body["to"] == ["ops@example.com"] and body["html"].startswith("<!doctype html>")
    assert "70%" in body["subject"] and body["text"]


# -- Kill and callable ---------------------------------------------------------------------


def test_kill_channel_stops_the_agent_on_the_crossing_call() -> None:
    guard = alert_guard(105, channels=[AgentKavach.channel("kill", threshold=0.5)])
    spend(guard, 53)
    assert guard.killed
    assert "50%" in (guard.kill_switch.reason or "")
    guard.close()


def test_sync_and_async_callables_receive_the_alert() -> None:
    got: list[tuple[str, Alert]] = []
    loop_threads: list[str] = []

    def sync_fn(alert: Alert) -> None:
        got.append(("sync", alert))

    async def async_fn(alert: Alert) -> None:
        await asyncio.sleep(0)
        loop_threads.append(threading.current_thread().name)
        got.append(("async", alert))

    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel(sync_fn, threshold=0.7),
            AgentKavach.channel("callable", fn=async_fn, threshold=0.9, name="async"),
        ],
    )
    spend(guard, 95)
    guard.close()
    assert sorted((k, a.threshold) for k, a in got) == [("async", 0.9), ("sync", 0.7)]
    assert loop_threads == ["kavach-alerts"]


def test_build_alerting_yaml_shape(recorder: HttpRecorder) -> None:
    channels = {
        "slack": {"webhook_url": recorder.url + "/s"},
        "oncall": {
            "type": "pagerduty",
            "routing_key": ROUTING_KEY,
            "api_url": recorder.url + "/pd",
        },
        "stop": {"type": "kill", "threshold": 1.0},
        "audit": {"type": "webhook", "url": recorder.url + "/w", "secret": SECRET},
    }
    alerts = [
        {"threshold": 0.7, "channels": ["slack"]},
        {"threshold": 0.9, "channels": ["slack", "oncall"], "budgets": ["daily"], "cooldown": 600},
    ]
    rules = build_alerting(channels, alerts)
    guard = alert_guard(105, channels=rules)
    spend(guard, 95)
    guard.close()
    assert len(recorder.at("/s")) == 2 and len(recorder.at("/pd")) == 1
    # "audit" is named by no alert and has no rule of its own: its default rules apply.
    assert [r.json()["budget"]["threshold"] for r in recorder.at("/w")] == [0.7, 0.9]
    with pytest.raises(KavachConfigError, match="unknown channel 'pager'"):
        build_alerting(channels, [{"threshold": 0.9, "channels": ["pager"]}])
    with pytest.raises(KavachConfigError, match=r"alerts\[0\]: threshold"):
        build_alerting(channels, [{"threshold": 1.5, "channels": ["slack"]}])
    with pytest.raises(KavachConfigError, match="unknown type 'teams'"):
        build_alerting({"t": {"type": "teams", "url": "https://x"}}, [])
    time.sleep(0)


def test_readme_snippet_matches_the_documented_one() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    doc = webhook_module.__doc__ or ""
    snippet = textwrap.dedent(
        doc[doc.index("    import hashlib") : doc.index("    # e.g. in a Flask view")]
    ).strip()
    assert snippet in readme


def test_pagerduty_resolves_yesterdays_incident_on_a_real_guard(recorder: HttpRecorder) -> None:
    # Days in the (real) future, so the reset timer cannot be what resolves the incident.
    day1 = (datetime.now(UTC) + timedelta(days=2)).replace(hour=23, minute=0)
    day2 = day1 + timedelta(hours=2)
    now = [day1]
    guard = alert_guard(
        105,
        clock=lambda: now[0],
        channels=[
            AgentKavach.channel(
                "pagerduty", threshold=0.7, routing_key=ROUTING_KEY, api_url=recorder.url + "/pd"
            )
        ],
    )
    spend(guard, 75)
    recorder.wait_for("/pd", 1)
    now[0] = day2  # a new daily period
    spend(guard, 75)
    guard.close()
    events = [(e["event_action"], e["dedup_key"]) for e in (r.json() for r in recorder.at("/pd"))]
    key = "agentkavach:bot:agent:bot:daily:"
    assert sorted(events) == [
        ("resolve", key + day1.date().isoformat()),
        ("trigger", key + day1.date().isoformat()),
        ("trigger", key + day2.date().isoformat()),
    ]


def test_rules_can_cover_budget_kinds_and_labels(recorder: HttpRecorder) -> None:
    from kavach import Budget

    guard = AgentKavach(
        "bot",
        budget=[Budget.daily(1.0), Budget.daily(tokens=20_000), Budget.monthly(calls=20)],
        prices={"m": __import__("kavach").ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)},
        detect_loops=False,
        channels=[
            AgentKavach.channel(
                "webhook", threshold=0.5, units=["tokens"], url=recorder.url + "/tokens"
            ),
            AgentKavach.channel(
                "webhook", threshold=0.5, budgets=["monthly calls"], url=recorder.url + "/calls"
            ),
        ],
    )
    spend(guard, 10)  # 10,000 of 20,000 tokens and 10 of 20 calls: both cross 50%
    guard.close()
    [tokens] = [r.json()["budget"] for r in recorder.at("/tokens")]
    [calls] = [r.json()["budget"] for r in recorder.at("/calls")]
    assert (tokens["label"], tokens["unit"], tokens["spent_fmt"]) == (
        "daily tokens",
        "tokens",
        "10,000 tokens",
    )
    assert (calls["label"], calls["spent"], calls["limit"]) == ("monthly calls", 10, 20)


def test_slack_escapes_control_characters() -> None:
    from kavach.alerts import SlackChannel
    from kavach.alerts.alert import from_trip
    from kavach.alerts.secret import Secret
    from kavach.events import GuardrailTrip

    trip = GuardrailTrip("bot", "r1", "loop_detected", "tool <rm -rf> & co", datetime.now(UTC))
    payload = SlackChannel(Secret("https://hooks.slack.com/x")).payload(from_trip(trip, None))
    assert_block_kit(payload)
    assert "tool &lt;rm -rf&gt; &amp; co" in payload["blocks"][1]["text"]["text"]


def test_pagerduty_resolve_waits_for_a_retried_trigger(recorder: HttpRecorder) -> None:
    recorder.script("/pd", Reply(500), Reply(202, '{"status":"success"}'))
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel(
                "pagerduty", threshold=0.7, routing_key=ROUTING_KEY, api_url=recorder.url + "/pd"
            )
        ],
    )
    assert guard.alerts is not None
    guard.alerts.backoff_seconds = 0.2
    spend(guard, 75)
    guard.kill("manual")
    guard.resume()  # while the trigger is still waiting for its retry
    guard.close()
    actions = [r.json()["event_action"] for r in recorder.at("/pd")]
    assert actions == ["trigger", "trigger", "resolve"]


def test_email_refused_recipient_is_reported_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from aiosmtpd.controller import Controller

    class Refuse:
        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:  # noqa: N802
            return "550 5.1.1 no such mailbox"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Refuse(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        guard = alert_guard(
            105,
            channels=[
                AgentKavach.channel(
                    "email",
                    threshold=0.7,
                    to="nobody@example.com",
                    smtp_host="127.0.0.1",
                    smtp_port=port,
                )
            ],
        )
        with caplog.at_level(logging.WARNING, logger="kavach.alerts"):
            spend(guard, 75)
            guard.close()
    finally:
        controller.stop()
    assert guard.alerts is not None
    stats = guard.alerts.stats.channels["email"]
    assert (stats.failed, stats.retries) == (1, 0)
    assert "refused every recipient (550)" in caplog.text
