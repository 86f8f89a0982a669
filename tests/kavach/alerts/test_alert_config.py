"""The four ways to configure alerts, checks at build time, and secrets kept out of sight."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime

import pytest

from kavach import AgentKavach, KavachConfigError
from kavach.alerts import PagerDutyChannel, SlackChannel, WebhookChannel
from kavach.alerts.templates import check_template
from tests.kavach.alerts.support import HttpRecorder, alert_guard, spend

ROUTING_KEY = "R0123456789abcdef0123456789ABCDE"
SLACK_TOKEN = "xoxb-T0SECRET-B0SECRET-tokentokentoken"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AGENTKAVACH_SLACK_WEBHOOK_URL",
        "AGENTKAVACH_PAGERDUTY_ROUTING_KEY",
        "AGENTKAVACH_PD_ROUTING_KEY",
        "AGENTKAVACH_PAGERDUTY_API_URL",
        "AGENTKAVACH_ALERT_EMAIL",
        "AGENTKAVACH_WEBHOOK_URL",
        "AGENTKAVACH_WEBHOOK_SECRET",
        "AGENTKAVACH_DASHBOARD_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_environment_only_turns_channels_on_with_default_rules(
    recorder: HttpRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTKAVACH_SLACK_WEBHOOK_URL", recorder.url + "/slack")
    monkeypatch.setenv("AGENTKAVACH_PD_ROUTING_KEY", ROUTING_KEY)  # the older name
    monkeypatch.setenv("AGENTKAVACH_PAGERDUTY_API_URL", recorder.url + "/pd")
    monkeypatch.setenv("AGENTKAVACH_DASHBOARD_URL", "https://dash.example.com")
    guard = alert_guard(105)
    spend(guard, 95)
    guard.close()
    slack = [r.json()["text"] for r in recorder.at("/slack")]
    assert len(slack) == 2 and "70%" in slack[0] + slack[1] and "90%" in slack[0] + slack[1]
    [pd] = [r.json() for r in recorder.at("/pd")]  # PagerDuty defaults to 90% and 100%
    assert pd["payload"]["severity"] == "error" and pd["routing_key"] == ROUTING_KEY
    assert pd["client_url"] == "https://dash.example.com"


def test_newer_pagerduty_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    other = "Z" * 32
    monkeypatch.setenv("AGENTKAVACH_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    monkeypatch.setenv("AGENTKAVACH_PD_ROUTING_KEY", other)
    guard = alert_guard(105)
    assert guard.alerts is not None
    [pd] = guard.alerts.config.channels.values()
    assert isinstance(pd, PagerDutyChannel) and pd.routing_key.get() == ROUTING_KEY
    guard.close()


def test_no_alert_settings_means_no_dispatcher() -> None:
    guard = alert_guard(105)
    assert guard.alerts is None
    guard.close()


def test_parameters_turn_channels_on() -> None:
    guard = alert_guard(
        105,
        slack_webhook_url="https://hooks.slack.com/services/T/B/X",
        pagerduty_routing_key=ROUTING_KEY,
        alert_email="ops@example.com",
        webhook_url="https://hooks.example.com/kavach",
        webhook_secret="s3cret-s3cret-s3cret",
        dashboard_url="https://dash.example.com",
    )
    assert guard.alerts is not None
    config = guard.alerts.config
    assert {c.kind for c in config.channels.values()} == {"slack", "pagerduty", "email", "webhook"}
    by_channel = {
        name: sorted(r.threshold for r in config.rules if name in r.channels and r.threshold)
        for name in config.channels
    }
    assert by_channel["pagerduty"] == [0.9, 1.0] and by_channel["slack"] == [0.7, 0.9, 1.0]
    assert config.dashboard_url == "https://dash.example.com"
    guard.close()


def test_explicit_channels_take_precedence_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTKAVACH_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/ENV")
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel(
                "slack", threshold=0.8, webhook_url="https://hooks.slack.com/services/MINE"
            )
        ],
    )
    assert guard.alerts is not None
    [slack] = guard.alerts.config.channels.values()
    assert isinstance(slack, SlackChannel) and slack.webhook_url.get().endswith("MINE")
    # the rule's threshold is made a threshold of the budget, so it fires
    assert 0.8 in guard.budgets[0].thresholds
    guard.close()


def test_two_channels_of_one_type_are_both_kept() -> None:
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel("slack", threshold=0.7, webhook_url="https://hooks.slack.com/a"),
            AgentKavach.channel("slack", threshold=0.9, webhook_url="https://hooks.slack.com/b"),
        ],
    )
    assert guard.alerts is not None
    config = guard.alerts.config
    assert sorted(config.channels) == ["slack", "slack-2"]
    assert {(r.channels, r.threshold) for r in config.rules if r.threshold} == {
        (("slack",), 0.7),
        (("slack-2",), 0.9),
    }
    guard.close()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            {"slack_webhook_url": "http://hooks.slack.com/services/T/B/X"},
            "must use https://",
        ),
        ({"webhook_url": "ftp://example.com/x"}, "must be an https:// URL"),
        ({"webhook_url": "https://example.com/x", "webhook_secret": "short"}, "too short"),
        ({"webhook_secret": "s3cret-s3cret-s3cret"}, "without webhook_url"),
        ({"pagerduty_routing_key": "abc123"}, "32 letters and digits"),
        ({"alert_email": "not-an-address"}, "is not an email address"),
        ({"dashboard_url": "http://dash.example.com", "alert_email": "a@b.co"}, "dashboard_url"),
    ],
)
def test_settings_are_checked_when_the_guard_is_built(kwargs: dict[str, str], words: str) -> None:
    with pytest.raises(KavachConfigError, match=words):
        alert_guard(105, **kwargs)


def test_loopback_http_is_allowed_for_local_relays() -> None:
    for url in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://[::1]:9/x"):
        AgentKavach.channel("webhook", threshold=0.9, url=url)


@pytest.mark.parametrize(
    ("kind", "kwargs", "words"),
    [
        (
            "slack",
            {"webhook_url": "https://h.example/x", "template": "{agent} hit {pct}"},
            "{agent}",
        ),
        ("email", {"to": "a@example.com", "template": "{pct:.1f}"}, "no format spec"),
        ("webhook", {"url": "https://h.example/x", "template": "{budget_type"}, "malformed"),
        ("slack", {"webhook_url": "https://h.example/x", "webhok": "x"}, "webhok"),
        ("kill", {}, "needs threshold"),
        ("slack", {"webhook_url": "https://h.example/x", "threshold": 1.2}, "threshold"),
        ("teams", {"url": "https://h.example/x"}, "unknown type 'teams'"),
    ],
)
def test_channel_rules_are_checked_at_load(
    kind: str, kwargs: dict[str, object], words: str
) -> None:
    with pytest.raises(KavachConfigError, match=__import__("re").escape(words)):
        AgentKavach.channel(kind, **kwargs)  # type: ignore[arg-type]


def test_every_reference_placeholder_is_known() -> None:
    check_template(
        "{agent_name} {pct} {spent_fmt} {budget_fmt} {remaining_fmt} {budget_type} {period} "
        "{resets_at} {severity} {dashboard_url} {threshold} {spent} {budget} {remaining} {{x}}"
    )


def test_secrets_stay_out_of_repr_and_errors() -> None:
    url = f"https://hooks.slack.com/services/{SLACK_TOKEN}"
    guard = alert_guard(
        105,
        slack_webhook_url=url,
        pagerduty_routing_key=ROUTING_KEY,
        webhook_url=f"https://example.com/hook/{SLACK_TOKEN}",
        webhook_secret="hmac-" + SLACK_TOKEN,
    )
    assert guard.alerts is not None
    shown = " ".join(
        [repr(guard), repr(guard.alerts), repr(guard.alerts.config), str(guard.alerts.config)]
        + [repr(c) for c in guard.alerts.config.channels.values()]
    )
    assert SLACK_TOKEN not in shown and ROUTING_KEY not in shown
    guard.close()
    # A wrong value of a secret field is described, not repeated.
    bad_key = ROUTING_KEY[:-1] + "!"
    with pytest.raises(KavachConfigError) as info:
        AgentKavach.channel("pagerduty", routing_key=bad_key)
    assert bad_key not in str(info.value)
    with pytest.raises(KavachConfigError) as info:
        AgentKavach.channel("slack", webhook_url=f"http://hooks.slack.com/{SLACK_TOKEN}")
    assert SLACK_TOKEN not in str(info.value)
    with pytest.raises(KavachConfigError) as info:
        AgentKavach.channel("webhook", url=f"https://x.example/{SLACK_TOKEN}", secret=[SLACK_TOKEN])
    assert SLACK_TOKEN not in str(info.value)


def test_secrets_stay_out_of_failure_logs(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/{SLACK_TOKEN}"
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel("slack", threshold=0.7, webhook_url=url),
            AgentKavach.channel(
                "webhook", threshold=0.7, url=url + "/hook", secret="hmac-" + SLACK_TOKEN
            ),
        ],
    )
    assert guard.alerts is not None
    guard.alerts.backoff_seconds = 0.01
    with caplog.at_level(logging.DEBUG):
        spend(guard, 75)
        guard.close()
    stats = guard.alerts.stats
    assert stats.failed == 2 and stats.retries == 6
    assert "ConnectError" in caplog.text and f"127.0.0.1:{port}" in caplog.text
    assert SLACK_TOKEN not in caplog.text
    assert all(SLACK_TOKEN not in (c.last_error or "") for c in stats.channels.values())
    assert isinstance(guard.alerts.config.channels["webhook"], WebhookChannel)


def test_delivered_alerts_do_not_log_the_webhook_url(
    recorder: HttpRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{recorder.url}/services/{SLACK_TOKEN}"
    guard = alert_guard(105, slack_webhook_url=url)
    with caplog.at_level(logging.DEBUG):
        spend(guard, 75)
        guard.close()
    assert len(recorder.at(f"/services/{SLACK_TOKEN}")) == 1
    assert "HTTP Request: POST" in caplog.text  # httpx did log the request ...
    assert SLACK_TOKEN not in caplog.text  # ... without the secret part of the URL


def test_a_webhook_whose_path_starts_another_ones_does_not_unmask_it(
    recorder: HttpRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    # Another live guard's webhook path "/s" is the start of "/services/<token>": masking it
    # first must not leave the token bare.
    other = alert_guard(105, slack_webhook_url=f"{recorder.url}/s", agent_name="other")
    url = f"{recorder.url}/services/{SLACK_TOKEN}"
    guard = alert_guard(105, slack_webhook_url=url)
    with caplog.at_level(logging.DEBUG):
        spend(guard, 75)
        guard.close()
    other.close()
    assert len(recorder.at(f"/services/{SLACK_TOKEN}")) == 1
    assert "HTTP Request: POST" in caplog.text
    assert SLACK_TOKEN not in caplog.text and "B0SECRET" not in caplog.text


def test_alerts_public_api() -> None:
    import kavach.alerts

    assert sorted(kavach.alerts.__all__) == sorted(set(kavach.alerts.__all__))
    for name in kavach.alerts.__all__:
        assert hasattr(kavach.alerts, name), name


def test_rules_for_one_channel_share_it() -> None:
    url = "https://hooks.slack.com/services/T/B/X"
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel("slack", threshold=0.7, webhook_url=url),
            AgentKavach.channel("slack", threshold=0.9, webhook_url=url, budgets=["daily"]),
        ],
    )
    assert guard.alerts is not None
    assert list(guard.alerts.config.channels) == ["slack"]
    assert sorted(r.threshold for r in guard.alerts.config.rules if r.threshold) == [0.7, 0.9]
    guard.close()


def test_tokens_in_a_webhook_query_stay_out_of_httpx_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # httpx logs the URL it normalised (host lowercased, default port dropped, spaces
    # encoded, an empty path made "/"), not the string the channel was given.
    import httpx

    from kavach.alerts import AlertDispatcher
    from kavach.alerts.rules import merge
    from kavach.events import GuardrailTrip

    tokens = ["QTOKEN0123456789", "QTOKENabcdefghij", "QTOKENsp4cesp4ce", "PATHTOKEN0123456"]
    urls = [
        f"https://HOOKS.Example.COM:443/services/{tokens[3]}?token={tokens[0]}",
        f"https://example.com?code={tokens[1]}",
        f"https://example.com/h?sig=a b&token={tokens[2]}",
    ]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text="ok")

    config = merge(
        AgentKavach.channel("webhook", name=f"hook{i}", url=url, guardrails=True, thresholds=[1.0])
        for i, url in enumerate(urls)
    )
    dispatcher = AlertDispatcher(config, transport=httpx.MockTransport(handler))
    with caplog.at_level(logging.INFO, logger="httpx"):
        dispatcher.on_guardrail(
            GuardrailTrip("bot", "run", "loop_detected", "same request 5 times", datetime.now(UTC))
        )
        assert dispatcher.close(5)
    assert len(seen) == 3 and all(any(t in u for u in seen) for t in tokens)
    assert caplog.text.count("HTTP Request: POST") == 3
    assert not [t for t in tokens if t in caplog.text]


def test_webhook_headers_and_other_channel_secrets_stay_out_of_repr() -> None:
    bearer = "Bearer hdr-0123456789abcdef"
    hook = AgentKavach.channel(
        "webhook", url="https://example.com/hook", headers={"Authorization": bearer}
    )
    mail = AgentKavach.channel(
        "email", to="ops@example.com", smtp_host="smtp.example.com", password="smtp-pass-0123"
    )
    guard = alert_guard(105, channels=[hook, mail], pagerduty_routing_key=ROUTING_KEY)
    assert guard.alerts is not None
    shown = " ".join(
        [repr(guard.alerts.config), repr(hook), repr(mail), repr(hook.channel), repr(mail.channel)]
    )
    assert "hdr-0123456789abcdef" not in shown and "smtp-pass-0123" not in shown
    assert ROUTING_KEY not in shown
    guard.close()
