"""How long a pre-call token estimate takes: warm (encoding loaded) and cold (first use).

Run: python benchmarks/tokens.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kavach.tokens import estimate_input_tokens  # noqa: E402

CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a concise assistant for a travel agency. " * 4},
    {"role": "user", "content": "I want to visit Lisbon in March. What should I pack?"},
    {
        "role": "assistant",
        "content": "Layers, a light rain jacket and comfortable shoes for the hills. "
        "March averages 17 C by day and 10 C at night, with some rain.",
    },
    {"role": "user", "content": "And which neighbourhoods are good for a first visit?"},
    {
        "role": "assistant",
        "content": "Baixa, Chiado and Alfama are central and walkable; Belem is a tram "
        "ride away and worth half a day.",
    },
]

COLD = """
import time
t, c = time.perf_counter(), time.process_time()
from kavach.tokens import estimate_input_tokens
estimate_input_tokens("openai", "gpt-4o", messages=[{"role": "user", "content": "hi"}])
print((time.perf_counter() - t) * 1e6, (time.process_time() - c) * 1e6)
"""


def median_us(fn: Any, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def main() -> None:
    estimate_input_tokens("openai", "gpt-4o", messages=CHAT)  # load o200k

    repeated = median_us(lambda: estimate_input_tokens("openai", "gpt-4o", messages=CHAT), 5000)

    fresh_chats = iter(
        [{**m, "content": f"{m['content']} (turn {i})"} for m in CHAT] for i in range(100_000)
    )
    fresh = median_us(
        lambda: estimate_input_tokens("openai", "gpt-4o", messages=next(fresh_chats)), 2000
    )
    claude = median_us(
        lambda: estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=next(fresh_chats)),
        2000,
    )

    cold_wall, cold_cpu = [], []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", COLD], cwd=ROOT, capture_output=True, text=True, check=True
        )
        wall, cpu = out.stdout.split()
        cold_wall.append(float(wall))
        cold_cpu.append(float(cpu))

    print("5-message chat, o200k (gpt-4o), encoding loaded:")
    print(f"  warm, repeated chat (counts cached)       {repeated:10.1f} us median")
    print(f"  warm, new text every call                 {fresh:10.1f} us median")
    print(f"  warm, new text, anthropic estimate        {claude:10.1f} us median")
    print("cold: import kavach.tokens + first estimate (loads o200k), median of 5 processes:")
    print(f"  wall                                      {statistics.median(cold_wall):10.0f} us")
    print(f"  cpu                                       {statistics.median(cold_cpu):10.0f} us")


if __name__ == "__main__":
    main()
