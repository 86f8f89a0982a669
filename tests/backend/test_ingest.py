"""Ingest: validation, gzip, limits, idempotent replay, agents and runs on first sight."""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from kavach import AgentKavach, Budget, CallSpec, Usage
from kavach.reporting.api import BackendAPI, BackendConfig
from kavach.reporting.sender import Reporter
from tests.backend.conftest import Account, LiveServer, batch, event


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
    overview_second = account.client.get("/v1/dashboard/overview").json()
    # The month-end projection divides by the time elapsed, which moves between the reads.
    projected = [
        o.pop("projection_month_end")["cost_nanos"] for o in (overview_first, overview_second)
    ]
    assert overview_second == overview_first
    assert projected[1] <= projected[0]  # the same spend over more elapsed time
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
        ({"usage": {"audio_seconds": -1}}, "audio_seconds"),
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


def test_a_run_starts_at_its_earliest_event_whatever_order_they_arrive_in(
    account: Account,
) -> None:
    # The SDK sends a batch it spooled while the backend was unreachable after later ones.
    run = f"run-{uuid.uuid4().hex[:6]}"
    with account.sdk() as sdk:
        for started in (
            "2025-01-15T10:00:00+00:00",
            "2025-01-15T14:30:00+05:30",  # 09:00Z, from a host in India
            "2025-01-15T09:30:00+00:00",
        ):
            response = sdk.post("/v1/ingest", json=batch(event(run_id=run, started_at=started)))
            assert response.status_code == 202
    [row] = account.client.get("/v1/agents/research-bot/runs").json()
    assert row["started_at"] == "2025-01-15T09:00:00Z"
    assert row["last_event_at"] == "2025-01-15T10:00:00Z"
    assert row["calls"] == 3
    detail = account.client.get(f"/v1/runs/{row['id']}").json()
    assert detail["started_at"] == "2025-01-15T09:00:00Z"


_NO_USAGE = {"input_tokens": 0, "output_tokens": 0}


def test_a_call_released_before_anything_was_billed_is_not_a_call(account: Account) -> None:
    # What the SDK reports for each: released (no usage) is not a call in its calls
    # budgets; a stream that failed or was cancelled after it delivered tokens is.
    run = f"run-{uuid.uuid4().hex[:6]}"
    events = [
        event(run_id=run, status="ok"),
        event(run_id=run, status="cut"),
        event(run_id=run, status="error", error="openai 500", cost_nanos=0, usage=_NO_USAGE),
        event(run_id=run, status="cancelled", cost_nanos=0, usage=_NO_USAGE),
        event(run_id=run, status="error", error="stream reset"),
        event(run_id=run, status="cancelled"),
        event(run_id=run, status="refused", refusal_reason="budget", cost_nanos=0, usage=_NO_USAGE),
    ]
    with account.sdk() as sdk:
        assert sdk.post("/v1/ingest", json=batch(*events)).status_code == 202
        # What an SDK seeds its calls budgets from when it starts.
        seed = sdk.get("/v1/agents/research-bot/spend").json()
    assert seed["daily"]["calls"] == seed["total"]["calls"] == 4
    agent = account.client.get("/v1/agents/research-bot").json()
    assert agent["spend"]["daily"]["calls"] == 4
    assert account.client.get("/v1/dashboard/overview").json()["month"]["calls"] == 4
    runs = account.client.get("/v1/agents/research-bot/runs").json()
    assert [r["calls"] for r in runs if r["run_id"] == run] == [4]


