"""What alerts cost the calls: reserve + commit with and without alert channels, and the
settle that crosses a threshold (the hand-off to the dispatcher), against a channel that hangs.

    python benchmarks/alerts.py [--n 20000]

Prints median and p99 in microseconds. No network: the channel is a loopback port that
accepts connections and never answers.
"""

from __future__ import annotations

import argparse
import gc
import logging
import socket
import statistics
import time

from kavach import AgentKavach, Budget, CallSpec, ModelPrice, Usage

SPEC = CallSpec(provider="openai", model="m", input_tokens=1000, max_output_tokens=1)
USAGE = Usage(input_tokens=1000)
PRICES = {"m": ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)}


def call(guard: AgentKavach) -> float:
    t0 = time.perf_counter_ns()
    with guard.reserve(SPEC) as r:
        r.commit(USAGE)
    return (time.perf_counter_ns() - t0) / 1000.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(guard: AgentKavach, n: int) -> list[float]:
    gc.disable()
    try:
        return [call(guard) for _ in range(n)]
    finally:
        gc.enable()


def main() -> None:
    logging.getLogger("kavach").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    n = parser.parse_args().n
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(100)  # accepts, never answers: every delivery hangs until its timeout
    url = f"http://127.0.0.1:{hang.getsockname()[1]}/hook"
    budget = Budget.daily(n * 10 / 1000, thresholds=[0.999])  # no crossing during the run
    plain = AgentKavach("bench", budget, prices=PRICES, detect_loops=False)
    alerted = AgentKavach(
        "bench",
        budget,
        prices=PRICES,
        detect_loops=False,
        channels=[AgentKavach.channel("webhook", threshold=0.999, url=url, timeout=5)],
    )
    run(plain, 2000)
    run(alerted, 2000)
    for name, guard in (("no alerts", plain), ("alerts configured", alerted)):
        s = run(guard, n)
        print(f"{name:>28}: median {statistics.median(s):6.1f} us  p99 {pct(s, 0.99):6.1f} us")
    # Crossing calls: each settle below crosses a threshold and hands an alert off.
    crossings = []
    for i in range(50):
        g = AgentKavach(
            f"cross{i}",
            Budget.daily(0.0015),
            prices=PRICES,
            detect_loops=False,
            channels=[AgentKavach.channel("webhook", threshold=0.5, url=url, timeout=5)],
        )
        crossings.append(call(g))  # the first settle crosses 50%
        g.alerts.close(0.05)  # type: ignore[union-attr]
    print(
        f"{'settle that crosses (hangs)':>28}: median {statistics.median(crossings):6.1f} us  "
        f"p90 {pct(crossings, 0.9):6.1f} us  max {max(crossings):6.1f} us (first: {crossings[0]:.1f} us)"
    )
    hang.close()


if __name__ == "__main__":
    main()
