"""What a guard adds to one OpenAI SDK call, counted instead of timed.

    python benchmarks/provider_footprint.py [--calls 100] [--warmup 300]

``provider_overhead.py`` times the guard inside real calls, and on a shared VM those
figures move by tens of microseconds from one run to the next. This script counts what
the guard adds instead, under valgrind's cachegrind, which is deterministic: the same code
gives the same counts whatever else the machine is doing. Use it to tell whether a change
to the hot path helps.

How it counts. The same ``chat.completions.create`` call runs in process over an httpx
MockTransport (no socket, no server), on a raw client and on a guarded one. Each side runs
twice after the same warmup: once with no measured calls and once with ``--calls``. The
difference of the two runs, divided by ``--calls``, is one call's cost. The guarded side's
cost minus the raw side's is what the guard adds.

It prints per call:
- instructions;
- first-level cache misses, for instructions (I1) and data (D1).

A call through the SDK runs about five million instructions. That evicts the guard's code
and data from the first-level caches, and, on a busy host, from the second and third
levels too. So each L1 miss the guard adds is a cache line it touches on every call, and
inside a real call each costs from a few to a hundred nanoseconds. The miss count, not the
instruction count, is what tracks the guard's latency inside a call.

It first counts the Python bytecodes the guard adds to one call, per function of the guard,
by tracing one raw and one guarded call (``sys.settrace`` with opcode events; deterministic
and quick, no valgrind needed). Each bytecode inside a real call costs about 20 ns on the
VMs measured so far, most of it in cache misses, so this table says where a cut pays.

The cachegrind counts need valgrind (Debian's ``valgrind`` package); ``--bytecodes-only``
skips them.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

EVENTS = {
    "Ir": "instructions",
    "I1mr": "L1 instruction misses",
    "D1mr": "L1 data read misses",
    "D1mw": "L1 data write misses",
}


def child(side: str, warmup: int, calls: int) -> None:
    """The measured workload: ``warmup`` calls, then ``calls`` more with the collector off."""
    sys.path.insert(0, str(Path(__file__).parent))
    from provider_overhead import create, guard, mock_client

    client = mock_client()
    if side == "guarded":
        client = guard().wrap(client)
    call, ids = create(client), itertools.count(1_000_000)
    for _ in range(warmup):
        call(next(ids))
    gc.collect()
    gc.disable()  # a collection lands in one run and not the other: it is noise here
    for _ in range(calls):
        call(next(ids))


def bytecodes(warmup: int) -> None:
    """Print the bytecodes one guarded call runs beyond a raw one, per function."""
    sys.path.insert(0, str(Path(__file__).parent))
    from provider_overhead import create, guard, mock_client

    raw = mock_client()
    guarded = guard().wrap(raw.copy())
    calls, ids = {"raw": create(raw), "guarded": create(guarded)}, itertools.count(1_000_000)
    for _ in range(warmup):
        for call in calls.values():
            call(next(ids))

    def count(call: Any) -> Counter[str]:
        counts: Counter[str] = Counter()

        def trace(frame: FrameType, event: str, arg: object) -> Any:
            frame.f_trace_opcodes = True
            if event == "opcode":
                code = frame.f_code
                counts[f"{'/'.join(Path(code.co_filename).parts[-2:])}:{code.co_name}"] += 1
            return trace

        sys.settrace(trace)
        try:
            call(next(ids))
        finally:
            sys.settrace(None)
        return counts

    raw_counts, guarded_counts = count(calls["raw"]), count(calls["guarded"])
    added = guarded_counts - raw_counts
    raw_total, guarded_total = raw_counts.total(), guarded_counts.total()
    print(f"Python bytecodes per chat.completions.create call (after {warmup} calls)")
    print(
        f"  raw SDK {raw_total:,}   guarded {guarded_total:,}   added {guarded_total - raw_total:,}"
    )
    print("  added, by function of the guard:")
    for name, n in added.most_common():
        print(f"    {n:6,}  {name}")
    print()


def totals(path: Path) -> dict[str, int]:
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            return dict(zip(events, (int(x) for x in line.split()[1:]), strict=True))
    raise SystemExit(f"no summary in {path}: did valgrind finish?")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--bytecodes-only", action="store_true", help="skip cachegrind")
    parser.add_argument("--child", choices=("raw", "guarded"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.warmup, args.calls)
        return
    bytecodes(args.warmup)
    if args.bytecodes_only:
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit(
            "valgrind is not installed: apt-get install valgrind, then run again for the "
            "cache counts"
        )

    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same hashes, so the same dict probes
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for side in ("raw", "guarded"):
            for calls in (0, args.calls):
                out = Path(tmp) / f"{side}.{calls}"
                command = [valgrind, "--tool=cachegrind", "--cache-sim=yes"]
                command += [f"--cachegrind-out-file={out}", sys.executable, __file__]
                command += ["--child", side, "--warmup", str(args.warmup), "--calls", str(calls)]
                runs[side, calls] = (
                    out,
                    subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL),
                )
        for (side, calls), (_, process) in runs.items():
            if process.wait() != 0:
                raise SystemExit(f"the {side} run with {calls} calls failed")
        counts = {key: totals(out) for key, (out, _) in runs.items()}

    def per_call(side: str, event: str) -> float:
        return (counts[side, args.calls][event] - counts[side, 0][event]) / args.calls

    print(f"Per chat.completions.create call, in process ({args.calls} calls after {args.warmup})")
    print(f"  {'':24} {'raw SDK':>12} {'guarded':>12} {'added':>10} {'added/raw':>10}")
    for event, label in EVENTS.items():
        raw, guarded = per_call("raw", event), per_call("guarded", event)
        print(
            f"  {label:24} {raw:12,.0f} {guarded:12,.0f} {guarded - raw:10,.0f}"
            f" {(guarded - raw) / raw:10.1%}"
        )


if __name__ == "__main__":
    main()
