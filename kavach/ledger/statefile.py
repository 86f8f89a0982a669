"""Restart-safe spend for the in-process ledger: spent per key kept in a local file.

>>> guard = AgentKavach("bot", Budget.daily(5), state_file="~/.kavach/bot.json")  # doctest: +SKIP

A guard restarted mid-day loads the file and keeps the day's spend, so a restart does not
hand out a fresh daily budget. Writes are off the call path: a settle only sets a flag;
a background thread writes at most once per ``debounce_seconds`` (temp file, fsync,
rename, so a crash never leaves a torn file) and once more at interpreter exit. A crash
loses at most the last ``debounce_seconds`` of spend. Holds are not saved: a call in
flight when the process died never settled.

A missing file is a fresh start. A file that cannot be read or is not a state file (torn by
a tool, truncated by a full disk, edited by hand) raises ``KavachConfigError`` and is left
as it is: starting from zero would give the period's budget out a second time.

The file belongs to one process; processes that share a budget need the Redis ledger.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from kavach.errors import KavachConfigError
from kavach.ledger.base import Hold, LedgerLine
from kavach.ledger.memory import MemoryLedger

__all__ = ["PersistentMemoryLedger"]

logger = logging.getLogger("kavach")
_VERSION = 1


class PersistentMemoryLedger(MemoryLedger):
    """A ``MemoryLedger`` whose spent amounts survive a restart through ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, debounce_seconds: float = 1.0) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        self.debounce_seconds = debounce_seconds
        self._wall_expires: dict[str, float] = {}
        self._dirty = threading.Event()
        self._closed = False
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._load()
        # A weak reference, so registering at exit does not keep the ledger alive.
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            ledger = ref()
            if ledger is not None:
                ledger.close()

        atexit.register(close_at_exit)

    # -- the hot path only flags the change -----------------------------------------------

    def settle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        after = super().settle(hold, actual)
        self._changed()
        return after

    def add_spent(self, key: str, amount: int, ttl_seconds: int | None = None) -> int:
        after = super().add_spent(key, amount, ttl_seconds)
        self._changed()
        return after

    def _touch(self, lines: Sequence[LedgerLine]) -> None:
        now = time.time()
        for line in lines:
            if line.ttl_seconds is not None:
                self._wall_expires[line.key] = now + line.ttl_seconds
        super()._touch(lines)

    def _changed(self) -> None:
        if not self._dirty.is_set():
            self._dirty.set()
        if self._thread is None:
            with self._write_lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(
                        target=self._writer, name="kavach-state-file", daemon=True
                    )
                    self._thread.start()

    # -- background writer ----------------------------------------------------------------

    def _writer(self) -> None:
        while not self._closed:
            self._dirty.wait()
            if self._closed:
                return
            time.sleep(self.debounce_seconds)
            if self._dirty.is_set():
                self.flush()

    def flush(self) -> None:
        """Write the spent amounts now (the background writer calls this)."""
        with self._write_lock:
            self._dirty.clear()
            with self._lock:
                now = time.time()
                keys = {
                    key: {"spent": spent, "expires_at": self._wall_expires.get(key)}
                    for key, spent in self._spent.items()
                    if self._wall_expires.get(key, now + 1) > now
                }
            data = json.dumps({"version": _VERSION, "saved_at": now, "keys": keys})
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except OSError:
                # Enforcement goes on in memory; only restart safety is at risk.
                logger.exception("kavach: could not write the state file %s", self.path)

    def close(self) -> None:
        """Write pending changes and stop the writer."""
        if self._closed:
            return
        pending = self._dirty.is_set()
        self._closed = True
        self._dirty.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.debounce_seconds + 5)
        if pending:
            self.flush()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return  # a fresh start: nothing spent yet
        except OSError as exc:
            raise _unusable(self.path, f"cannot be read ({exc})") from exc
        try:
            entries = _parse(json.loads(data.decode()))
        except ValueError as exc:  # bad JSON, bad UTF-8, or not the shape written here
            raise _unusable(self.path, f"is not a valid state file ({exc})") from exc
        now = time.time()
        for key, spent, expires_at in entries:
            if expires_at is not None and expires_at <= now:
                continue
            ttl = None if expires_at is None else max(1, int(expires_at - now))
            MemoryLedger.add_spent(self, key, spent, ttl)


def _parse(raw: object) -> list[tuple[str, int, float | None]]:
    """The (key, spent, expires_at) entries of a state file, or ``ValueError`` saying why not."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    if raw.get("version") != _VERSION:
        raise ValueError(f"unknown version {raw.get('version')!r}, expected {_VERSION}")
    keys = raw.get("keys")
    if not isinstance(keys, dict):
        raise ValueError('"keys" is not an object')
    entries = []
    for key, entry in keys.items():
        spent = entry.get("spent") if isinstance(entry, dict) else None
        if type(spent) is not int or spent < 0:
            raise ValueError(f"key {key!r}: spent must be an integer >= 0, got {spent!r}")
        expires_at = entry.get("expires_at")
        if expires_at is not None and type(expires_at) not in (int, float):
            raise ValueError(f"key {key!r}: expires_at must be a number or null")
        entries.append((key, spent, None if expires_at is None else float(expires_at)))
    return entries


def _unusable(path: Path, what: str) -> KavachConfigError:
    # Starting from zero would hand out the period's budget again, so refuse instead.
    return KavachConfigError(
        f"state file {path} {what}. It holds the spend this guard must not forget, so "
        "AgentKavach will not start from zero on its own and has not touched it: restore "
        "it, or move it aside (or delete it) to start from zero spend on purpose"
    )