def test_prompt_is_stored_only_when_sent(account: Account) -> None:
    with account.sdk() as sdk:
        sdk.post("/v1/ingest", json=batch(event(prompt="hello"), event(agent="quiet")))
    by_agent = {e["agent"]: e for e in account.client.get("/v1/events").json()}
    assert by_agent["research-bot"]["prompt"] == "hello"
    assert by_agent["quiet"]["prompt"] is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": "user: a\x00b"}, "$.events[1].prompt"),
        ({"error": "boom\x00"}, "$.events[1].error"),
        ({"model": "gpt\x00"}, "$.events[1].model"),
        ({"tags": {"team": "a\x00"}}, "$.events[1].tags.team"),
        ({"tool_calls": [{"name": "x", "args": ["\x00"]}]}, "$.events[1].tool_calls[0].args[0]"),
    ],
)
def test_nul_character_in_any_text_is_400_naming_the_field(
    account: Account, change: dict[str, object], field: str
) -> None:
    # PostgreSQL cannot store a NUL in text or JSON: it made the whole batch a 500, which
    # the SDK retries forever instead of setting the bad event aside.
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(event(), event(**change)))
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"] and "NUL" in response.json()["detail"]
    assert account.client.get("/v1/events").json() == []


@pytest.mark.parametrize(
    "started_at",
    [
        "0001-01-01T00:30:00+01:00",  # before year 1 in UTC: the conversion fails
        "9999-12-31T23:30:00-01:00",  # after year 9999 in UTC
        "1969-12-31T23:59:59+00:00",
        "2200-01-01T00:00:00+00:00",
    ],
)
def test_started_at_that_is_not_a_time_from_1970_to_2200_is_400(
    account: Account, started_at: str
) -> None:
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(event(), event(started_at=started_at)))
    assert response.status_code == 400, response.text
    assert "$.events[1].started_at" in response.json()["detail"]
    assert account.client.get("/v1/events").json() == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cost_nanos": 2**63 - 1}, "cost_nanos"),
        ({"cost_nanos": 2**40 + 1}, "cost_nanos"),
        ({"reserved_nanos": 2**63 - 1}, "reserved_nanos"),
        ({"usage": {"input_tokens": 2**63 - 1, "output_tokens": 2**63 - 1}}, "input_tokens"),
        ({"usage": {"output_tokens": 2**40 + 1}}, "output_tokens"),
    ],
)
def test_amounts_above_the_per_event_cap_are_400(
    account: Account, change: dict[str, object], field: str
) -> None:
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(event(), event(**change)))
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]


def test_events_at_the_cap_are_stored_and_later_batches_still_add_up(account: Account) -> None:
    # A single event at 2**63 - 1 used to be stored, after which every batch adding to the
    # same agent/model/day rollup overflowed (a 500 on PostgreSQL).
    top = {"cost_nanos": 2**40, "usage": {"input_tokens": 2**40, "output_tokens": 2**40}}
    with account.sdk() as sdk:
        for _ in range(3):
            response = sdk.post("/v1/ingest", json=batch(event(**top), event(**top)))
            assert response.status_code == 202, response.text
        after = sdk.post("/v1/ingest", json=batch(event(cost_nanos=10)))
    assert after.status_code == 202, after.text
    overview = account.client.get("/v1/dashboard/overview")
    assert overview.status_code == 200
    assert overview.json()["today"]["cost_nanos"] == 6 * 2**40 + 10


@pytest.mark.parametrize(
    "name", ["team,bot", "team/bot", "a?b", "a#b", "50%", "a:b", "a\tb", " bot", "bot ", ".", ".."]
)
def test_agent_names_that_break_dashboard_urls_or_the_control_stream_are_400(
    account: Account, name: str
) -> None:
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(event(), event(agent=name)))
    assert response.status_code == 400, response.text
    assert "$.events[1].agent" in response.json()["detail"]
    assert account.client.get("/v1/agents").json() == []


def test_reporter_sets_the_bad_event_aside_and_delivers_the_rest(
    server: LiveServer, account: Account, tmp_path: Path
) -> None:
    good = [event(agent="reporting-bot") for _ in range(7)]
    bad = event(agent="reporting-bot", error="provider said \x00")
    api = BackendAPI(BackendConfig(api_key=account.new_key(), endpoint=server.url))
    reporter = Reporter(api, spool_root=tmp_path / "spool", batch_size=100, flush_interval=0.01)
    try:
        for payload in [*good[:3], bad, *good[3:]]:
            reporter.enqueue(payload)
        assert reporter.flush(timeout=30)
    finally:
        reporter.close()
    stored = account.client.get("/v1/events", params={"limit": 100}).json()
    assert sorted(e["id"] for e in stored) == sorted(e["id"] for e in good)
    assert reporter.stats.rejected == 1 and reporter.stats.failures == 0
    files = list((tmp_path / "spool").rglob("rejected.jsonl"))
    rejected = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [r["event"]["id"] for r in rejected] == [bad["id"]]
    assert "error" in rejected[0]["reason"] and "400" in rejected[0]["reason"]


