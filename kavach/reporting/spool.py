"""A disk spool for events the backend could not take yet: append-only segments, in order.

Each process writes to its own directory, locked with ``flock`` while it lives. Segments
are JSON-lines files of events, replayed in the order of their sequence number; the open
one is fsynced when it rotates, and a segment is deleted only after every event in it was
accepted. A write the disk refuses (full, over quota) is taken back, so a segment only ever
holds whole events. A spool left behind by a process that died is adopted by the next
process that starts with the same spool root, so nothing is lost across crashes; the
backend de-duplicates by event id, so a replay never counts twice. Events the backend
rejected are kept in the process's ``rejected.jsonl``; adoption moves them to
``rejected.jsonl`` at the spool root.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("kavach.reporting")

_SEGMENT_BYTES = 1 << 20
_REJECTED = "rejected.jsonl"


def default_spool_root() -> Path:
    base = os.environ.get("AGENTKAVACH_SPOOL_DIR") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    if not os.environ.get("AGENTKAVACH_SPOOL_DIR"):
        root = root / "agentkavach" / "spool"
    return root


class DiskSpool:
    """Ordered, crash-safe storage of events while the backend is unreachable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.dir / "lock", "w")  # noqa: SIM115 - held for our lifetime
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._mutex = threading.Lock()
        self._seq = 0
        self._open: io.FileIO | None = None  # unbuffered: a refused write can be taken back
        self._open_seq = 0
        self._count = 0
        self._torn: set[Path] = set()
        self._adopt_orphans()

    @property
    def pending(self) -> int:
        """Events on disk not yet accepted by the backend."""
        return self._count

    def reserve(self) -> int:
        """A place in the order for events that may be appended later with ``append(at=)``.

        Events appended without ``at`` after this call go after it.
        """
        with self._mutex:
            self._seq += 1
            return self._seq

    def append(self, events: list[dict[str, Any]], at: int | None = None) -> None:
        """Store events after those stored so far, or at a place taken with ``reserve()``.

        Raises ``OSError`` when the disk refuses them; nothing of them is stored then.
        """
        if not events:
            return
        data = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in events)
        with self._mutex:
            if at is not None:
                path = self._segment_path(at)
                try:
                    with open(path, "ab", buffering=0) as handle:
                        self._write(handle, data.encode())
                        os.fsync(handle.fileno())
                except OSError:
                    with contextlib.suppress(OSError):
                        if path.stat().st_size == 0:
                            path.unlink()
                    raise
                return
            if self._open is not None and self._open_seq != self._seq:
                self._rotate()  # a place was reserved since this segment was opened
            if self._open is None:
                self._seq += 1
                self._open_seq = self._seq
                self._open = open(self._segment_path(self._seq), "ab", buffering=0)  # noqa: SIM115
            self._write(self._open, data.encode())
            if self._open.tell() >= _SEGMENT_BYTES:
                self._rotate()

    def segments(self) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
        """Closed segments, oldest first, with their events (the open one is closed first)."""
        with self._mutex:
            self._rotate()
            paths = sorted(self.dir.glob("seg-*.jsonl"))
        for path in paths:
            yield path, self._read(path)

    def done(self, path: Path, count: int) -> None:
        """A segment's events were all accepted."""
        with self._mutex:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._torn.discard(path)
            self._count = max(0, self._count - count)

    def close(self) -> None:
        with self._mutex:
            self._rotate()
        empty = not any(self.dir.glob("seg-*.jsonl"))
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        if empty:
            with contextlib.suppress(OSError):
                (self.dir / "lock").unlink()
                self.dir.rmdir()

    def _segment_path(self, seq: int) -> Path:
        return self.dir / f"seg-{seq:012d}.jsonl"

    def _write(self, handle: io.FileIO, data: bytes) -> None:
        """Write whole events or none (callers hold ``_mutex``)."""
        start = handle.seek(0, os.SEEK_END)  # after a truncate, tell() is past the end
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += handle.write(view[written:])
        except OSError:
            try:
                handle.truncate(start)
            except OSError:
                # The events that did land whole are on disk and will be replayed (a torn
                # last one is skipped); the caller keeps all of them, and the backend
                # de-duplicates the copies.
                self._count += data[:written].count(b"\n")
                if handle is self._open:
                    self._rotate()
            raise
        self._count += data.count(b"\n")

    def _read(self, path: Path) -> list[dict[str, Any]]:
        """A segment's events; counted this way both on adoption and on replay."""
        events = []
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    events.append(json.loads(line))
                except ValueError:
                    # A torn last line from a crash mid-write: the rest is still good.
                    if path not in self._torn:
                        self._torn.add(path)
                        logger.warning("kavach: skipping a torn line in spool %s", path)
        return events

    def _rotate(self) -> None:
        if self._open is not None:
            handle, self._open = self._open, None
            try:
                os.fsync(handle.fileno())
            finally:
                handle.close()

    def _adopt_orphans(self) -> None:
        for other in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.dir):
            lock_path = other / "lock"
            try:
                handle = open(lock_path, "a")  # noqa: SIM115
            except OSError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue  # its process is alive
            try:
                self._adopt(other)
            except OSError:
                logger.exception("kavach: could not adopt spool %s", other)
            finally:
                handle.close()

    def _adopt(self, other: Path) -> None:
        segments = sorted(other.glob("seg-*.jsonl"))
        for segment in segments:
            self._seq += 1
            target = self._segment_path(self._seq)
            segment.rename(target)
            self._count += len(self._read(target))
        rejected = other / _REJECTED
        if rejected.exists():
            # Kept in one place across processes, so a directory holding nothing else is
            # not left behind (and found again) on every start.
            with open(rejected, "rb") as src, open(self.root / _REJECTED, "ab") as dst:
                shutil.copyfileobj(src, dst)
            rejected.unlink()
            logger.info("kavach: events the backend rejected are kept in %s", self.root / _REJECTED)
        (other / "lock").unlink(missing_ok=True)
        if segments:
            other.rmdir()
            logger.warning("kavach: adopted events spooled by an earlier process (%s)", other)
        else:
            with contextlib.suppress(OSError):  # something of someone else's: leave it be
                other.rmdir()
