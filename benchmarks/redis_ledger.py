"""Reserve + settle round trips on the local Redis, side by side with the memory ledger.

    python benchmarks/redis_ledger.py [--url redis://127.0.0.1:6379/0] [--pairs 4000]

Prints the median and p99 latency of one reserve-and-settle pair (sync, and async with
1, 8 and 64 concurrent callers) and the throughput in pairs per second.
Targets (issue 6): median <= 0.3 ms per pair; >= 10,000 pairs/s with 64 async callers.
Each pair reserves on two keys (an agent's daily budget and a shared one), as a guard does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import redis

from kavach.ledger import Hold, LedgerLine, MemoryLedger
from kavach.ledger.redis import RedisLedger

LIMIT = 10**15  # never refuses: we measure the round trips, not refusals


def lines(prefix: str) -> list[LedgerLine]:
    return [
        LedgerLine(f"{prefix}agent:bench:daily:2026-11-28", LIMIT, 2_500, 10_000, 3600),
        LedgerLine(f"{prefix}shared:team:daily:2026-11-28", LIMIT, 2_500, 10_000, 3600),
    ]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sync_pairs(ledger: MemoryLedger | RedisLedger, ls: list[LedgerLine], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        hold = ledger.reserve(ls, 1, 4096)
        assert isinstance(hold, Hold)
        ledger.settle(hold, (1000, 1000))
        out.append(time.perf_counter() - t0)
    return out


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def async_pairs(
    ledger: MemoryLedger | RedisLedger, ls: list[LedgerLine], n: int, callers: int
) -> tuple[list[float], float]:
    per = n // callers
    samples: list[float] = []

    async def caller() -> None:
        for _ in range(per):
            t0 = time.perf_counter()
            hold = await ledger.areserve(ls, 1, 4096)
            assert isinstance(hold, Hold)
            await ledger.asettle(hold, (1000, 1000))
            samples.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - start
    return samples, per * callers / elapsed


def row(name: str, samples: list[float], rate: float | None = None) -> str:
    med, p99 = statistics.median(samples) * 1e3, pct(samples, 0.99) * 1e3
    rate = rate if rate is not None else len(samples) / sum(samples)
    return f"{name:<28} {med:9.3f} {p99:9.3f} {rate:13,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pairs", type=int, default=4000)
    args = parser.parse_args()
    n = args.pairs
    prefix = f"kavach-bench:{uuid.uuid4().hex[:8]}:"
    rl = RedisLedger(args.url, prefix=prefix)
    ml = MemoryLedger()
    ls = lines("")
    try:
        sync_pairs(rl, ls, 200)  # warm up: connection, script cache
        print(f"{'reserve+settle pair':<28} {'median ms':>9} {'p99 ms':>9} {'pairs/s':>13}")
        print(row("memory, sync", sync_pairs(ml, ls, n)))
        print(row("redis, sync", sync_pairs(rl, ls, n)))

        async def run_async() -> None:
            await async_pairs(rl, ls, 256, 8)  # warm up this loop's pool
            for callers in (1, 8, 64):
                samples, rate = await async_pairs(ml, ls, n, callers)
                print(row(f"memory, async x{callers}", samples, rate))
                pairs = n * (2 if callers > 1 else 1)
                cpu0, rcpu0 = time.process_time(), redis_cpu(info)
                samples, rate = await async_pairs(rl, ls, pairs, callers)
                cpu[callers] = (
                    (time.process_time() - cpu0) / len(samples),
                    (redis_cpu(info) - rcpu0) / len(samples),
                )
                print(row(f"redis, async x{callers}", samples, rate))
            await rl.aclose()

        info = redis.Redis.from_url(args.url)
        cpu: dict[int, tuple[float, float]] = {}
        asyncio.run(run_async())
        info.close()
        print("targets: redis median <= 0.300 ms per pair; >= 10,000 pairs/s with 64 callers")
        py, srv = cpu[64]
        print(
            f"CPU per pair with 64 callers: client {py * 1e6:.0f} us, Redis server "
            f"{srv * 1e6:.0f} us -> {1 / max(py, srv):,.0f} pairs/s when each has a core"
        )
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"load average {load} on {os.cpu_count()} cores (the machine is shared)")
    finally:
        client = redis.Redis.from_url(args.url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
        rl.close()


if __name__ == "__main__":
    main()