def _with_nested_tags(depth: int) -> bytes:
    """A batch of a good event and one whose tags nest ``depth`` lists deep."""
    body = json.dumps(batch(event(), event())).encode()
    assert body.endswith(b"}]}")
    return body[:-3] + b', "tags": {"a": ' + b"[" * depth + b"]" * depth + b"}}]}"


@pytest.mark.parametrize("depth", [40, 5000])
def test_tags_nested_too_deeply_are_400_not_500(account: Account, depth: int) -> None:
    # 5000 levels made the JSON decoder raise RecursionError: a 500, which the SDK retries
    # for ever instead of setting the event aside; a few hundred were stored and could
    # break the reads that decode them again.
    with account.sdk() as sdk:
        response = sdk.post(
            "/v1/ingest",
            content=_with_nested_tags(depth),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert "nest" in response.json()["detail"] and "tags" in response.json()["detail"]
        assert account.client.get("/v1/events").json() == []
        fine = sdk.post(
            "/v1/ingest",
            content=_with_nested_tags(20),
            headers={"Content-Type": "application/json"},
        )
        assert fine.status_code == 202, fine.text
    assert len(account.client.get("/v1/events").json()) == 2


def test_started_at_far_ahead_of_the_servers_clock_is_400(account: Account) -> None:
    # A host whose clock runs a year ahead filed its spend into a later month: the
    # overview counted it as this month's, /v1/events listed it first for a year and the
    # plan's retention never deleted it.
    now = datetime.datetime.now(datetime.UTC)
    ahead = (now + datetime.timedelta(days=400)).isoformat()
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(event(), event(started_at=ahead)))
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert "$.events[1].started_at" in detail and "clock" in detail
        assert account.client.get("/v1/events").json() == []
        # A clock a few hours off (or local time sent as UTC) is still taken.
        skewed = (now + datetime.timedelta(hours=12)).isoformat()
        assert sdk.post("/v1/ingest", json=batch(event(started_at=skewed))).status_code == 202


def test_one_id_for_two_different_events_in_a_batch_is_400(account: Account) -> None:
    # The second event was dropped as a "duplicate": its $0.5 never reached the rollups.
    first = event(cost_nanos=1_000)
    other = event(id=first["id"], cost_nanos=500_000_000)
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(event(), first, other))
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert first["id"] in detail and "$.events[2].id" in detail and "events[1]" in detail
        assert account.client.get("/v1/events").json() == []
        # The same event twice (a batch put together from a replay) is one event.
        same = sdk.post("/v1/ingest", json=batch(first, dict(first)))
        assert same.status_code == 202, same.text
        assert (same.json()["accepted"], same.json()["duplicates"]) == (1, 1)


def reported_run(
    server: LiveServer,
    account: Account,
    tmp_path: Path,
    agent: str,
    calls: list[tuple[CallSpec, Usage]],
) -> tuple[AgentKavach, list[dict[str, Any]]]:
    """Make ``calls`` (each held, then settled at its usage) in one run through a guard of
    ``agent`` that reports to the backend with a key of ``account``, as a guard with a
    backend key does: the guard, and the run's events as the backend stores them."""
    guard = AgentKavach(agent, Budget.daily(10))
    api = BackendAPI(BackendConfig(api_key=account.new_key(), endpoint=server.url))
    reporter = Reporter(api, spool_root=tmp_path / "spool", flush_interval=0.01)
    guard.add_observer(reporter)
    try:
        for spec, usage in calls:
            with guard.reserve(spec) as r:
                r.commit(usage)
        assert reporter.flush(timeout=30)
    finally:
        reporter.close()
    [stored_run] = account.client.get(f"/v1/agents/{agent}/runs").json()
    events: list[dict[str, Any]] = account.client.get(f"/v1/runs/{stored_run['id']}/events").json()
    return guard, events


