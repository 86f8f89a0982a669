"""Ingest throughput: events per second into SQLite and PostgreSQL.

Starts the backend with ``python -m backend serve`` on a loopback port (its own
process, so the senders do not share its interpreter), registers an account,
creates a key, then runs 4 concurrent senders posting batches for a fixed time.
Reports sustained events/s and p50/p99 request latency per database and batch size.

    python benchmarks/ingest.py --db sqlite --db postgres --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "benchmark-secret-key-0123456789-abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def pg(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def make_batch(sender: int, counter: int, size: int, started_at: str) -> bytes:
    events = [
        {
            "id": f"{sender}-{counter}-{i}-{uuid.uuid4().hex[:8]}",
            "agent": f"agent-{i % 8}",
            "run_id": f"run-{sender}-{counter % 50}",
            "provider": "openai",
            "model": "gpt-4o" if i % 3 else "gpt-4o-mini",
            "operation": "chat",
            "status": "ok" if i % 50 else "refused",
            "refusal_reason": None if i % 50 else "budget",
            "started_at": started_at,
            "duration_ms": 12.5,
            "cost_nanos": 1234 + i,
            "reserved_nanos": 5000,
            "usage": {"input_tokens": 100, "output_tokens": 20},
            "response_model": "gpt-4o-2024-08-06",
            "finish_reasons": ["stop"],
            "max_output_tokens": 256,
        }
        for i in range(size)
    ]
    return msgspec.json.encode(
        {"sdk": {"version": "0.1.0", "instance_id": "bench"}, "events": events}
    )


async def sender(
    base: str, key: str, index: int, size: int, until: float, latencies: list[float]
) -> int:
    sent = 0
    counter = 0
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as client:
        while time.monotonic() < until:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            body = make_batch(index, counter, size, now)
            counter += 1
            started = time.perf_counter()
            response = await client.post(
                "/v1/ingest", content=body, headers={"Content-Type": "application/json"}
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 202:
                raise RuntimeError(f"ingest failed: {response.status_code} {response.text[:200]}")
            sent += response.json()["accepted"]
    return sent


async def run_one(database_url: str, sizes: list[int], senders: int, seconds: float) -> None:
    port = free_port()
    env = {
        **os.environ,
        "AGENTKAVACH_SECRET_KEY": SECRET,
        "AGENTKAVACH_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backend",
        "serve",
        "--port",
        str(port),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            for _ in range(300):
                try:
                    if (await client.get("/v1/status")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            await client.post(
                "/v1/auth/register",
                json={"email": email, "password": "benchmark pw", "organization": "bench"},
            )
            token = (
                await client.post(
                    "/v1/auth/login", json={"email": email, "password": "benchmark pw"}
                )
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            key = (await client.post("/v1/keys", json={"name": "bench"}, headers=headers)).json()[
                "key"
            ]
            kind = "postgres" if database_url.startswith("postgres") else "sqlite"
            for size in sizes:
                latencies: list[float] = []
                until = time.monotonic() + seconds
                started = time.monotonic()
                counts = await asyncio.gather(
                    *(sender(base, key, i, size, until, latencies) for i in range(senders))
                )
                elapsed = time.monotonic() - started
                total = sum(counts)
                latencies.sort()
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                print(
                    f"{kind:8} batch={size:5} senders={senders} events={total:7} "
                    f"rate={total / elapsed:9.0f} ev/s  p50={statistics.median(latencies) * 1000:7.1f} ms"
                    f"  p99={p99 * 1000:7.1f} ms  requests={len(latencies)}",
                    flush=True,
                )
            overview_times = []
            for _ in range(20):
                t0 = time.perf_counter()
                await client.get("/v1/dashboard/overview", headers=headers)
                overview_times.append(time.perf_counter() - t0)
            overview_times.sort()
            print(
                f"{kind:8} overview p95={overview_times[int(len(overview_times) * 0.95) - 1] * 1000:.1f} ms"
            )
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batch", type=int, action="append")
    args = parser.parse_args()
    sizes = args.batch or [100, 1000]
    for kind in args.db or ["sqlite", "postgres"]:
        if kind == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                await run_one(str(Path(tmp) / "bench.sqlite"), sizes, args.senders, args.seconds)
        else:
            name = f"ak_bench_{uuid.uuid4().hex[:8]}"
            await pg(f"CREATE DATABASE {name}")
            try:
                await run_one(
                    PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", sizes, args.senders, args.seconds
                )
            finally:
                await pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    asyncio.run(main())
