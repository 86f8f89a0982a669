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
import time
import uuid
from pathlib import Path

import httpx
from served_backend import ROOT, scratch_database, served_backend  # type: ignore[import-not-found]

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


async def run_one(kind: str, count: int, code: Path) -> None:
    async with scratch_database(kind) as url, served_backend(url, code=code) as backend:
        async with httpx.AsyncClient(base_url=backend.base, timeout=120) as client:
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
            response = await client.post(
                "/v1/ingest", json={"events": events}, headers={"X-API-Key": backend.key}
            )
            response.raise_for_status()
            started = time.monotonic()
            if kind == "sqlite":
                await asyncio.to_thread(load_sqlite, url, backend.org, count)
            else:
                await load_postgres(url, backend.org, count)
            print(f"{kind:8} loaded {count} events in {time.monotonic() - started:.1f} s")
            timings = []
            for _ in range(50):
                t0 = time.perf_counter()
                response = await client.get("/v1/dashboard/overview", headers=backend.user_headers)
                timings.append(time.perf_counter() - t0)
                assert response.status_code == 200
            timings.sort()
            refusals = response.json()["refusals_by_reason"]
            print(
                f"{kind:8} overview with {count} events: p50={statistics.median(timings) * 1000:.1f}"
                f" ms p95={timings[int(len(timings) * 0.95) - 1] * 1000:.1f} ms "
                f"(refusals this month: {sum(refusals.values())})"
            )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--code", default=str(ROOT), help="the checkout to serve")
    args = parser.parse_args()
    args.code = Path(args.code).resolve()
    return args


async def main(args: argparse.Namespace) -> None:
    for kind in args.db or ["sqlite", "postgres"]:
        await run_one(kind, args.events, args.code)


if __name__ == "__main__":
    asyncio.run(main(arguments()))
