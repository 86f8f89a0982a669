"""The self-hosted stack of compose.yml, without Docker: ``python -m backend serve`` against
the local PostgreSQL and Redis, as a subprocess. It must answer /v1/status and really use
both (rows in PostgreSQL, rate-limit state and the control relay in Redis)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from tests.backend.conftest import batch, event
from tests.backend.ops_helpers import (  # noqa: F401 - accounts_fixture is a fixture
    REDIS_URL,
    ROOT,
    accounts_fixture,
    fresh_postgres,
    need_redis,
    start_process,
)


def _pg_rows(dsn: str, sql: str) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


def test_serve_against_local_postgres_and_redis(tmp_path: Path, accounts: Any) -> None:
    need_redis()
    prefix = f"test:{uuid.uuid4().hex}:"
    static = tmp_path / "static"  # stands in for the built dashboard (the image's ui stage)
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>AgentKavach</title>")
    with fresh_postgres() as database_url:
        proc = start_process(
            {
                "AGENTKAVACH_DATABASE_URL": database_url,
                "AGENTKAVACH_REDIS_URL": REDIS_URL,
                "AGENTKAVACH_REDIS_PREFIX": prefix,
                "AGENTKAVACH_STATIC_DIR": str(static),
            },
            tmp_path / "serve.log",
        )
        client = redis.Redis.from_url(REDIS_URL)
        try:
            status = httpx.get(proc.url + "/v1/status").json()
            assert status["database"] == "ok" and status["database_kind"] == "postgres"

            account = accounts(proc.url)
            with account.sdk() as sdk:
                assert sdk.post("/v1/ingest", json=batch(event(), event())).status_code == 202
            # PostgreSQL holds the account and the events.
            users = _pg_rows(database_url, "SELECT email FROM users")
            assert [r["email"] for r in users] == [account.email]
            assert _pg_rows(database_url, "SELECT count(*) AS n FROM events")[0]["n"] == 2
            # Redis holds the shared rate-limit state, and the control relay listens on it.
            assert client.keys(prefix + "rl:*"), "no rate-limit keys in Redis"
            assert client.pubsub_numpat() >= 1

            # With Redis relaying control messages, a change carrying budgets (datetimes)
            # must still publish: budget and Stop answer, not 500.
            made = account.client.post(
                "/v1/budgets", json={"kind": "usd", "period": "daily", "limit_usd": "5"}
            )
            assert made.status_code == 201, made.text
            stopped = account.client.post("/v1/agents/research-bot/kill", json={})
            assert stopped.status_code == 200, stopped.text
            assert "<title>AgentKavach</title>" in httpx.get(proc.url + "/agents").text
            metrics = httpx.get(proc.url + "/metrics").text
            assert "agentkavach_ingest_events_total 2" in metrics
            assert 'agentkavach_ingest_requests_total{status="202"} 1' in metrics
        finally:
            for key in client.scan_iter(prefix + "*"):
                client.delete(key)
            client.close()
            proc.stop()
    assert "Traceback" not in proc.log.read_text()


def test_compose_file_describes_the_same_stack() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "backend"}
    backend = services["backend"]
    env = backend["environment"]
    assert env["AGENTKAVACH_DATABASE_URL"].startswith("postgresql://")
    assert env["AGENTKAVACH_REDIS_URL"] == "redis://redis:6379/0"
    assert backend["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for service in services.values():
        assert "healthcheck" in service
    assert set(compose["volumes"]) == {"postgres-data", "redis-data"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "npm run build" in dockerfile and '".[server,redis]"' in dockerfile
    assert "hatch_build.py" in dockerfile  # the wheel's build hook must be in the context
    assert '"backend", "serve"' in dockerfile