def test_a_calls_price_tier_and_searches_reach_its_run_timeline(
    server: LiveServer, account: Account, tmp_path: Path
) -> None:
    # A priority-tier call that searched the web twice, then a standard call, as a guard
    # with a backend key reports them: the timeline says why the first cost more.
    run = f"run-{uuid.uuid4().hex[:6]}"
    priority = CallSpec(
        provider="openai",
        model="gpt-4o",
        prompt="news today?",
        max_output_tokens=100,
        run_id=run,
        price_variant=(("service_tier", "priority"),),
    )
    guard, events = reported_run(
        server,
        account,
        tmp_path,
        "search-bot",
        [
            (priority, Usage(input_tokens=500, output_tokens=50, web_searches=2)),
            (
                dataclasses.replace(priority, price_variant=()),
                Usage(input_tokens=500, output_tokens=50),
            ),
        ],
    )
    tiered, standard = events
    assert tiered["details"]["price_tier"] == "priority"
    assert tiered["details"]["web_searches"] == 2 and tiered["details"]["file_searches"] == 0
    assert standard["details"]["price_tier"] is None and standard["details"]["web_searches"] == 0
    # Two searches at $10/1k and priority tokens: what the guard charged is what is stored.
    assert tiered["cost_nanos"] - standard["cost_nanos"] > 20_000_000
    assert sum(e["cost_nanos"] for e in events) == guard.status()[0].spent


def test_speech_and_whisper_calls_a_guard_reports_show_what_they_were_billed_for(
    server: LiveServer, account: Account, tmp_path: Path
) -> None:
    # Through the SDK's reporter: tts-1 priced by the character, whisper-1 by the second.
    run = f"run-{uuid.uuid4().hex[:6]}"
    speech = CallSpec(
        provider="openai",
        model="tts-1",
        operation="speech",
        input_tokens=0,
        max_output_tokens=0,
        fixed_output=True,
        input_characters=972,
        run_id=run,
    )
    whisper = dataclasses.replace(
        speech, model="whisper-1", operation="transcription", input_characters=0, audio_seconds=30
    )
    guard, (spoken, heard) = reported_run(
        server,
        account,
        tmp_path,
        "voice-bot",
        [(speech, Usage(input_characters=972)), (whisper, Usage(audio_seconds=30))],
    )
    assert spoken["details"]["input_characters"] == 972
    assert spoken["cost_nanos"] == 972 * 15_000  # $15 per million characters
    assert heard["details"]["audio_seconds"] == 30
    assert heard["cost_nanos"] == 30 * 100_000  # $0.006 a minute
    assert spoken["cost_nanos"] + heard["cost_nanos"] == guard.status()[0].spent


def test_characters_and_seconds_of_audio_billed_reach_the_run_timeline(account: Account) -> None:
    # tts-1 is billed per character of input and whisper-1 per second of audio, not per
    # token: the timeline says what each was billed for. An event from an SDK that does not
    # send these counts (a chat call) shows zero.
    speech = event(
        run_id="audio",
        model="tts-1",
        operation="speech",
        usage={"input_tokens": 0, "output_tokens": 0, "input_characters": 1234},
    )
    transcription = event(
        run_id="audio",
        model="whisper-1",
        operation="transcription",
        usage={"input_tokens": 0, "output_tokens": 0, "audio_seconds": 37},
    )
    chat = event(run_id="audio")
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(speech, transcription, chat))
    assert response.status_code == 202, response.text
    [run] = account.client.get("/v1/agents/research-bot/runs").json()
    events = account.client.get(f"/v1/runs/{run['id']}/events").json()
    details = {e["model"]: e["details"] for e in events}
    assert details["tts-1"]["input_characters"] == 1234
    assert details["tts-1"]["audio_seconds"] == 0
    assert details["whisper-1"]["audio_seconds"] == 37
    assert details["whisper-1"]["input_characters"] == 0
    assert (details["gpt-4o"]["input_characters"], details["gpt-4o"]["audio_seconds"]) == (0, 0)
