"""Cost of reserve + commit on the memory ledger, against a no-op baseline, in one run.

    python benchmarks/overhead.py [--n 50000]

Prints median and p99 in microseconds. Targets (issue 2): median <= 15 us, p99 <= 60 us.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time

from kavach import AgentKavach, Budget, CallSpec, Usage


def measure(fn: object, n: int) -> list[float]:
    call = fn  # type: ignore[assignment]
    for _ in range(min(n, 2000)):
        call()  # type: ignore[operator]
    samples = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(n):
            t0 = clock()
            call()  # type: ignore[operator]
            samples.append((clock() - t0) / 1000.0)
    finally:
        gc.enable()
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()

    spec = CallSpec(
        provider="openai",
        model="gpt-4o",
        messages=[{"role": "user", "content": "Summarise the design doc in three bullets."}],
        max_output_tokens=256,
    )
    usage = Usage(input_tokens=20, output_tokens=120)
    guards = {
        "reserve+commit (1 budget)": AgentKavach("bench", Budget.daily(1e9), detect_loops=False),
        "reserve+commit (agent+shared+org, loops on)": AgentKavach(
            "bench",
            [Budget.daily(1e9), Budget.daily(1e9, shared="team"), Budget.monthly(1e9, org=True)],
            loop_threshold=10**9,
        ),
        "reserve+commit (strict, 1 budget)": AgentKavach(
            "bench", Budget.daily(1e9), mode="strict", detect_loops=False
        ),
    }

    def baseline() -> None:
        return None

    rows = [("no-op baseline", measure(baseline, args.n))]
    for name, guard in guards.items():
        guard.reserve(spec).commit(usage)  # warm: price and encoding resolved once

        def once(guard: AgentKavach = guard) -> None:
            guard.reserve(spec).commit(usage)

        rows.append((name, measure(once, args.n)))

    # An agent's turn: it resends its history (here 100 messages of about 200 characters,
    # counted once and then remembered) with one new message.
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "words " * 32}
        for i in range(100)
    ]
    agent = AgentKavach("bench", Budget.daily(1e9), loop_threshold=10**9)
    turns = itertools.count()

    def turn() -> None:
        new = {"role": "user", "content": f"And what about item {next(turns)}?"}
        agent.reserve(CallSpec(provider="openai", model="gpt-4o", messages=[*history, new])).commit(
            usage
        )

    rows.append(("reserve+commit (100-message history + 1 new)", measure(turn, args.n // 5)))
    base = statistics.median(rows[0][1])
    print(f"{'case':48} {'median us':>10} {'p99 us':>10} {'added median':>13}")
    for name, samples in rows:
        med = statistics.median(samples)
        print(f"{name:48} {med:10.2f} {pct(samples, 0.99):10.2f} {med - base:13.2f}")


if __name__ == "__main__":
    main()
