"""The price list from genai-prices, flattened for ``GET /v1/pricing``."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

__all__ = ["price_list", "search_prices"]

_FIELDS = {
    "input_mtok": "input_per_mtok",
    "output_mtok": "output_per_mtok",
    "cache_read_mtok": "cache_read_per_mtok",
    "cache_write_mtok": "cache_write_per_mtok",
    "cache_write_1h_mtok": "cache_write_1h_per_mtok",
}


def _usd(value: Any) -> str | None:
    if value is None:
        return None
    base = getattr(value, "base", value)  # tiered prices: the base tier
    return str(Decimal(base).normalize()) if isinstance(base, Decimal | int) else str(base)


@functools.cache
def price_list() -> tuple[dict[str, Any], ...]:
    from genai_prices import data

    entries: list[dict[str, Any]] = []
    for provider in data.providers:
        for model in provider.models:
            prices: Any = model.prices
            if isinstance(prices, list):
                # Conditional prices: the last one is the most recent.
                prices = prices[-1].prices if prices else None
            if prices is None:
                continue
            row: dict[str, Any] = {
                "provider": provider.id,
                "provider_name": provider.name,
                "model": model.id,
                "name": model.name or model.id,
                "context_window": model.context_window,
                "tiered": any(hasattr(getattr(prices, k, None), "tiers") for k in _FIELDS),
            }
            for source, target in _FIELDS.items():
                row[target] = _usd(getattr(prices, source, None))
            if row["input_per_mtok"] is None and row["output_per_mtok"] is None:
                continue
            entries.append(row)
    return tuple(entries)


def search_prices(q: str | None, provider: str | None, limit: int) -> list[dict[str, Any]]:
    needle = (q or "").strip().lower()
    results = []
    for row in price_list():
        if provider and row["provider"] != provider:
            continue
        if needle and needle not in row["model"].lower() and needle not in row["name"].lower():
            continue
        results.append(row)
        if len(results) >= limit:
            break
    return results
