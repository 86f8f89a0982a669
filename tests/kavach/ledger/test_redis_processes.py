"""Several processes on one Redis: a shared strict budget, and a process killed mid-call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kavach import AgentKavach, Budget, BudgetExceededError
from kavach.events import NullObserver
from kavach.ledger import HoldReclaimed
from tests.kavach.conftest import PRICES, spec

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
WORKER = "tests.kavach.ledger.redis_worker"


def _python(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", WORKER, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def redis_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_four_processes_of_200_async_calls_never_pass_a_shared_strict_budget(
    redis_url: str, prefix: str, make_ledger: Any
) -> None:
    limit = "0.50"  # 5e8 nanos; 800 calls could ask for ~3.4e9 in the worst case
    procs = [
        _python("spend", redis_url, prefix, limit, "200", stdin=subprocess.PIPE) for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr
    for proc in procs:  # every process starts its 200 calls at the same moment
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(r["spent"] for r in results)
    print()
    for r in results:
        print(
            f"process {r['pid']}: admitted {r['admitted']} of 200, refused {r['refused']}, "
            f"spent ${r['spent'] / 1e9:.6f}"
        )
    ledger = make_ledger()
    key = f"shared:pool:daily:{time.strftime('%Y-%m-%d', time.gmtime())}"
    balance = ledger.read(key)
    print(
        f"total: admitted {sum(r['admitted'] for r in results)} of 800, spent "
        f"${total / 1e9:.6f} of ${limit} ({total / 5e6:.1f}%); Redis says "
        f"${balance.spent / 1e9:.6f}"
    )
    assert balance.spent == total  # every settle reached Redis, exactly once
    assert total <= 500_000_000
    assert balance.reserved == 0
    assert all(r["admitted"] > 0 for r in results)  # the processes really did share it
    assert sum(r["refused"] for r in results) > 0  # and the budget really was contended


def test_a_killed_process_holding_reservations_gives_them_back_after_the_lease(
    redis_url: str, prefix: str, make_ledger: Any, raw: Any
) -> None:
    lease = 2.0
    proc = _python("hold", redis_url, prefix, str(lease), "5")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("held 5"), proc.stderr.read() if proc.stderr else ""
    first_ms, last_ms = map(int, line.split()[2:4])  # Redis time around the five reserves
    proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    proc.wait(timeout=10)
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()

    reclaims: list[HoldReclaimed] = []

    class Watcher(NullObserver):
        def on_reclaim(self, reclaimed: HoldReclaimed) -> None:
            reclaims.append(reclaimed)

    guard = AgentKavach(
        "bot",
        Budget.daily("0.01"),
        prices=PRICES,
        ledger=make_ledger(),
        observers=[Watcher()],
        detect_loops=False,
    )
    refusals = 0
    while True:
        try:
            r = guard.reserve(spec(input_tokens=200, max_output=1800))  # needs $0.002
        except BudgetExceededError:
            refusals += 1
            assert time.monotonic() - killed_at < lease + 5, "the budget never recovered"
            time.sleep(0.05)
            continue
        recovered = time.monotonic() - killed_at
        now_ms = redis_ms(raw)
        r.release()
        break
    print(
        f"\nbudget held by 5 reservations of a SIGKILLed process: a call fitted again "
        f"{recovered:.2f}s after the kill, {(now_ms - first_ms) / 1000:.2f}s after the first "
        f"hold was made (lease {lease}s); {refusals} refusals meanwhile"
    )
    assert refusals > 0  # it really was blocked until a lease ran out
    assert now_ms - first_ms >= lease * 1000  # never before the first hold's lease ended
    assert now_ms - last_ms <= (lease + 2.0) * 1000  # and soon after
    while redis_ms(raw) < last_ms + lease * 1000:  # every hold's lease has ended:
        time.sleep(0.05)
    assert guard.status()[0].reserved == 0  # the whole budget is back
    assert len(reclaims) == 5 and {r.amount for r in reclaims} == {2_000_000}
