"""The ledger protocol: where spent and reserved amounts live, per budget key.

A reservation asks for a number of *units* (output tokens) between ``min_units`` and
``max_units``; every line's amount is ``fixed + per_unit * units``. The ledger grants the
largest number of units that every line can pay for, atomically across all lines, or
refuses naming the line that could not pay even ``min_units``. Reserve mode asks for
``min_units == max_units``; strict mode lets the ledger size the call to the budget left,
which is what makes strict spend unable to pass a limit across any concurrency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable


class LedgerLine(NamedTuple):
    """One budget a call draws on. Amounts in the budget's unit (nano-dollars for cost)."""

    key: str
    limit: int
    fixed: int
    per_unit: int
    ttl_seconds: int | None = None
    """How long the key must be kept after its last write (its period plus slack)."""


class Hold(NamedTuple):
    """Amounts held against each line's key until the call settles."""

    id: str
    keys: tuple[str, ...]
    amounts: tuple[int, ...]
    units: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The line at ``index`` could not pay ``needed`` (its amount at ``min_units``)."""

    index: int
    spent: int
    reserved: int
    needed: int


@dataclass(frozen=True, slots=True)
class HoldReclaimed:
    """An expired hold a ledger gave back: its process most likely died mid-call.

    Reported to the guard's observers through the optional ``on_reclaim`` hook.
    """

    hold_id: str
    key: str
    """The budget key the amount was held on."""
    amount: int


@dataclass(frozen=True, slots=True)
class Balance:
    spent: int
    reserved: int


def grantable_units(
    lines: Sequence[LedgerLine],
    balances: Sequence[tuple[int, int]],
    min_units: int,
    max_units: int,
) -> int | Refusal:
    """How many units every line can pay for, or the refusal of the first line that cannot.

    Pure: the memory ledger calls it under its lock; the Redis Lua script mirrors it.
    """
    units = max_units
    index = 0
    for line in lines:  # indexed by hand: enumerate(zip(...)) doubles the cost of this loop
        spent, reserved = balances[index]
        free = line.limit - spent - reserved - line.fixed
        per_unit = line.per_unit
        if free < 0:
            fits = -1
        elif per_unit > 0:
            fits = free // per_unit
        else:
            fits = max_units
        if fits < min_units:
            needed = line.fixed + per_unit * min_units
            return Refusal(index=index, spent=spent, reserved=reserved, needed=needed)
        if fits < units:
            units = fits
        index += 1
    return units


@runtime_checkable
class Ledger(Protocol):
    """Sync and async access to the same balances. Each method is atomic across its keys."""

    def reserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal: ...

    def settle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        """Replace the hold with the actual amounts; returns each key's spent after."""
        ...

    def release(self, hold: Hold) -> None: ...

    def read(self, key: str) -> Balance: ...

    def add_spent(self, key: str, amount: int, ttl_seconds: int | None = None) -> int:
        """Add spend recorded elsewhere (seeding after a restart); returns spent after."""
        ...

    async def areserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal: ...

    async def asettle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]: ...

    async def arelease(self, hold: Hold) -> None: ...

    async def aread(self, key: str) -> Balance: ...
