"""Rate limits on /v1/ingest and the auth endpoints, in one process (memory) and across two
processes sharing Redis; the SDK reporter waits out a 429 and loses nothing."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.ratelimit import Bucket, MemoryLimiter, RedisLimiter, Window
from kavach.reporting.api import BackendAPI, BackendConfig
from kavach.reporting.sender import Reporter
from tests.backend.conftest import batch, event
from tests.backend.ops_helpers import (  # noqa: F401 - accounts is a fixture
    REDIS_URL,
    Process,
    accounts_fixture,
    fresh_postgres,
    need_redis,
    start_process,
    wait_for,
)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Process]:
    env = {
        "AGENTKAVACH_DATABASE_URL": str(tmp_path / "db.sqlite"),
        "AGENTKAVACH_RATE_KEY_PER_SECOND": "2",
        "AGENTKAVACH_RATE_KEY_BURST": "3",
        "AGENTKAVACH_DAILY_EVENTS_PER_ORG": "40",
    }
    proc = start_process(env, tmp_path / "backend.log")
    yield proc
    proc.stop()


def test_burst_limit_answers_429_with_retry_after_and_the_reason(
    sqlite_backend: Process, accounts: Any
) -> None:
    account = accounts(sqlite_backend.url)
    sdk = account.sdk()
    answers = [sdk.post("/v1/ingest", json=batch(event())) for _ in range(5)]
    assert [a.status_code for a in answers[:3]] == [202, 202, 202]
    refused = answers[3]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    body = refused.json()
    assert body["reason"] == "rate_limit_key"
    assert "burst" in body["detail"] and account.keys[0][:14] in body["detail"]
    metrics = httpx.get(sqlite_backend.url + "/metrics").text
    assert 'agentkavach_rate_limited_total{reason="rate_limit_key"} 2' in metrics
    assert 'agentkavach_ingest_requests_total{status="202"} 3' in metrics
    time.sleep(1.1)  # refills at 2 per second
    assert sdk.post("/v1/ingest", json=batch(event())).status_code == 202
    # A second key of the same org has its own bucket.
    with account.sdk(account.new_key("second")) as other:
        assert other.post("/v1/ingest", json=batch(event())).status_code == 202
    sdk.close()


def test_daily_cap_counts_events_per_org_and_refuses_without_storing(
    sqlite_backend: Process, accounts: Any
) -> None:
    account = accounts(sqlite_backend.url)
    sdk = account.sdk()
    assert sdk.post("/v1/ingest", json=batch(*[event() for _ in range(30)])).status_code == 202
    time.sleep(0.6)
    refused = sdk.post("/v1/ingest", json=batch(*[event() for _ in range(11)]))
    assert refused.status_code == 429
    assert refused.json()["reason"] == "daily_cap_org"
    assert "00:00 UTC" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) <= 86400
    time.sleep(0.6)
    assert sdk.post("/v1/ingest", json=batch(*[event() for _ in range(10)])).status_code == 202
    stored = account.client.get("/v1/events", params={"limit": 1000}).json()
    assert len(stored) == 40
    # Another organization is not affected.
    with accounts(sqlite_backend.url).sdk() as other:
        assert other.post("/v1/ingest", json=batch(event())).status_code == 202
    sdk.close()


def test_login_attempts_are_limited_per_account(sqlite_backend: Process, accounts: Any) -> None:
    account = accounts(sqlite_backend.url)
    started = time.monotonic()
    with httpx.Client(base_url=sqlite_backend.url) as anon:
        codes = [
            anon.post(
                "/v1/auth/login", json={"email": account.email, "password": "wrong password!"}
            ).status_code
            for _ in range(16)
        ]
    elapsed = time.monotonic() - started
    # Ten at once (registering logged in once), then one every six seconds.
    assert codes[:9] == [401] * 9
    assert codes.count(401) <= 9 + int(elapsed / 6) + 1
    assert codes[-1] == 429


def test_reporter_waits_out_429_and_every_event_arrives_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, accounts: Any
) -> None:
    env = {
        "AGENTKAVACH_DATABASE_URL": str(tmp_path / "db.sqlite"),
        "AGENTKAVACH_RATE_KEY_PER_SECOND": "2",
        "AGENTKAVACH_RATE_KEY_BURST": "3",
    }
    backend = start_process(env, tmp_path / "backend.log")
    try:
        account = accounts(backend.url)
        key = account.new_key()
        api = BackendAPI(BackendConfig(api_key=key, endpoint=backend.url))
        reporter = Reporter(api, spool_root=tmp_path / "spool", batch_size=5, flush_interval=0.01)
        ids = []
        with caplog.at_level(logging.WARNING, logger="kavach"):
            for _ in range(30):
                payload = event(agent="limited-bot")
                ids.append(payload["id"])
                reporter.enqueue(payload)
            assert reporter.flush(timeout=60)
        reporter.close()
        assert reporter.stats.failures >= 1  # it was refused at least once and waited
        stored = account.client.get("/v1/events", params={"limit": 1000}).json()
        assert sorted(e["id"] for e in stored) == sorted(ids)
        warnings = [r.getMessage() for r in caplog.records if "rate limited" in r.getMessage()]
        assert len(warnings) == 1 and "batches in a burst" in warnings[0]
    finally:
        backend.stop()


def test_limits_hold_across_two_processes_sharing_redis(tmp_path: Path, accounts: Any) -> None:
    need_redis()
    with fresh_postgres() as database_url:
        env = {
            "AGENTKAVACH_DATABASE_URL": database_url,
            "AGENTKAVACH_REDIS_URL": REDIS_URL,
            "AGENTKAVACH_REDIS_PREFIX": f"test:{uuid.uuid4().hex}:",
            "AGENTKAVACH_RATE_KEY_PER_SECOND": "0.01",
            "AGENTKAVACH_RATE_KEY_BURST": "6",
            "AGENTKAVACH_DAILY_EVENTS_PER_KEY": "1000",
        }
        first = start_process(env, tmp_path / "a.log")
        try:
            second = start_process(env, tmp_path / "b.log")
            try:
                account = accounts(first.url)
                key = account.new_key()
                clients = [
                    httpx.Client(base_url=p.url, headers={"Authorization": f"Bearer {key}"})
                    for p in (first, second)
                ]
                codes = [
                    clients[i % 2].post("/v1/ingest", json=batch(event())).status_code
                    for i in range(12)
                ]
                # Six in all, not six per process.
                assert codes.count(202) == 6, codes
                assert codes.count(429) == 6
                for client in clients:
                    client.close()
            finally:
                second.stop()
        finally:
            first.stop()


@pytest.mark.anyio
async def test_memory_and_redis_limiters_agree() -> None:
    need_redis()
    prefix = f"test:{uuid.uuid4().hex}:"
    redis_limiter = RedisLimiter(REDIS_URL, prefix)
    memory = MemoryLimiter()
    try:
        for limiter in (memory, redis_limiter):
            limits = [
                Bucket("b", rate=0.001, capacity=3, cost=1, reason="bucket"),
                Window("w", cap=5, cost=2, resets_in=60, reason="window"),
            ]
            results = [await limiter.acquire(limits) for _ in range(4)]
            # Two pass (4 of 5 window units), the third hits the window: nothing consumed,
            # so the bucket still has one token.
            assert results[0] is None and results[1] is None
            assert results[2] is not None and results[2].reason == "window"
            assert 50 <= results[2].retry_after <= 60
            only_bucket = [Bucket("b", rate=0.001, capacity=3, cost=1, reason="bucket")]
            assert await limiter.acquire(only_bucket) is None
            refused = await limiter.acquire(only_bucket)
            assert refused is not None and refused.reason == "bucket"
    finally:
        await redis_limiter.close()
    await asyncio.sleep(0)
