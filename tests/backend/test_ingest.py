"""Ingest: validation, gzip, limits, idempotent replay, agents and runs on first sight."""

from __future__ import annotations

import gzip
import json
import uuid

import pytest

from tests.backend.conftest import Account, batch, event


def test_batch_is_accepted_with_control_state(account: Account) -> None:
    with account.sdk() as sdk:
        response = sdk.post(
            "/v1/ingest", json=batch(event(), event(agent="writer"), event(agent="writer"))
        )
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 3 and body["duplicates"] == 0
    assert set(body["control"]) == {"research-bot", "writer"}
    assert body["control"]["writer"]["status"] == "running"
    assert body["control"]["writer"]["version"] == 0
    agents = account.client.get("/v1/agents").json()
    assert [a["name"] for a in agents] == ["research-bot", "writer"]


def test_replayed_batch_is_counted_once_and_rollups_do_not_move(account: Account) -> None:
    events = [event(cost_nanos=1_000 + i) for i in range(50)]
    payload = batch(*events)
    with account.sdk() as sdk:
        first = sdk.post("/v1/ingest", json=payload)
        spend_after_first = sdk.get("/v1/agents/research-bot/spend").json()
        overview_first = account.client.get("/v1/dashboard/overview").json()
        second = sdk.post("/v1/ingest", json=payload)
        spend_after_second = sdk.get("/v1/agents/research-bot/spend").json()
    assert first.json()["accepted"] == 50
    assert second.status_code == 202
    assert second.json() == {**second.json(), "accepted": 0, "duplicates": 50}
    assert spend_after_first == spend_after_second
    assert spend_after_first["daily"]["calls"] == 50
    assert spend_after_first["daily"]["cost_nanos"] == sum(1_000 + i for i in range(50))
    assert account.client.get("/v1/dashboard/overview").json() == overview_first
    events_listed = account.client.get("/v1/events", params={"limit": 1000}).json()
    assert len(events_listed) == 50


def test_partly_replayed_batch_stores_only_the_new_events(account: Account) -> None:
    old = [event() for _ in range(3)]
    new = [event() for _ in range(2)]
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(*old))
        response = sdk.post("/v1/ingest", json=batch(*old, *new, new[0]))
    assert response.json()["accepted"] == 2
    assert response.json()["duplicates"] == 4
    assert len(account.client.get("/v1/events").json()) == 5


def test_idempotency_keys_are_per_organization(account: Account, other_account: Account) -> None:
    shared = event()
    with account.sdk() as a, other_account.sdk() as b:
        assert a.post("/v1/ingest", json=batch(shared)).json()["accepted"] == 1
        assert b.post("/v1/ingest", json=batch(shared)).json()["accepted"] == 1


def test_gzip_body_is_accepted(account: Account) -> None:
    body = gzip.compress(json.dumps(batch(event(), event())).encode())
    with account.sdk() as sdk:
        response = sdk.post(
            "/v1/ingest",
            content=body,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2


def test_corrupt_gzip_and_unknown_encoding_are_client_errors(account: Account) -> None:
    with account.sdk() as sdk:
        corrupt = sdk.post(
            "/v1/ingest", content=b"\x1f\x8bnot gzip at all", headers={"Content-Encoding": "gzip"}
        )
        brotli = sdk.post("/v1/ingest", content=b"{}", headers={"Content-Encoding": "br"})
    assert corrupt.status_code == 400
    assert brotli.status_code == 415


def test_gzip_bomb_is_refused(account: Account) -> None:
    # 5 MiB limit on the wire, 8x that decompressed: 64 MiB of zeros compresses to ~64 KiB.
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024))
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", content=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413


def test_oversized_body_is_413(account: Account) -> None:
    big = batch(event(prompt="x" * 900_000), *[event(prompt="y" * 900_000) for _ in range(6)])
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=big)
    assert response.status_code == 413


def test_too_many_events_is_413(account: Account) -> None:
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(*[event() for _ in range(5001)]))
    assert response.status_code == 413
    assert "5000" in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cost_nanos": -1}, "cost_nanos"),
        ({"cost_nanos": "12"}, "cost_nanos"),
        ({"status": "maybe"}, "status"),
        ({"started_at": "yesterday"}, "started_at"),
        ({"started_at": "2026-11-28T13:00:00"}, "started_at"),  # no time zone
        ({"agent": ""}, "agent"),
        ({"id": "x" * 65}, "id"),
        ({"usage": {"input_tokens": -5}}, "input_tokens"),
        ({"duration_ms": "slow"}, "duration_ms"),
    ],
)
def test_malformed_event_rejects_the_batch_naming_the_field(
    account: Account, change: dict[str, object], field: str
) -> None:
    good = event()
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(good, event(**change)))
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]
    # Nothing of the batch was stored.
    assert account.client.get("/v1/events").json() == []


def test_missing_fields_and_bad_json(account: Account) -> None:
    incomplete = event()
    del incomplete["model"]
    with account.sdk() as sdk:
        missing = sdk.post("/v1/ingest", json=batch(incomplete))
        not_json = sdk.post("/v1/ingest", content=b"{not json")
        wrong_shape = sdk.post("/v1/ingest", json={"events": {"a": 1}})
        no_events = sdk.post("/v1/ingest", json={"sdk": {}})
        empty = sdk.post("/v1/ingest", json={"events": []})
    assert missing.status_code == 400 and "model" in missing.json()["detail"]
    assert not_json.status_code == 400
    assert wrong_shape.status_code == 400
    assert no_events.status_code == 400 and "events" in no_events.json()["detail"]
    assert empty.status_code == 202 and empty.json()["accepted"] == 0


def test_runs_are_created_and_summed(account: Account) -> None:
    run = f"run-{uuid.uuid4().hex[:6]}"
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event(run_id=run, cost_nanos=100)))
        sdk.post(
            "/v1/ingest",
            json=batch(event(run_id=run, cost_nanos=200), event(run_id=None, cost_nanos=5)),
        )
    runs = account.client.get("/v1/agents/research-bot/runs").json()
    assert len(runs) == 1
    assert runs[0]["run_id"] == run and runs[0]["calls"] == 2 and runs[0]["cost_nanos"] == 300
    detail = account.client.get(f"/v1/runs/{runs[0]['id']}").json()
    assert detail["cost_usd"] == "$0.0000003"
    events = account.client.get(f"/v1/runs/{runs[0]['id']}/events").json()
    assert sorted(e["cost_nanos"] for e in events) == [100, 200]
    assert events[0]["details"]["response_model"] == "gpt-4o-2024-08-06"


def test_prompt_is_stored_only_when_sent(account: Account) -> None:
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event(prompt="hello"), event(agent="quiet")))
    by_agent = {e["agent"]: e for e in account.client.get("/v1/events").json()}
    assert by_agent["research-bot"]["prompt"] == "hello"
    assert by_agent["quiet"]["prompt"] is None
