"""How long ``import kavach`` takes, against a bare interpreter start, in one run.

    python benchmarks/import_time.py [--runs 15]

Target (issue 2): at most 150 ms added by the import.

Measured twice: with bytecode caches, as after ``pip install`` (which compiles them),
kept in a temporary ``PYTHONPYCACHEPREFIX`` so the checkout is not touched; and without
(``PYTHONDONTWRITEBYTECODE=1``, as some CI machines and containers set it), where every
import compiles its source first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(code: str, runs: int, env: dict[str, str]) -> list[float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as prefix:
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = prefix
        uncached = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        uncached.pop("PYTHONPYCACHEPREFIX", None)
        wall("import kavach", 1, cached)  # writes the bytecode caches
        print(f"{'median of ' + str(args.runs):28} {'start':>9} {'+ import':>9} {'adds':>9}")
        for name, env in (("with bytecode (installed)", cached), ("without bytecode", uncached)):
            # Interleaved, so a busy moment on the machine hits both alike.
            base, full = [], []
            for _ in range(args.runs):
                base += wall("pass", 1, env)
                full += wall("import kavach", 1, env)
            b, f = statistics.median(base), statistics.median(full)
            print(f"{name:28} {b:6.1f} ms {f:6.1f} ms {f - b:6.1f} ms   (target <= 150 ms)")


if __name__ == "__main__":
    main()
