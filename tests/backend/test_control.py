"""The control channel: kill, resume and budget changes reach SDKs within a second."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.backend.conftest import Account, batch, event, stream_until_closed


@contextmanager
def sse(account: Account, agents: str) -> Iterator[queue.Queue[tuple[float, dict[str, Any]]]]:
    """Read ``/v1/control/stream`` in a thread; yields a queue of (arrival time, message).

    The reader notices ``stop`` at the next line (keepalives come every second) and
    closes its own client, so no socket is closed under a reading thread.
    """
    received: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
    key = account.keys[0] if account.keys else account.new_key()
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with httpx.Client(
                base_url=account.base_url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=httpx.Timeout(30, read=30),
            ) as client:
                with client.stream(
                    "GET", "/v1/control/stream", params={"agents": agents}
                ) as stream:
                    assert stream.status_code == 200
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    for line in stream.iter_lines():
                        if stop.is_set():
                            return
                        if line.startswith("data:"):
                            received.put((time.monotonic(), json.loads(line[5:].strip())))
                        elif line.startswith(":"):
                            received.put((time.monotonic(), {"type": "keepalive"}))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors, errors


def next_message(
    received: queue.Queue[tuple[float, dict[str, Any]]], timeout: float = 5
) -> tuple[float, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        at, message = received.get(timeout=max(0.01, deadline - time.monotonic()))
        if message["type"] != "keepalive":
            return at, message


def seed(account: Account, agent: str = "research-bot") -> None:
    with account.sdk() as sdk:
        assert sdk.post("/v1/ingest", json=batch(event(agent=agent))).status_code == 202


def test_kill_and_resume_reach_an_sse_client_within_one_second(account: Account) -> None:
    seed(account)
    with sse(account, "research-bot,other") as received:
        _, initial = next_message(received)
        assert initial["type"] == "resume" and initial["initial"] is True
        assert initial["agent"] in ("research-bot", "other")
        next_message(received)  # the second agent's initial state

        started = time.monotonic()
        killed = account.client.post(
            "/v1/agents/research-bot/kill", json={"reason": "runaway loop"}
        )
        assert killed.status_code == 200, killed.text
        at, message = next_message(received)
        latency = at - started
        assert message["type"] == "kill"
        assert message["agent"] == "research-bot"
        assert message["status"] == "stopped"
        assert message["reason"] == "runaway loop"
        assert message["version"] == 1
        assert latency < 1.0, f"kill took {latency:.3f}s to reach the SDK"

        started = time.monotonic()
        assert account.client.post("/v1/agents/research-bot/resume").status_code == 200
        at, message = next_message(received)
        assert (message["type"], message["status"], message["version"]) == (
            "resume",
            "running",
            2,
        )
        assert at - started < 1.0


def test_stream_sends_current_state_on_connect_and_keepalives(account: Account) -> None:
    seed(account)
    account.client.post("/v1/agents/research-bot/kill", json={"reason": "over budget"})
    with sse(account, "research-bot") as received:
        _, initial = next_message(received)
        assert (initial["type"], initial["status"], initial["reason"]) == (
            "kill",
            "stopped",
            "over budget",
        )
        # The test server sends a keepalive comment every second.
        _, keepalive = received.get(timeout=3)
        assert keepalive == {"type": "keepalive"}


def test_stream_filters_other_agents(account: Account) -> None:
    seed(account, "a")
    seed(account, "b")
    with sse(account, "a") as received:
        next_message(received)
        account.client.post("/v1/agents/b/kill", json={"reason": "x"})
        account.client.post("/v1/agents/a/kill", json={"reason": "y"})
        _, message = next_message(received)
        assert message["agent"] == "a"


def test_budget_change_is_pushed(account: Account) -> None:
    seed(account)
    with sse(account, "research-bot") as received:
        next_message(received)
        started = time.monotonic()
        created = account.client.post(
            "/v1/agents/research-bot/budgets",
            json={"kind": "usd", "period": "daily", "limit_usd": "2.50"},
        )
        assert created.status_code == 201, created.text
        at, message = next_message(received)
        assert message["type"] == "budget"
        assert at - started < 1.0
        assert message["budgets"][0]["limit"] == 2_500_000_000
        assert message["budgets"][0]["period"] == "daily"
        # An org-wide budget reaches every agent too.
        account.client.post("/v1/budgets", json={"kind": "calls", "period": "total", "limit": 9})
        _, message = next_message(received)
        assert message["type"] == "budget"
        assert {b["scope"] for b in message["budgets"]} == {"agent", "org"}


def test_org_budget_reaches_an_sdk_whose_agent_has_not_reported_yet(account: Account) -> None:
    # An SDK opens its control channel before its agent's first event: an org-wide budget
    # set in the dashboard must reach it, on the stream and as a new long-poll version.
    with sse(account, "new-bot") as received, account.sdk() as sdk:
        _, initial = next_message(received)
        assert initial["budgets"] == []
        before = sdk.get("/v1/control", params={"agents": "new-bot"}).json()["version"]
        started = time.monotonic()
        created = account.client.post(
            "/v1/budgets", json={"kind": "usd", "period": "daily", "limit_usd": "1"}
        )
        assert created.status_code == 201, created.text
        at, message = next_message(received)
        assert at - started < 1.0
        assert (message["type"], message["agent"]) == ("budget", "new-bot")
        assert [b["limit_usd"] for b in message["budgets"]] == ["$1.00"]
        assert message["version"] > before
        poll = sdk.get("/v1/control", params={"agents": "new-bot", "since": before, "wait": 5})
        assert poll.json()["changed"] is True
        assert poll.json()["version"] == message["version"]
        # Its first event creates the agent; a stop after that is a newer version still,
        # which an SDK that heard the budget applies (it ignores older versions).
        assert sdk.post("/v1/ingest", json=batch(event(agent="new-bot"))).status_code == 202
        account.client.post("/v1/agents/new-bot/kill", json={"reason": "stop"})
        _, kill = next_message(received)
        assert (kill["status"], kill["agent"]) == ("stopped", "new-bot")
        assert kill["version"] > message["version"]


def test_long_poll_answers_at_once_when_behind_and_waits_for_a_change(account: Account) -> None:
    seed(account)
    with account.sdk() as sdk:
        now = sdk.get("/v1/control", params={"agents": "research-bot"})
        assert now.status_code == 200
        assert now.json()["version"] == 0 and now.json()["changed"] is True

        # Nothing changes: the poll returns after `wait` seconds, unchanged.
        started = time.monotonic()
        idle = sdk.get("/v1/control", params={"agents": "research-bot", "since": 0, "wait": 0.5})
        assert idle.json()["changed"] is False
        assert 0.4 < time.monotonic() - started < 3

        answer: dict[str, Any] = {}

        def poll() -> None:
            response = sdk.get(
                "/v1/control", params={"agents": "research-bot", "since": 0, "wait": 10}
            )
            answer["at"] = time.monotonic()
            answer["body"] = response.json()

        thread = threading.Thread(target=poll)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        account.client.post("/v1/agents/research-bot/kill", json={"reason": "stop"})
        thread.join(timeout=10)
        assert answer["body"]["changed"] is True
        assert answer["body"]["control"]["research-bot"]["status"] == "stopped"
        assert answer["body"]["version"] == 1
        assert answer["at"] - started < 1.0


def test_ingest_answer_carries_the_kill(account: Account) -> None:
    seed(account)
    account.client.post("/v1/agents/research-bot/kill", json={"reason": "halt"})
    with account.sdk() as sdk:
        control = sdk.post("/v1/ingest", json=batch(event())).json()["control"]
    assert control["research-bot"]["status"] == "stopped"
    assert control["research-bot"]["reason"] == "halt"


def test_kill_and_resume_are_in_alert_history(account: Account) -> None:
    seed(account)
    account.client.post("/v1/agents/research-bot/kill", json={"reason": "too costly"})
    account.client.post("/v1/agents/research-bot/resume")
    history = account.client.get("/v1/alerts").json()
    assert [h["kind"] for h in history] == ["resume", "kill"]
    assert "too costly" in history[1]["message"]
    assert history[1]["agent"] == "research-bot"
    agent = account.client.get("/v1/agents/research-bot").json()
    assert agent["status"] == "running" and agent["control_version"] == 2


def test_kill_unknown_agent_is_404(account: Account) -> None:
    assert account.client.post("/v1/agents/ghost/kill", json={}).status_code == 404


def test_ingest_answer_and_long_poll_report_the_same_state(account: Account) -> None:
    seed(account)
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event(agent="writer")))
    account.client.post(
        "/v1/agents/research-bot/budgets",
        json={"kind": "usd", "period": "daily", "limit_usd": "2.50"},
    )
    account.client.post("/v1/budgets", json={"kind": "calls", "period": "total", "limit": 9})
    account.client.post("/v1/agents/writer/kill", json={"reason": "halt"})
    with account.sdk() as sdk:
        answer = sdk.post(
            "/v1/ingest", json=batch(event(), event(agent="writer"), event(agent="new-bot"))
        ).json()["control"]
        polled = sdk.get(
            "/v1/control", params={"agents": "research-bot,writer,new-bot", "wait": 0}
        ).json()["control"]
    assert answer == polled
    assert answer["writer"]["status"] == "stopped" and answer["writer"]["reason"] == "halt"
    assert [b["scope"] for b in answer["research-bot"]["budgets"]] == ["agent", "org"]
    assert [b["scope"] for b in answer["new-bot"]["budgets"]] == ["org"]


@pytest.mark.parametrize(
    "limit_usd", ["Infinity", "-Infinity", "NaN", "1e999999999", "-0.0000000001", "-5", 1e308]
)
def test_budget_limit_usd_must_be_a_finite_amount_from_zero(
    account: Account, limit_usd: str | float
) -> None:
    response = account.client.post(
        "/v1/budgets", json={"kind": "usd", "period": "daily", "limit_usd": limit_usd}
    )
    assert response.status_code == 400, response.text
    assert "limit_usd must be a dollar amount from 0 to" in response.json()["detail"]
    assert account.client.get("/v1/budgets").json() == []


def test_budget_limit_usd_of_zero_and_of_a_nano_dollar_are_kept(account: Account) -> None:
    for limit_usd, nanos in [("0", 0), ("0.000000001", 1), (" 5 ", 5_000_000_000)]:
        response = account.client.post(
            "/v1/budgets", json={"kind": "usd", "period": "daily", "limit_usd": limit_usd}
        )
        assert response.status_code == 201, response.text
        assert response.json()["limit"] == nanos


def test_changing_a_budget_kind_needs_a_limit_in_the_new_unit(account: Account) -> None:
    budget = account.client.post(
        "/v1/budgets", json={"kind": "usd", "period": "daily", "limit_usd": "10"}
    ).json()
    refused = account.client.patch(f"/v1/budgets/{budget['id']}", json={"kind": "tokens"})
    assert refused.status_code == 400, refused.text
    assert "needs a new limit" in refused.json()["detail"]
    assert account.client.get(f"/v1/budgets/{budget['id']}").json()["kind"] == "usd"
    changed = account.client.patch(
        f"/v1/budgets/{budget['id']}", json={"kind": "tokens", "limit": 50_000}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["kind"] == "tokens" and changed.json()["limit"] == 50_000
    same_kind = account.client.patch(
        f"/v1/budgets/{budget['id']}", json={"kind": "tokens", "period": "weekly"}
    )
    assert same_kind.status_code == 200 and same_kind.json()["limit"] == 50_000


def _rule(channel: str, target: str) -> dict[str, Any]:
    return {
        "name": "r",
        "kind": "usd",
        "period": "daily",
        "threshold": 1,
        "channel": channel,
        "target": target,
    }


@pytest.mark.parametrize(
    ("channel", "target"),
    [
        ("webhook", "not a url"),
        ("webhook", "ftp://example.com/hook"),
        ("webhook", "http://example.com/hook"),  # plain http only to loopback, as delivery
        ("slack", "hooks.slack.com/x"),
        ("email", "not an address"),
    ],
)
def test_alert_rule_target_that_cannot_be_delivered_is_400(
    account: Account, channel: str, target: str
) -> None:
    response = account.client.post("/v1/alert-rules", json=_rule(channel, target))
    assert response.status_code == 400, response.text
    assert "target" in response.json()["detail"]
    assert account.client.get("/v1/alert-rules").json() == []


def test_alert_rule_target_is_a_url_an_address_or_a_channel_name(account: Account) -> None:
    # (An e-mail channel: channels with secrets need an encryption key on the server.)
    channel = account.client.post(
        "/v1/channels",
        json={"name": "ops-mail", "kind": "email", "config": {"to": ["ops@example.com"]}},
    )
    assert channel.status_code == 201, channel.text
    for body in [
        _rule("webhook", "https://hooks.example.com/x"),
        _rule("webhook", "http://127.0.0.1:9000/x"),
        _rule("email", "ops-mail"),
        _rule("email", "oncall@example.com"),
    ]:
        response = account.client.post("/v1/alert-rules", json=body)
        assert response.status_code == 201, (body, response.text)
    rule_id = response.json()["id"]
    # A patch is checked against the rule it makes: an e-mail target is no webhook URL.
    to_webhook = account.client.patch(f"/v1/alert-rules/{rule_id}", json={"channel": "webhook"})
    assert to_webhook.status_code == 400, to_webhook.text
    bad = account.client.patch(f"/v1/alert-rules/{rule_id}", json={"target": "not an address"})
    assert bad.status_code == 400, bad.text
    rule = account.client.get(f"/v1/alert-rules/{rule_id}").json()
    assert (rule["channel"], rule["target"]) == ("email", "oncall@example.com")


def test_agent_with_a_comma_or_slash_cannot_exist_so_a_kill_reaches_its_stream(
    account: Account,
) -> None:
    # 'team,bot' was stored, then split in two by the stream's agents list; 'team/bot'
    # could not be opened, killed or resumed from the dashboard.
    with account.sdk() as sdk:
        for name in ["team,bot", "team/bot"]:
            assert sdk.post("/v1/ingest", json=batch(event(agent=name))).status_code == 400
    seed(account, "team-bot")
    with sse(account, "team-bot") as received:
        _, initial = next_message(received)
        assert initial["agent"] == "team-bot" and initial["initial"] is True
        assert account.client.post("/v1/agents/team-bot/kill", json={}).status_code == 200
        _, kill = next_message(received, timeout=1.0)
    assert (kill["type"], kill["agent"], kill["status"]) == ("kill", "team-bot", "stopped")


@pytest.mark.parametrize("how", ["revoke", "rotate"])
def test_revoking_a_key_closes_its_control_stream(account: Account, how: str) -> None:
    key = account.new_key("streaming")
    seed(account)
    key_id = account.client.get("/v1/keys").json()[-1]["id"]
    other_key = account.new_key("still-valid")
    with (
        stream_until_closed(account, key, "/v1/control/stream") as (thread, lines),
        stream_until_closed(account, other_key, "/v1/control/stream") as (
            other_thread,
            other_lines,
        ),
    ):
        if how == "revoke":
            assert account.client.delete(f"/v1/keys/{key_id}").status_code == 200
        else:
            assert account.client.post(f"/v1/keys/{key_id}/rotate").status_code == 201
        thread.join(timeout=3)
        assert not thread.is_alive(), "the stream of a revoked key stayed open"
        # A kill after the revocation does not reach it; the other key's stream goes on.
        assert account.client.post("/v1/agents/research-bot/kill", json={}).status_code == 200
        deadline = time.monotonic() + 5
        while not any('"kill"' in line and "initial" not in line for line in other_lines):
            assert time.monotonic() < deadline, other_lines
            time.sleep(0.05)
        assert other_thread.is_alive()
        assert not any('"kill"' in line for line in lines)
    with httpx.Client(base_url=account.base_url, headers={"X-API-Key": key}) as sdk:
        assert sdk.get("/v1/control/stream").status_code == 401


def test_a_long_poll_ends_with_401_when_its_key_is_revoked(account: Account) -> None:
    key = account.new_key("polling")
    seed(account)
    key_id = account.client.get("/v1/keys").json()[-1]["id"]
    with httpx.Client(base_url=account.base_url, headers={"X-API-Key": key}) as sdk:
        version = sdk.get("/v1/control", params={"wait": 0}).json()["version"]
        answers: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: answers.append(
                sdk.get("/v1/control", params={"since": version, "wait": 20}, timeout=30)
            ),
            daemon=True,
        )
        thread.start()
        time.sleep(0.5)
        assert account.client.delete(f"/v1/keys/{key_id}").status_code == 200
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert answers[0].status_code == 401


def test_more_agents_than_a_request_can_watch_is_400_not_a_silent_cut(account: Account) -> None:
    # The list was cut to its first 1000 names in sorted order: the agents after them
    # never heard a stop.
    seed(account, "zz-last")
    names = ",".join([f"a{i:04d}" for i in range(1000)] + ["zz-last"])
    with account.sdk() as sdk:
        answer = sdk.get("/v1/control", params={"agents": names, "wait": 0})
        assert answer.status_code == 400, answer.text
        assert "at most 1000" in answer.json()["detail"]
        with sdk.stream("GET", "/v1/control/stream", params={"agents": names}) as stream:
            assert stream.status_code == 400
        fits = sdk.get("/v1/control", params={"agents": names.split(",", 1)[1], "wait": 0})
        assert fits.status_code == 200 and "zz-last" in fits.json()["control"]
