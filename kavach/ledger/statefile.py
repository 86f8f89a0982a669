"""Restart-safe spend for the in-process ledger: spent per key kept in a local file.

>>> guard = AgentKavach("bot", Budget.daily(5), state_file="~/.kavach/bot.json")  # doctest: +SKIP

A guard restarted mid-day loads the file and keeps the day's spend, so a restart does not
hand out a fresh daily budget. Every write is a temp file, fsync and rename, so a crash
never leaves a torn file.

What a crash (kill -9, the OOM killer) can lose, and why a limit still holds: for each key
the file records a *claim*, an amount at least the key's spent plus everything held for
calls in flight, and a restart counts the claim as spent. A reserve whose hold would take
spent + held past the claim on disk writes a new claim before it returns, so before the
call can go out: spent + held + a tenth of what the limit has left. (A settle above its
hold, possible in reserve mode, writes the same way, after the fact.) Other writes are
off the call path: a settle only sets a flag, and a background thread writes the spent
amounts at most once per ``debounce_seconds``, moving the claims ahead as it goes; a clean
exit writes exact figures, no claim above spent + held.

So a crash never lets spend past a limit across restarts, and a crash loop cannot either.
What a crash costs is budget left unused: after a restart, spent shows the claim, which
is above the true spend by at most the holds in flight plus a tenth of what was left when
the claim was written. Far from a limit the claims run ahead and calls write nothing; near
it the tenth shrinks, so the last calls before a limit each wait for one write (the
figures are in the commit that added this); an async call awaits it in a worker thread,
so the event loop goes on meanwhile. If a write fails (disk full), the error is
logged, enforcement goes on in memory and each reserve past the claim tries again; only
crash safety is lost meanwhile. The rename is not followed by a directory fsync, so after
a power loss (not a process crash) some file systems may come back with the previous file.

A missing file is a fresh start. A file that cannot be read or is not a state file (torn by
a tool, truncated by a full disk, edited by hand) raises ``KavachConfigError`` and is left
as it is: starting from zero would give the period's budget out a second time.

The file belongs to one process. Guards in one process given the same file share one set
of balances (each guard's ledger is a handle on it; the last one closed lets the file go).
A second process opening the file raises ``KavachConfigError``: the first holds an
exclusive lock on ``<file>.lock`` (with its pid in it) for as long as it has the file open,
and the system drops the lock when that process exits, however it dies. Processes that
share a budget need the Redis ledger.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from kavach.errors import KavachConfigError
from kavach.ledger.base import Hold, LedgerLine, Refusal
from kavach.ledger.memory import MemoryLedger

__all__ = ["PersistentMemoryLedger"]

logger = logging.getLogger("kavach")
_VERSION = 2
_READS = (1, 2)  # version 1 had no claims: its claim is its spent
_HEADROOM = 0.1
"""Share of what a limit has left that a claim runs ahead of spent + held."""


class PersistentMemoryLedger(MemoryLedger):
    """A ``MemoryLedger`` whose spent amounts survive a restart through ``path``.

    Opening a path this process already has open returns a handle on the same balances.
    """

    def __init__(self, path: str | os.PathLike[str], *, debounce_seconds: float = 1.0) -> None:
        # No MemoryLedger.__init__: the balances are the open file's, shared by its handles.
        file = _open_file(Path(path).expanduser().resolve(), debounce_seconds)
        shared = file.memory
        self._lock = shared._lock
        self._spent = shared._spent
        self._reserved = shared._reserved
        self._expires = shared._expires
        self._holds = shared._holds
        self._ids = shared._ids
        self._writes = 0
        self._claimed = file.claimed
        self._file = file
        self.path = file.path
        self.debounce_seconds = file.debounce_seconds
        # Runs once: at close(), when the handle is collected, or at interpreter exit.
        self._release = weakref.finalize(self, file.release)

    def reserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal:
        got = super().reserve(lines, min_units, max_units)
        if type(got) is Hold and self._past_claim(got.keys):
            self._file.claim(lines)  # before the call can go out
        return got

    def settle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        after = super().settle(hold, actual)
        if self._past_claim(hold.keys):  # settled above the hold
            self._file.claim(())
        else:
            self._file.changed()
        return after

    # Async callers await a claim's write in a worker thread: the file write (an fsync,
    # a few hundred microseconds, far longer on a slow disk) never blocks the event loop.
    # So this ledger is not ``in_process``: async adapters call these, not the sync twins.
    in_process = False

    async def areserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal:
        got = MemoryLedger.reserve(self, lines, min_units, max_units)
        if type(got) is Hold and self._past_claim(got.keys):
            # Not abandoned on cancellation: the caller gets its hold (and gives it back),
            # and the claim is on disk before the call can go out.
            await _in_thread(self._file.claim, lines)
        return got

    async def asettle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        after = MemoryLedger.settle(self, hold, actual)
        if self._past_claim(hold.keys):
            await _in_thread(self._file.claim, ())
        else:
            self._file.changed()
        return after

    def add_spent(self, key: str, amount: int, ttl_seconds: int | None = None) -> int:
        after = super().add_spent(key, amount, ttl_seconds)
        if self._past_claim((key,)):
            self._file.claim(())
        else:
            self._file.changed()
        return after

    def _past_claim(self, keys: Sequence[str]) -> bool:
        # Without the lock: a stale read only errs towards a write, and a concurrent
        # reserve that raised a key checks it itself after its own update.
        spent, reserved, claimed = self._spent, self._reserved, self._claimed
        for key in keys:
            if spent.get(key, 0) + reserved.get(key, 0) > claimed.get(key, 0):
                return True
        return False

    def flush(self) -> None:
        """Write the spent amounts now (the background writer calls this)."""
        self._file.flush()

    def close(self) -> None:
        """Write pending changes; the last handle on the file also stops the writer and
        unlocks the file for another process."""
        if self._release.alive:
            self._release()
        else:
            self._file.flush_pending()


async def _in_thread(
    claim: Callable[[Sequence[LedgerLine]], None], lines: Sequence[LedgerLine]
) -> None:
    import anyio.to_thread  # imported on first use: async code has anyio loaded already

    await anyio.to_thread.run_sync(claim, lines)


_open_files: dict[Path, _StateFile] = {}
_open_files_lock = threading.Lock()


def _open_file(path: Path, debounce_seconds: float) -> _StateFile:
    with _open_files_lock:
        file = _open_files.get(path)
        if file is None:
            file = _open_files[path] = _StateFile(path, debounce_seconds)
        file.users += 1
        return file


if hasattr(os, "register_at_fork"):
    # A forked child inherits the parent's open files but not its lock: opening the path
    # again there must try the lock (and fail) instead of joining the parent's copy.
    os.register_at_fork(after_in_child=_open_files.clear)


class _StateFile:
    """One state file open in this process: its balances, its lock and its writer."""

    def __init__(self, path: Path, debounce_seconds: float) -> None:
        self.path = path
        self.debounce_seconds = debounce_seconds
        self.memory = MemoryLedger()
        self.claimed: dict[str, int] = {}
        """Per key, what the file on disk covers; only ever raised while the file is open."""
        self._limits: dict[str, int] = {}
        self.users = 0
        self._dirty = threading.Event()
        self._closed = False
        self._stop = threading.Event()  # wakes the writer from its debounce on close
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock_fd = _lock(path)
        try:
            self._load()
        except BaseException:
            _unlock(self._lock_fd)
            raise

    def changed(self) -> None:
        if not self._dirty.is_set():
            self._dirty.set()
        if self._thread is None:
            with self._write_lock:
                if self._thread is None and not self._closed:
                    self._thread = threading.Thread(
                        target=self._writer, name="kavach-state-file", daemon=True
                    )
                    self._thread.start()

    def _writer(self) -> None:
        while not self._closed:
            self._dirty.wait()
            if self._closed:
                return
            if self._stop.wait(self.debounce_seconds):
                return  # closing: release() writes the last figures
            if self._dirty.is_set():
                self.flush()

    def flush_pending(self) -> None:
        if self._dirty.is_set():
            self.flush()

    def claim(self, lines: Sequence[LedgerLine]) -> None:
        """Write now: some key's spent + held is past what the file covers."""
        for line in lines:
            self._limits[line.key] = line.limit
        self.flush()

    def flush(self, exact: bool = False) -> None:
        """Write spent and claims; ``exact`` claims spent + held only (a clean close)."""
        while self._write(exact) and not exact:
            pass

    def _write(self, exact: bool) -> bool:
        # True when a key went past its new claim while this was written: write again.
        with self._write_lock:
            if self._lock_fd is None or os.getpid() != self._pid:
                # Closed, or a forked child: the file is no longer (or never was) ours.
                return False
            self._dirty.clear()
            memory, limits, claimed = self.memory, self._limits, self.claimed
            with memory._lock:
                now = time.time()
                # The ledger keeps monotonic expiries; the file needs wall-clock ones.
                to_wall = now - time.monotonic()
                keys = {}
                claims = {}
                for key in memory._spent.keys() | memory._reserved.keys():
                    spent = memory._spent.get(key, 0)
                    used = spent + memory._reserved.get(key, 0)
                    expires = memory._expires.get(key)
                    expires_at = None if expires is None else expires + to_wall
                    if expires_at is not None and expires_at <= now:
                        continue
                    if exact:
                        claim = used
                    else:
                        ahead = int(_HEADROOM * max(0, limits.get(key, used) - used))
                        claim = max(claimed.get(key, 0), used + ahead)
                    claims[key] = claim
                    keys[key] = {"spent": spent, "claimed": claim, "expires_at": expires_at}
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
                return False
            for key in [k for k in claimed if k not in claims]:
                del claimed[key]  # past periods
            claimed.update(claims)
            with memory._lock:
                for key in claims:
                    if memory._spent.get(key, 0) + memory._reserved.get(key, 0) > claimed[key]:
                        return True
            return False

    def release(self) -> None:
        """One handle fewer; the last one writes what is pending and lets the file go."""
        with _open_files_lock:
            self.users -= 1
            last = self.users == 0
            if last and _open_files.get(self.path) is self:
                del _open_files[self.path]
        if not last:
            self.flush_pending()
            return
        pending = self._dirty.is_set()
        self._closed = True
        self._stop.set()
        self._dirty.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.debounce_seconds + 5)
        if pending or self.claimed:
            self.flush(exact=True)
        with self._write_lock:
            fd, self._lock_fd = self._lock_fd, None
        _unlock(fd)

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
        for key, claimed, expires_at in entries:
            if expires_at is not None and expires_at <= now:
                continue
            ttl = None if expires_at is None else max(1, int(expires_at - now))
            # After a crash the claim is all that is known: count it all as spent.
            self.memory.add_spent(key, claimed, ttl)
            self.claimed[key] = claimed


