"""How long ``import kavach`` takes, against a bare interpreter start, in one run.

    python benchmarks/import_time.py [--runs 15]

Target (issue 2): at most 150 ms added by the import.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(code: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    base = statistics.median(wall("pass", args.runs))
    with_kavach = statistics.median(wall("import kavach", args.runs))
    print(f"interpreter start     {base:7.1f} ms (median of {args.runs})")
    print(f"start + import kavach {with_kavach:7.1f} ms")
    print(f"import kavach adds    {with_kavach - base:7.1f} ms   (target <= 150 ms)")


if __name__ == "__main__":
    main()
