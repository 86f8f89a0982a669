"""Restart-safe spend for the in-process ledger: spent per key kept in a local file.

>>> guard = AgentKavach("bot", Budget.daily(5), state_file="~/.kavach/bot.json")  # doctest: +SKIP

A guard restarted mid-day loads the file and keeps the day's spend, so a restart does not
hand out a fresh daily budget. Writes are off the call path: a settle only sets a flag;
a background thread writes at most once per ``debounce_seconds`` (temp file, fsync,
rename, so a crash never leaves a torn file) and once more at interpreter exit. A crash
loses at most the last ``debounce_seconds`` of spend. Holds are not saved: a call in
flight when the process died never settled.

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
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.error(
                "kavach: state file %s is unreadable (%s); starting from zero spend",
                self.path,
                exc,
            )
            return
        now = time.time()
        for key, entry in dict(raw.get("keys", {})).items():
            expires_at = entry.get("expires_at")
            if expires_at is not None and expires_at <= now:
                continue
            ttl = None if expires_at is None else max(1, int(expires_at - now))
            MemoryLedger.add_spent(self, key, int(entry["spent"]), ttl)
