# INTERIM (not committed): stands in until the pricing branch merges.
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kavach.errors import UnknownModelPriceError
from kavach.usage import Usage


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True, slots=True)
class CompiledPrice:
    inp: int
    out: int

    def cost(self, usage: Usage) -> int:
        return -(-(usage.input_tokens * self.inp + usage.output_tokens * self.out) // 1_000_000)

    def worst_case_input_cost(self, n: int) -> int:
        return -(-(n * self.inp) // 1_000_000)

    def output_cost(self, n: int, input_tokens: int = 0) -> int:
        return -(-(n * self.out) // 1_000_000)

    def output_nanos_per_token_ceil(self, input_tokens: int = 0) -> int:
        return -(-self.out // 1_000_000)


_T = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6), "claude-sonnet-4-0": (3.0, 15.0)}


class Pricing:
    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        unknown_model_price: ModelPrice | None = None,
    ):
        self.o = dict(overrides or {})
        self.u = unknown_model_price

    def resolve(self, provider, model, at=None) -> CompiledPrice:
        p = self.o.get(model)
        if p is None and model in _T:
            p = ModelPrice(*_T[model])
        if p is None:
            p = self.u
        if p is None:
            raise UnknownModelPriceError(model, provider)
        return CompiledPrice(int(p.input_per_mtok * 1e9), int(p.output_per_mtok * 1e9))
