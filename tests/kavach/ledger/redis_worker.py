"""A separate process for the multi-process Redis tests (run with ``python -m``).

``spend URL PREFIX LIMIT CALLS``: prints ``ready``, waits for a line on stdin, then makes
CALLS concurrent async calls in strict mode on a shared daily budget and prints one JSON
line with what this process admitted and spent.
``hold URL PREFIX LEASE N``: reserves N calls, prints ``held N <Redis ms before the first>
<Redis ms after the last>``, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

from kavach import AgentKavach, AgentKilledError, Budget, BudgetExceededError, CallSpec, Usage
from kavach.ledger.redis import RedisLedger
from kavach.pricing import ModelPrice

PRICES = {"test-model": ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)}


def call_spec(i: int, max_output: int | None) -> CallSpec:
    return CallSpec(
        provider="openai",
        model="test-model",
        messages=[{"role": "user", "content": f"{os.getpid()}-{i}"}],
        max_output_tokens=max_output,
        input_tokens=200,
    )


async def spend(url: str, prefix: str, limit: str, calls: int) -> None:
    ledger = RedisLedger(url, prefix=prefix, lease_seconds=60)
    guard = AgentKavach(
        f"worker-{os.getpid()}",
        Budget.daily(limit, shared="pool"),
        mode="strict",
        prices=PRICES,
        ledger=ledger,
        detect_loops=False,
    )
    admitted = refused = spent = 0

    async def one(i: int) -> None:
        nonlocal admitted, refused, spent
        await asyncio.sleep(random.random() * 0.3)  # arrivals spread over 300 ms
        try:
            r = await guard.areserve(call_spec(i, None))
        except (BudgetExceededError, AgentKilledError):
            refused += 1
            return
        admitted += 1
        await asyncio.sleep(random.random() / 50)
        used = r.max_output_tokens or 0
        usage = Usage(input_tokens=200, output_tokens=random.randint(used // 2, used))
        await r.acommit(usage)
        spent += r.cost_of(usage)

    await ledger.aread("warm-up")  # connect before the start line
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await asyncio.gather(*(one(i) for i in range(calls)))
    await ledger.aclose()
    ledger.close()
    print(
        json.dumps({"pid": os.getpid(), "admitted": admitted, "refused": refused, "spent": spent})
    )


def redis_ms(ledger: RedisLedger) -> int:
    seconds, micros = ledger.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def hold(url: str, prefix: str, lease: float, n: int) -> None:
    ledger = RedisLedger(url, prefix=prefix, lease_seconds=lease)
    guard = AgentKavach("bot", Budget.daily("0.01"), prices=PRICES, ledger=ledger)
    first = redis_ms(ledger)
    held = [guard.reserve(call_spec(i, 1800)) for i in range(n)]  # 2,000,000 nanos each
    print("held", len(held), first, redis_ms(ledger), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    if sys.argv[1] == "spend":
        url, prefix, limit, calls = sys.argv[2:6]
        asyncio.run(spend(url, prefix, limit, int(calls)))
    else:
        url, prefix, lease, n = sys.argv[2:6]
        hold(url, prefix, float(lease), int(n))
