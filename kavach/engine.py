"""Sans-I/O decisions: plan a call's reservation and turn ledger answers into errors.

Everything here is a function of values; the guard wraps it with ledger calls (sync or
async), so both paths share one decision logic.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, NamedTuple

from kavach._money import fmt_usd
from kavach.budget import Budget, Period, Unit
from kavach.errors import (
    BudgetExceededError,
    CallLimitError,
    CostPerCallError,
    KavachError,
    TokenLimitError,
)
from kavach.guardrails import GuardrailConfig
from kavach.ledger.base import LedgerLine, Refusal
from kavach.pricing import CompiledPrice
from kavach.usage import Usage

Mode = Literal["reserve", "strict"]
LineKind = Literal["budget", "run_tokens", "run_calls"]

_KEY_SLACK_SECONDS = 86_400
_new_tuple = tuple.__new__
_RUN_KEY_TTL_SECONDS = 7 * 86_400


@dataclass(frozen=True, slots=True)
class LineInfo:
    """What a ledger line stands for, to word errors and threshold events."""

    label: str
    unit: Unit
    kind: LineKind
    period: str
    period_id: str
    resets_at: datetime | None
    thresholds: tuple[float, ...]


class Plan(NamedTuple):
    """A call's reservation request: the ledger lines and the output-token range."""

    lines: tuple[LedgerLine, ...]
    slots: tuple[Slot, ...]
    """What each line stands for, in the same order."""
    min_units: int
    max_units: int
    input_tokens: int
    input_cost: int
    output_per_token: int

    def worst_case(self, units: int) -> int:
        return self.input_cost + self.output_per_token * units


def _ttl(now: datetime, resets_at: datetime | None, period: Period) -> int | None:
    if period is Period.PER_RUN:
        return _RUN_KEY_TTL_SECONDS
    if resets_at is None:
        return None
    return int((resets_at - now).total_seconds()) + _KEY_SLACK_SECONDS


@dataclass(frozen=True, slots=True)
class Slot:
    """A budget resolved to its ledger key for the current period (or run)."""

    key: str
    limit: int
    ttl_seconds: int | None
    info: LineInfo
    marks: tuple[float, ...] = ()
    """The spend at which each of ``info.thresholds`` is crossed, in the same order."""

    @classmethod
    def of(cls, key: str, limit: int, ttl_seconds: int | None, info: LineInfo) -> Slot:
        if list(info.thresholds) != sorted(info.thresholds):
            info = replace(info, thresholds=tuple(sorted(info.thresholds)))
        return cls(key, limit, ttl_seconds, info, tuple(t * limit for t in info.thresholds))


def period_slots(
    agent: str, budgets: Sequence[Budget], now: datetime
) -> tuple[tuple[Slot, ...], datetime | None]:
    """Slots of the budgets that are not per run, and when the earliest of them resets.

    The guard caches these until that moment, so the hot path does no date arithmetic.
    Budgets that resolve to the same ledger key share one slot (see ``one_slot_per_key``).
    """
    slots = []
    earliest: datetime | None = None
    for budget in budgets:
        if budget.period is Period.PER_RUN:
            continue
        key, resets_at = budget.key(agent, now)
        if resets_at is not None and (earliest is None or resets_at < earliest):
            earliest = resets_at
        info = LineInfo(
            budget.label,
            budget.unit,
            "budget",
            budget.period.value,
            key.rsplit(":", 1)[1],
            resets_at,
            budget.thresholds,
        )
        slots.append(Slot.of(key, budget.limit, _ttl(now, resets_at, budget.period), info))
    return one_slot_per_key(slots), earliest


