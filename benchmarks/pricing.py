"""Median microseconds per call: genai-prices' calc_price against kavach's cached pricing.

Run: python benchmarks/pricing.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import genai_prices  # noqa: E402

from kavach.pricing import Pricing  # noqa: E402
from kavach.usage import Usage  # noqa: E402

CASES = [
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-5"),  # tiered
    ("google", "gemini-2.5-flash"),  # audio prices
]
USAGE = Usage(
    input_tokens=12_000, output_tokens=800, cache_read_tokens=10_000, reasoning_tokens=200
)
GP_USAGE = genai_prices.Usage(
    input_tokens=12_000, output_tokens=800, cache_read_tokens=10_000, output_reasoning_tokens=200
)


def median_us(fn: Callable[[], object], number: int, repeat: int = 15) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - start) / number)
    return statistics.median(runs) * 1e6


def main() -> None:
    pricing = Pricing()
    print(f"genai-prices {genai_prices.__version__}, Python {sys.version.split()[0]}")
    header = (
        f"{'model':<30} {'calc_price':>12} {'Pricing.cost':>13} {'resolve hit':>12} {'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for provider, model in CASES:
        pricing.cost(provider, model, USAGE)  # fill the cache

        def gp_call(model: str = model, provider: str = provider) -> object:
            return genai_prices.calc_price(GP_USAGE, model, provider_id=provider)

        def our_cost(model: str = model, provider: str = provider) -> object:
            return pricing.cost(provider, model, USAGE)

        def our_resolve(model: str = model, provider: str = provider) -> object:
            return pricing.resolve(provider, model)

        gp_us = median_us(gp_call, 300)
        cost_us = median_us(our_cost, 20_000)
        resolve_us = median_us(our_resolve, 50_000)
        print(
            f"{provider + '/' + model:<30} {gp_us:>10.1f}us {cost_us:>11.2f}us "
            f"{resolve_us:>10.2f}us {gp_us / cost_us:>7.0f}x"
        )
    print("ratio = calc_price / Pricing.cost")


if __name__ == "__main__":
    main()
