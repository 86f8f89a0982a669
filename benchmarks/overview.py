"""Overview latency with many stored events (default one million).

Creates an account and agents through the API, bulk-loads events with SQL (ingest
speed is measured by ``ingest.py``), with 2% refusals and matching rollups for 30
days, then times ``GET /v1/dashboard/overview`` (p50/p95 of 50 requests).

    python benchmarks/overview.py --db sqlite --db postgres --events 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from ingest import PG_ADMIN, SECRET, free_port, pg  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parent.parent

EVENTS_SQL = """
INSERT INTO events (org, agent, run, idempotency_key, provider, model, operation, status,
  refusal_reason, error, started_at, duration_ms, cost_nanos, reserved_nanos, input_tokens,
  output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, prompt, details,
  received_at)
SELECT {org}, (SELECT MIN(id) FROM agents WHERE org = {org}), NULL, 'bulk-' || n, 'openai',
  CASE WHEN n % 3 = 0 THEN 'gpt-4o-mini' ELSE 'gpt-4o' END, 'chat',
  CASE WHEN n % 50 = 0 THEN 'refused' ELSE 'ok' END,
  CASE WHEN n % 50 = 0 THEN (CASE WHEN n % 100 = 0 THEN 'budget' ELSE 'loop' END) END,
  NULL, {started}, 10.0, 1234, 5000, 100, 20, 0, 0, 0, NULL, '{{}}', {started}
FROM {series}
"""


def load_sqlite(path: str, org: int, count: int) -> None:
    conn = sqlite3.connect(path)
    series = (
        f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
        "SELECT n FROM s)"
    )
    # Spread over the last 30 days, in Piccolo's stored format.
    started = "strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || (n % (30 * 24)) || ' hours') || '+00:00'"
    conn.execute(EVENTS_SQL.format(org=org, series=series, started=started))
    conn.commit()
    conn.close()


async def load_postgres(dsn: str, org: int, count: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        series = f"generate_series(1, {count}) AS n"
        started = "now() - ((n % (30 * 24)) || ' hours')::interval"
        await conn.execute(EVENTS_SQL.format(org=org, series=series, started=started))
        # The steady state autovacuum keeps: visibility map set, so index-only scans work.
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


async def run_one(kind: str, database_url: str, count: int) -> None:
    port = free_port()
    env = {
        "AGENTKAVACH_SECRET_KEY": SECRET,
        "AGENTKAVACH_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
    }
    import os
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backend",
        "serve",
        "--port",
        str(port),
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            for _ in range(300):
                try:
                    if (await client.get("/v1/status")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            reg = await client.post(
                "/v1/auth/register",
                json={"email": email, "password": "benchmark pw", "organization": "bench"},
            )
            org = reg.json()["organization"]["id"]
            token = (
                await client.post(
                    "/v1/auth/login", json={"email": email, "password": "benchmark pw"}
                )
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            key = (await client.post("/v1/keys", json={"name": "b"}, headers=headers)).json()["key"]
            # One real event per agent creates the agents and the rollup rows.
            now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            events = [
                {
                    "id": str(uuid.uuid4()),
                    "agent": f"agent-{i}",
                    "provider": "openai",
                    "model": "gpt-4o",
                    "status": "ok",
                    "started_at": now,
                    "cost_nanos": 1000,
                }
                for i in range(8)
            ]
            await client.post("/v1/ingest", json={"events": events}, headers={"X-API-Key": key})
            started = time.monotonic()
            if kind == "sqlite":
                await asyncio.to_thread(load_sqlite, database_url, org, count)
            else:
                await load_postgres(database_url, org, count)
            print(f"{kind:8} loaded {count} events in {time.monotonic() - started:.1f} s")
            timings = []
            for _ in range(50):
                t0 = time.perf_counter()
                response = await client.get("/v1/dashboard/overview", headers=headers)
                timings.append(time.perf_counter() - t0)
                assert response.status_code == 200
            timings.sort()
            refusals = response.json()["refusals_by_reason"]
            print(
                f"{kind:8} overview with {count} events: p50={statistics.median(timings) * 1000:.1f}"
                f" ms p95={timings[int(len(timings) * 0.95) - 1] * 1000:.1f} ms "
                f"(refusals this month: {sum(refusals.values())})"
            )
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    for kind in args.db or ["sqlite", "postgres"]:
        if kind == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                await run_one(kind, str(Path(tmp) / "overview.sqlite"), args.events)
        else:
            name = f"ak_bench_{uuid.uuid4().hex[:8]}"
            await pg(f"CREATE DATABASE {name}")
            try:
                await run_one(kind, PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", args.events)
            finally:
                await pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    asyncio.run(main())