def run_slots(
    agent: str, run_id: str, budgets: Sequence[Budget], guardrails: GuardrailConfig
) -> tuple[Slot, ...]:
    """Slots of per-run budgets and the per-run token and call guardrails."""
    slots = []
    for budget in budgets:
        if budget.period is not Period.PER_RUN:
            continue
        unit = "" if budget.unit == "usd" else f"{budget.unit}:"
        key = f"agent:{agent}:{unit}per_run:run:{run_id}"
        info = LineInfo(
            budget.label, budget.unit, "budget", "per_run", run_id, None, budget.thresholds
        )
        slots.append(Slot.of(key, budget.limit, _RUN_KEY_TTL_SECONDS, info))
    run_limits: tuple[tuple[LineKind, Unit, int | None], ...] = (
        ("run_tokens", "tokens", guardrails.max_tokens_per_run),
        ("run_calls", "calls", guardrails.max_calls_per_run),
    )
    for kind, unit, limit in run_limits:
        if limit is not None:
            info = LineInfo(f"per-run {unit}", unit, kind, "per_run", run_id, None, ())
            slots.append(
                Slot.of(
                    f"agent:{agent}:guard:{unit}:run:{run_id}", limit, _RUN_KEY_TTL_SECONDS, info
                )
            )
    return one_slot_per_key(slots)


def one_slot_per_key(slots: Sequence[Slot]) -> tuple[Slot, ...]:
    """The slots with those on one ledger key merged, in the order each key first appears.

    Two budgets on one key (``Budget.daily(10)`` in code and a $20 daily budget set in the
    dashboard, or two daily budgets given in code) are one ledger line: held and settled
    once, so spend counts once. Both limits must hold, so the smaller one does; each
    budget's thresholds still alert, once. The key carries scope, unit and period, so the
    merged budgets share a label.
    """
    if len(slots) < 2:
        return tuple(slots)
    by_key: dict[str, Slot] = {}
    for slot in slots:
        seen = by_key.get(slot.key)
        by_key[slot.key] = slot if seen is None else _merge(seen, slot)
    return tuple(by_key.values())


def _merge(a: Slot, b: Slot) -> Slot:
    # Budgets of one period in different time zones can share a key for part of the day:
    # the line resets with the earlier of them and its key lives as long as the later needs.
    resets = [t for t in (a.info.resets_at, b.info.resets_at) if t is not None]
    info = replace(
        a.info,
        resets_at=min(resets) if resets else None,
        thresholds=tuple(sorted(set(a.info.thresholds) | set(b.info.thresholds))),
    )
    ttl = (
        None
        if a.ttl_seconds is None or b.ttl_seconds is None
        else max(a.ttl_seconds, b.ttl_seconds)
    )
    return Slot.of(a.key, min(a.limit, b.limit), ttl, info)


def plan_call(
    *,
    slots: Sequence[Slot],
    guardrails: GuardrailConfig,
    price: CompiledPrice,
    input_tokens: int,
    requested_max_output: int | None,
    mode: Mode,
    default_max_output: int,
    min_output: int,
    cache_writes: bool = False,
    media_tokens: int = 0,
    text_output: bool = False,
    choices: int = 1,
    fixed_output: bool = False,
    searches: int = 0,
    characters: int = 0,
    audio_seconds: int = 0,
) -> Plan:
    """Plan the ledger lines for one call; raises CostPerCallError before touching a ledger.

    ``media_tokens`` of the input and, unless ``text_output``, the output are held at the
    dearest rate the model bills them at (see ``CompiledPrice.reservation_rates``).

    A request for several ``choices`` may produce the output limit once per choice. Units
    then count the output of all choices together, as the provider bills it and a stream
    meters it (interleaved choices); every choice gets at least ``min_output`` tokens in
    strict mode, which sends ``units // choices`` as the per-choice limit. A ``fixed_output``
    call has no limit to send, so it is held for all of its output in strict mode too.
    ``searches`` a server-side search tool may make are held at the dearest search price,
    with the input (they are billed whatever the output). Input billed by the
    ``characters`` and ``audio_seconds`` (speech, whisper-1) is held at its unit prices."""
    input_cost, per_token = price.reservation_rates(
        input_tokens, cache_writes, media_tokens, text_output
    )
    if searches:
        input_cost += searches * max(price.web_search, price.file_search)
    if characters or audio_seconds:
        input_cost += price.unit_cost(characters, audio_seconds)
    max_units = requested_max_output if requested_max_output is not None else default_max_output
    min_units = max_units if mode == "reserve" or fixed_output else min(min_output, max_units)
    if choices != 1:
        max_units *= choices
        min_units *= choices

    cap = guardrails.max_cost_per_call
    if cap is not None:
        fits = (cap - input_cost) // per_token if per_token else max_units
        worst = input_cost + per_token * min_units
        if cap < input_cost or fits < min_units:
            raise CostPerCallError(
                f"this call could cost up to {fmt_usd(worst)} ({input_tokens:,} input tokens, "
                f"{min_units:,} output tokens), over max_cost_per_call={fmt_usd(cap)}; "
                "shorten the input, lower max output tokens, or raise the limit",
                limit=cap,
                observed=worst,
            )
        max_units = min(max_units, fits)
        if choices != 1:  # whole tokens per choice; min_units is a multiple too, so >= it
            max_units -= max_units % choices

    # tuple.__new__ builds the NamedTuples in C: this runs on every call.
    lines = []
    for slot in slots:
        unit = slot.info.unit
        if unit == "usd":
            fixed, per_unit = input_cost, per_token
        elif unit == "tokens":
            fixed, per_unit = input_tokens, 1
        else:
            fixed, per_unit = 1, 0
        lines.append(
            _new_tuple(LedgerLine, (slot.key, slot.limit, fixed, per_unit, slot.ttl_seconds))
        )
    return _new_tuple(
        Plan,
        (tuple(lines), tuple(slots), min_units, max_units, input_tokens, input_cost, per_token),
    )


