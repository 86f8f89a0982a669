"""A disk spool for events the backend could not take yet: append-only segments, in order.

Each process writes to its own directory, locked with ``flock`` while it lives. Segments
are JSON-lines files of events; the open one is fsynced when it rotates, and a segment is
deleted only after every event in it was accepted. A spool left behind by a process that
died is adopted by the next process that starts with the same spool root, so nothing is
lost across crashes; the backend de-duplicates by event id, so a replay never counts twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger("kavach.reporting")

_SEGMENT_BYTES = 1 << 20


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
        self._open: IO[str] | None = None
        self._open_path: Path | None = None
        self._count = 0
        self._adopt_orphans()

    @property
    def pending(self) -> int:
        """Events on disk not yet accepted by the backend."""
        return self._count

    def append(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        with self._mutex:
            if self._open is None:
                self._seq += 1
                self._open_path = self.dir / f"seg-{self._seq:012d}.jsonl"
                self._open = open(self._open_path, "a", encoding="utf-8")  # noqa: SIM115
            for event in events:
                self._open.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._open.flush()
            self._count += len(events)
            if self._open.tell() >= _SEGMENT_BYTES:
                self._rotate()

    def segments(self) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
        """Closed segments, oldest first, with their events (the open one is closed first)."""
        with self._mutex:
            self._rotate()
            paths = sorted(self.dir.glob("seg-*.jsonl"))
        for path in paths:
            events = []
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        events.append(json.loads(line))
                    except json.JSONDecodeError:
                        # A torn last line from a crash mid-write: the rest is still good.
                        logger.warning("kavach: skipping a torn line in spool %s", path)
            yield path, events

    def done(self, path: Path, count: int) -> None:
        """A segment's events were all accepted."""
        with self._mutex:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
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

    def _rotate(self) -> None:
        if self._open is not None:
            self._open.flush()
            os.fsync(self._open.fileno())
            self._open.close()
            self._open = None

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
                for segment in sorted(other.glob("seg-*.jsonl")):
                    self._seq += 1
                    target = self.dir / f"seg-{self._seq:012d}.jsonl"
                    segment.rename(target)
                    with open(target, encoding="utf-8") as f:
                        self._count += sum(1 for line in f if line.strip())
                lock_path.unlink(missing_ok=True)
                other.rmdir()
                logger.warning("kavach: adopted events spooled by an earlier process (%s)", other)
            except OSError:
                logger.exception("kavach: could not adopt spool %s", other)
            finally:
                handle.close()
