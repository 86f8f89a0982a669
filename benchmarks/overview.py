"""Overview latency with many stored events (default one million).

Creates an account and agents through the API, bulk-loads events with SQL (ingest
speed is measured by ``ingest.py``), 2% of them refusals, spread over the last 30 days,
and the daily and hourly rollups that ingest would have made of them. Then times
``GET /v1/dashboard/overview``: p50/p95 of 50 requests after 5 untimed ones.

The data is loaded once per database; ``--code LABEL=PATH`` (repeatable) serves it from
other checkouts in turn, ``--repeat`` interleaves rounds, and the summary gives medians.

    python benchmarks/overview.py --db sqlite --db postgres --events 1000000
    python benchmarks/overview.py --db sqlite --code before=/tmp/base --code after=. --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
from served_backend import (  # type: ignore[import-not-found]
    ROOT,
    ServedBackend,
    scratch_database,
    served_backend,
)

from backend.ingest import _ROLLUP_METRICS  # the rollups are written as ingest writes them

EMAIL = "overview-bench@example.com"

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

# The rollups of the bulk events, added to what the real ingest already put there.
ROLLUP_SQL = """
INSERT INTO {table} (org, agent, model, {column}, cost_nanos, calls, tokens, input_tokens,
  output_tokens, refusals, errors)
SELECT org, agent, model, {bucket}, SUM(cost_nanos),
  SUM(CASE WHEN status <> 'refused' THEN 1 ELSE 0 END), SUM(input_tokens + output_tokens),
  SUM(input_tokens), SUM(output_tokens), SUM(CASE WHEN status = 'refused' THEN 1 ELSE 0 END),
  SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END)
FROM events WHERE org = {org} AND idempotency_key LIKE 'bulk-%' GROUP BY org, agent, model, {bucket}
ON CONFLICT (org, agent, model, {column}) DO UPDATE SET
""" + ", ".join(f"{m} = {{table}}.{m} + excluded.{m}" for m in _ROLLUP_METRICS)


def load_sqlite(path: str, org: int, count: int) -> None:
    conn = sqlite3.connect(path)
    series = (
        f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
        "SELECT n FROM s)"
    )
    # Spread over the last 30 days, in Piccolo's stored format.
    started = "strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || (n % (30 * 24)) || ' hours') || '+00:00'"
    conn.execute(EVENTS_SQL.format(org=org, series=series, started=started))
    for table, column, bucket in (
        ("spend_daily", "day", "substr(started_at, 1, 10)"),
        ("spend_hourly", "bucket", "substr(started_at, 1, 13) || ':00:00+00:00'"),
    ):
        conn.execute(ROLLUP_SQL.format(table=table, column=column, bucket=bucket, org=org))
    conn.commit()
    conn.close()


async def load_postgres(dsn: str, org: int, count: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        series = f"generate_series(1, {count}) AS n"
        started = "now() - ((n % (30 * 24)) || ' hours')::interval"
        await conn.execute(EVENTS_SQL.format(org=org, series=series, started=started))
        utc = "(started_at AT TIME ZONE 'UTC')"
        for table, column, bucket in (
            ("spend_daily", "day", f"{utc}::date"),
            ("spend_hourly", "bucket", f"date_trunc('hour', {utc}) AT TIME ZONE 'UTC'"),
        ):
            await conn.execute(
                ROLLUP_SQL.format(table=table, column=column, bucket=bucket, org=org)
            )
        # The steady state autovacuum keeps: visibility map set, so index-only scans work.
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def load(backend: ServedBackend, count: int) -> None:
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
    if backend.kind == "sqlite":
        await asyncio.to_thread(load_sqlite, backend.database_url, backend.org, count)
    else:
        await load_postgres(backend.database_url, backend.org, count)
    print(f"{backend.kind:8} loaded {count} events in {time.monotonic() - started:.1f} s")


async def measure(backend: ServedBackend) -> tuple[float, float, int]:
    """p50 and p95 in ms, and the refusals the overview counted this month."""
    async with httpx.AsyncClient(base_url=backend.base, timeout=120) as client:
        timings = []
        for i in range(55):
            t0 = time.perf_counter()
            response = await client.get("/v1/dashboard/overview", headers=backend.user_headers)
            if i >= 5:
                timings.append(time.perf_counter() - t0)
            assert response.status_code == 200, response.text
    timings.sort()
    refusals = sum(response.json()["refusals_by_reason"].values())
    return statistics.median(timings) * 1000, timings[int(len(timings) * 0.95) - 1] * 1000, refusals


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--code", action="append", metavar="LABEL=PATH")
    args = parser.parse_args()
    args.code = [
        (label, Path(path).resolve())
        for label, path in (c.split("=", 1) for c in args.code or [f"this={ROOT}"])
    ]
    return args


async def main(args: argparse.Namespace) -> None:
    results: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for kind in args.db or ["sqlite", "postgres"]:
        async with scratch_database(kind) as url:
            async with served_backend(url, code=args.code[0][1], email=EMAIL) as backend:
                await load(backend, args.events)
            for round_ in range(args.repeat):
                order = args.code if round_ % 2 == 0 else args.code[::-1]
                for label, code in order:
                    async with served_backend(url, code=code, email=EMAIL) as backend:
                        p50, p95, refusals = await measure(backend)
                    results[(label, kind)].append((p50, p95))
                    print(
                        f"{label:8} {kind:8} overview with {args.events} events: p50={p50:.1f} ms "
                        f"p95={p95:.1f} ms (refusals this month: {refusals})",
                        flush=True,
                    )
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} rounds")
        for (label, kind), values in results.items():
            p50 = statistics.median(v[0] for v in values)
            p95 = statistics.median(v[1] for v in values)
            print(f"{label:8} {kind:8} overview p50={p50:.1f} ms p95={p95:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(arguments()))