def refusal_error(plan: Plan, refusal: Refusal, run_id: str, mode: Mode) -> KavachError:
    """The error a ledger refusal means for the caller."""
    line = plan.lines[refusal.index]
    info = plan.slots[refusal.index].info
    if info.kind == "run_tokens":
        used = refusal.spent + refusal.reserved
        return TokenLimitError(
            f"run {run_id!r} has used {used:,} tokens (with calls in flight); this call needs up "
            f"to {refusal.needed:,} more, over max_tokens_per_run={line.limit:,}. Start a new "
            "run or raise the limit",
            limit=line.limit,
            observed=used + refusal.needed,
        )
    if info.kind == "run_calls":
        return CallLimitError(
            f"run {run_id!r} has made {refusal.spent + refusal.reserved:,} calls, "
            f"max_calls_per_run={line.limit:,}. Start a new run or raise the limit",
            limit=line.limit,
            observed=refusal.spent + refusal.reserved + 1,
        )
    detail = ""
    if mode == "strict" and info.unit == "usd":
        detail = f"Strict mode needs room for at least {plan.min_units:,} output tokens."
    return BudgetExceededError(
        budget=info.label,
        unit=info.unit,
        spent=refusal.spent,
        reserved=refusal.reserved,
        limit=line.limit,
        requested=refusal.needed,
        period=info.period if info.period != "per_run" else f"run {info.period_id}",
        resets_at=info.resets_at,
        detail=detail,
    )


def actual_amounts(plan: Plan, usage: Usage, cost: int) -> tuple[int, ...]:
    """What a settled call adds to each line, in the line's unit."""
    out = []
    for slot in plan.slots:
        unit = slot.info.unit
        if unit == "usd":
            out.append(cost)
        elif unit == "tokens":
            out.append(usage.input_tokens + usage.output_tokens)
        else:
            out.append(1)
    return tuple(out)


def crossed_thresholds(slot: Slot, before: int, after: int) -> list[float]:
    """Thresholds passed going from ``before`` to ``after`` spent (both inclusive of this call).

    Thresholds are sorted, so most calls are answered by one bisection: none crossed.
    """
    thresholds = slot.info.thresholds
    if slot.limit <= 0:
        return list(thresholds) if after > before else []
    marks = slot.marks
    first = bisect_right(marks, before)
    if first == len(marks) or marks[first] > after:
        return []
    return [t for t, mark in zip(thresholds[first:], marks[first:], strict=True) if mark <= after]
