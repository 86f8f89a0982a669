"""Two backend replicas sharing a database and Redis: a kill on one reaches SDKs on the other."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import db
from tests.backend.conftest import register, start_server, stop_server
from tests.backend.test_control import next_message, seed, sse

REDIS_URL = os.environ.get("AGENTKAVACH_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        message = f"Redis at {REDIS_URL} is unreachable: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture
def keep_engine() -> Iterator[None]:
    previous = db._current
    yield
    if previous is not None:
        db.use_engine(previous)


@pytest.mark.redis
def test_kill_on_one_replica_reaches_a_stream_on_another(
    tmp_path: Path, redis_url: str, keep_engine: None
) -> None:
    # SQLite file shared by both replicas (one process: Piccolo's engine is global, and
    # both engines point at the same file, so either replica's queries see the same data).
    url = str(tmp_path / "replicas.sqlite")
    first = start_server(url, redis_url=redis_url)
    second = start_server(url, redis_url=redis_url)
    try:
        on_first = register(first.url)
        on_second = register(second.url)
        on_second.client.close()
        with on_first.client:
            seed(on_first)
            on_first.base_url = first.url
            with sse(on_first, "research-bot") as received:
                next_message(received)
                # The dashboard user talks to the second replica.
                on_first.client.base_url = second.url  # type: ignore[misc]
                started = time.monotonic()
                killed = on_first.client.post(
                    "/v1/agents/research-bot/kill", json={"reason": "from replica 2"}
                )
                assert killed.status_code == 200
                at, message = next_message(received)
                assert message["type"] == "kill" and message["reason"] == "from replica 2"
                assert at - started < 1.0
    finally:
        stop_server(first)
        stop_server(second)


@pytest.mark.redis
@pytest.mark.anyio
async def test_deployments_sharing_a_redis_never_hear_each_others_stops(redis_url: str) -> None:
    import asyncio

    from backend.control import ControlHub

    staging = ControlHub(redis_url, prefix=f"staging-{os.getpid()}:")
    production = ControlHub(redis_url, prefix=f"production-{os.getpid()}:")
    production_replica = ControlHub(redis_url, prefix=f"production-{os.getpid()}:")
    hubs = (staging, production, production_replica)
    for hub in hubs:
        await hub.start()
    try:
        async with (
            staging.subscribe(1) as staging_org_1,
            production_replica.subscribe(1) as production_org_1,
        ):
            await asyncio.sleep(0.2)  # the listeners' subscriptions are in place
            await production.publish(1, {"kind": "kill", "agents": ["bot"]})
            # The other production replica hears it; staging's org 1 does not.
            heard = await asyncio.wait_for(production_org_1.get(), timeout=5)
            assert heard == {"kind": "kill", "agents": ["bot"]}
            await asyncio.sleep(0.5)
            assert staging_org_1.empty()
    finally:
        for hub in hubs:
            await hub.stop()


@pytest.mark.redis
def test_org_budget_on_one_replica_reaches_an_unseen_agent_on_another(
    tmp_path: Path, redis_url: str, keep_engine: None
) -> None:
    # The SDK's agent has sent no event yet, so no replica knows it: each reads the state
    # of the agents its own subscribers watch.
    url = str(tmp_path / "replicas.sqlite")
    first = start_server(url, redis_url=redis_url)
    second = start_server(url, redis_url=redis_url)
    try:
        account = register(first.url)
        with account.client, sse(account, "not-seen-yet") as received:
            next_message(received)
            account.client.base_url = second.url  # type: ignore[misc]
            started = time.monotonic()
            created = account.client.post(
                "/v1/budgets", json={"kind": "calls", "period": "daily", "limit": 7}
            )
            assert created.status_code == 201, created.text
            at, message = next_message(received)
            assert (message["type"], message["agent"]) == ("budget", "not-seen-yet")
            assert [b["limit"] for b in message["budgets"]] == [7]
            assert at - started < 1.0
    finally:
        stop_server(first)
        stop_server(second)