if sys.platform == "win32":
    # No fcntl on Windows: a second process on the same file is not detected there; the
    # one-process rule is the user's to keep (the in-process sharing above still holds).
    def _lock(path: Path) -> int | None:
        return None

    def _unlock(fd: int | None) -> None:
        return None

else:
    import fcntl

    def _lock(path: Path) -> int | None:
        lock_path = path.with_name(path.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise KavachConfigError(f"state file {path}: cannot open {lock_path} ({exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise KavachConfigError(
                f"state file {path} belongs to another process (pid {holder}, which holds "
                f"{lock_path}); a state file keeps one process's spend. Processes that "
                "share a budget need the Redis ledger: ledger='redis://...' or "
                "AGENTKAVACH_REDIS_URL"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    def _unlock(fd: int | None) -> None:
        # Closing the descriptor drops the lock; the lock file stays, so that a process
        # waiting on it never locks a file that a new one is about to replace.
        if fd is not None:
            os.close(fd)


def _parse(raw: object) -> list[tuple[str, int, float | None]]:
    """The (key, claimed, expires_at) entries of a state file, or ``ValueError`` saying why
    not."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    if raw.get("version") not in _READS:
        raise ValueError(f"unknown version {raw.get('version')!r}, expected {_VERSION}")
    keys = raw.get("keys")
    if not isinstance(keys, dict):
        raise ValueError('"keys" is not an object')
    entries = []
    for key, entry in keys.items():
        spent = entry.get("spent") if isinstance(entry, dict) else None
        if type(spent) is not int or spent < 0:
            raise ValueError(f"key {key!r}: spent must be an integer >= 0, got {spent!r}")
        claimed = entry.get("claimed", spent)
        if type(claimed) is not int or claimed < 0:
            raise ValueError(f"key {key!r}: claimed must be an integer >= 0, got {claimed!r}")
        expires_at = entry.get("expires_at")
        if expires_at is not None and type(expires_at) not in (int, float):
            raise ValueError(f"key {key!r}: expires_at must be a number or null")
        at = None if expires_at is None else float(expires_at)
        entries.append((key, max(spent, claimed), at))
    return entries


def _unusable(path: Path, what: str) -> KavachConfigError:
    # Starting from zero would hand out the period's budget again, so refuse instead.
    return KavachConfigError(
        f"state file {path} {what}. It holds the spend this guard must not forget, so "
        "AgentKavach will not start from zero on its own and has not touched it: restore "
        "it, or move it aside (or delete it) to start from zero spend on purpose"
    )
