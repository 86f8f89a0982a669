"""The default ledger: in process, one lock, no I/O, no await on the hot path."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

from kavach.ledger.base import Balance, Hold, LedgerLine, Refusal, grantable_units

_PRUNE_EVERY = 4096
_new_tuple = tuple.__new__


class MemoryLedger:
    """Balances in a dict guarded by a ``threading.Lock``: safe across threads and tasks.

    The async methods call the sync ones directly; holding the lock takes microseconds,
    so it never blocks an event loop in a way that matters.
    """

    in_process = True
    """No I/O: async callers may call the sync methods and skip a coroutine per call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spent: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._holds: set[str] = set()
        self._ids = itertools.count(1)
        self._writes = 0

    def reserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal:
        spent, reserved = self._spent, self._reserved
        if len(lines) == 1:  # one budget, as most guards have: no lists, no loops
            key, limit, fixed, per_unit, ttl_seconds = lines[0]
            with self._lock:
                was_spent = spent.get(key, 0)
                was_reserved = reserved.get(key, 0)
                # grantable_units for one line
                free = limit - was_spent - was_reserved - fixed
                fits = -1 if free < 0 else free // per_unit if per_unit > 0 else max_units
                if fits < min_units:
                    needed = fixed + per_unit * min_units
                    return Refusal(0, was_spent, was_reserved, needed)
                units = fits if fits < max_units else max_units
                amount = fixed + per_unit * units
                reserved[key] = was_reserved + amount
                if ttl_seconds is not None:
                    self._expires[key] = time.monotonic() + ttl_seconds
                hold_id = self._new_hold()
            return _new_tuple(Hold, (hold_id, (key,), (amount,), units))
        with self._lock:
            balances = []  # a loop, not a comprehension: one frame less on every call
            for line in lines:
                balances.append((spent.get(line.key, 0), reserved.get(line.key, 0)))
            granted = grantable_units(lines, balances, min_units, max_units)
            if isinstance(granted, Refusal):
                return granted
            keys = []
            amounts = []
            for line in lines:
                key = line.key
                amount = line.fixed + line.per_unit * granted
                reserved[key] = reserved.get(key, 0) + amount
                keys.append(key)
                amounts.append(amount)
            self._touch(lines)
            hold_id = self._new_hold()
        # tuple.__new__ builds the NamedTuple in C; Hold(...) would run Python code per call.
        return _new_tuple(Hold, (hold_id, tuple(keys), tuple(amounts), granted))

    def _new_hold(self) -> str:
        # Called with the lock held.
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            self._prune()
        hold_id = f"m{next(self._ids)}"
        self._holds.add(hold_id)
        return hold_id

    def settle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        spent, reserved = self._spent, self._reserved
        hold_id, keys, held, _units = hold
        with self._lock:
            if hold_id not in self._holds:
                return tuple([spent.get(key, 0) for key in keys])
            self._holds.remove(hold_id)
            if len(keys) == 1:  # one budget: no list, no loop
                key = keys[0]
                reserved[key] = reserved.get(key, 0) - held[0]
                total = spent[key] = spent.get(key, 0) + actual[0]
                return (total,)
            after = []
            i = 0
            for key in keys:
                reserved[key] = reserved.get(key, 0) - held[i]
                total = spent[key] = spent.get(key, 0) + actual[i]
                after.append(total)
                i += 1
        return tuple(after)

    def release(self, hold: Hold) -> None:
        with self._lock:
            if hold.id not in self._holds:
                return
            self._holds.discard(hold.id)
            for key, held in zip(hold.keys, hold.amounts, strict=True):
                self._reserved[key] = self._reserved.get(key, 0) - held

    def read(self, key: str) -> Balance:
        with self._lock:
            return Balance(self._spent.get(key, 0), self._reserved.get(key, 0))

    def add_spent(self, key: str, amount: int, ttl_seconds: int | None = None) -> int:
        with self._lock:
            self._spent[key] = self._spent.get(key, 0) + amount
            if ttl_seconds is not None:
                self._touch((LedgerLine(key, 0, 0, 0, ttl_seconds),))
            return self._spent[key]

    async def areserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal:
        return self.reserve(lines, min_units, max_units)

    async def asettle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        return self.settle(hold, actual)

    async def arelease(self, hold: Hold) -> None:
        self.release(hold)

    async def aread(self, key: str) -> Balance:
        return self.read(key)

    @property
    def open_holds(self) -> int:
        """Holds not yet settled or released (for tests and diagnostics)."""
        return len(self._holds)

    def _touch(self, lines: Sequence[LedgerLine]) -> None:
        # Called with the lock held: each key must be kept its line's ttl from now.
        now = time.monotonic()
        expires = self._expires
        for line in lines:
            if line.ttl_seconds is not None:
                expires[line.key] = now + line.ttl_seconds

    def _prune(self) -> None:
        # Called with the lock held. Keys of past periods are dropped now and then so a
        # long-lived process does not grow without bound.
        now = time.monotonic()
        for old in [k for k, t in self._expires.items() if t < now]:
            if self._reserved.get(old, 0) == 0:
                self._spent.pop(old, None)
                self._reserved.pop(old, None)
                del self._expires[old]
