"""The reporter: an observer that ships call events to the backend, never on the call path.

Events go into a bounded memory queue as the guard made them; a background thread turns
them into JSON and drains them in batches to ``POST /v1/ingest`` (gzip, idempotent by event
id), so the caller pays one append per call. While the backend is unreachable, answers 5xx,
or the key is refused, batches go to a disk spool (see ``spool.py``) and are replayed in
order once it answers again; ``429`` waits for ``Retry-After``. Nothing is dropped: a
malformed batch is split until the bad event is found, which is set aside in the spool's
``rejected`` file with the backend's reason. ``close()`` flushes, bounded in
time, and an ``atexit`` hook does the same for programs that never call it; what is left
stays on disk for the next process.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kavach.events import CallEvent, NullObserver
from kavach.reporting.api import BackendAPI, BackendError
from kavach.reporting.payload import event_json
from kavach.reporting.spool import DiskSpool, default_spool_root

logger = logging.getLogger("kavach.reporting")

_MAX_BACKOFF = 30.0


@dataclass(slots=True)
class ReporterStats:
    sent: int = 0
    spooled: int = 0
    rejected: int = 0
    failures: int = 0
    last_error: str | None = None


class Reporter(NullObserver):
    """Batches call events to the backend in a daemon thread; spools to disk when it can't."""

    def __init__(
        self,
        api: BackendAPI,
        *,
        spool_root: Path | None = None,
        on_control: Callable[[dict[str, Any]], None] | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        max_memory: int = 10_000,
    ) -> None:
        self.api = api
        self.instance_id = uuid.uuid4().hex
        self.stats = ReporterStats()
        self._on_control = on_control
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_memory = max_memory
        self._wake_at = min(batch_size, max_memory + 1)  # queue length that needs the thread
        self._spool = DiskSpool(spool_root or default_spool_root())
        # CallEvents as the guard made them (turned into JSON by the sender thread, off the
        # call path) and payloads given to enqueue() as they are.
        self._queue: deque[CallEvent | dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._idle = threading.Event()
        self._idle.set()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._auth_refused = False
        self._warned: set[str] = set()
        self._replayed: dict[Path, int] = {}
        self._thread = threading.Thread(target=self._run, name="kavach-reporter", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)

        def at_exit() -> None:
            reporter = ref()
            if reporter is not None:
                reporter.close(timeout=5.0)

        self._atexit = at_exit
        atexit.register(at_exit)

    # -- observer (the call path: append and return) -------------------------------------

    def on_call(self, event: CallEvent) -> None:
        self.enqueue(event)

    def enqueue(self, payload: CallEvent | dict[str, Any]) -> None:
        """Queue one event (a CallEvent, or its wire form) for the sender thread.

        No lock in the common case: deque appends are atomic, and the sender marks itself
        busy when it takes a batch, so ``flush`` still waits for this event.
        """
        queue = self._queue
        queue.append(payload)
        if len(queue) >= self._wake_at:
            with self._cond:
                if len(queue) > self._max_memory:
                    # Overflow while the backend is slow or away: keep order, keep everything.
                    self._spill_locked()
                self._cond.notify()

    # -- control ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events not yet accepted by the backend (in memory and on disk)."""
        return len(self._queue) + self._spool.pending

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event so far was accepted; False if time ran out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._retry_at = 0.0  # a flush tries now, whatever the backoff said
            self._cond.notify()
        while time.monotonic() < deadline:
            if self.pending == 0 and self._idle.is_set():
                return True
            if self._auth_refused:
                return False
            time.sleep(0.01)
        return self.pending == 0

    def close(self, timeout: float = 5.0) -> None:
        """Flush (bounded by ``timeout``), stop the thread; anything unsent stays on disk."""
        if self._stop:
            return
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=max(0.1, timeout))
        with self._cond:
            self._spill_locked()
        self._spool.close()
        self.api.close()
        atexit.unregister(self._atexit)
        if self._spool.pending:
            logger.warning(
                "kavach: %d events could not reach the backend yet; they are kept in %s and "
                "will be sent by the next process",
                self._spool.pending,
                self._spool.root,
            )

    # -- the sender thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stop and len(self._queue) < self._batch_size:
                    self._cond.wait(self._flush_interval)
                if self._stop:
                    return
                waiting = time.monotonic() < self._retry_at or self._auth_refused
                if waiting:
                    if len(self._queue) >= self._batch_size:
                        self._spill_locked()
                    if not self._queue and not self._spool.pending:
                        self._idle.set()
                    continue
                if self._spool.pending:
                    self._spill_locked()  # later events queue behind the spooled ones
                    batch: list[dict[str, Any]] = []
                else:
                    batch = self._take(min(self._batch_size, len(self._queue)))
            try:
                if batch:
                    self._send(batch)
                else:
                    self._replay()
            except Exception:  # never let the reporter thread die
                logger.exception("kavach: reporter error")
                self._fail("unexpected error")
            with self._cond:
                if not self._queue and not self._spool.pending:
                    self._idle.set()

    def _replay(self) -> None:
        for path, events in self._spool.segments():
            # Resume a segment where the last attempt stopped, so a partial failure does not
            # send its first batches again (harmless to storage, but they count against caps).
            start = self._replayed.get(path, 0)
            while start < len(events):
                if not self._deliver(events[start : start + self._batch_size]):
                    self._replayed[path] = start
                    return
                start += self._batch_size
            self._replayed.pop(path, None)
            self._spool.done(path, len(events))

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if not self._deliver(batch):
            self._spool.append(batch)
            self.stats.spooled += len(batch)

    def _deliver(self, batch: list[dict[str, Any]]) -> bool:
        """Send one batch; True when the backend holds it (or set aside a bad event)."""
        try:
            answer = self.api.ingest(batch, self.instance_id)
        except httpx.HTTPError as exc:
            self._fail(f"backend unreachable ({type(exc).__name__})")
            return False
        except BackendError as exc:
            if exc.status == 429:
                # Each cause (burst, daily cap, plan limit) is worth one warning of its own.
                self._fail(f"rate limited: {exc}", exc.retry_after, key=f"429:{exc.reason}")
                return False
            if exc.status in (401, 403):
                self._auth_refused = True
                self._warn_once(
                    "auth",
                    f"kavach: the backend refused the API key ({exc}); "
                    "events are kept on disk and reporting is paused. Check api_key.",
                )
                return False
            if exc.status in (400, 413, 422):
                return self._split(batch, exc)
            self._fail(str(exc))
            return False
        self._backoff = 0.0
        self.stats.sent += len(batch)
        control = answer.get("control")
        if self._on_control is not None and isinstance(control, dict):
            try:
                self._on_control(control)
            except Exception:
                logger.exception("kavach: applying the control state failed")
        return True

    def _split(self, batch: list[dict[str, Any]], exc: BackendError) -> bool:
        if len(batch) > 1:
            half = len(batch) // 2
            return self._deliver(batch[:half]) and self._deliver(batch[half:])
        self._set_aside(batch[0], f"the backend rejected an event ({exc})")
        return True

    def _set_aside(self, event: Any, reason: str) -> None:
        """Keep an event that cannot be delivered in the spool's ``rejected`` file."""
        self.stats.rejected += 1
        with open(self._spool.dir / "rejected.jsonl", "a", encoding="utf-8") as handle:
            record = {"reason": reason, "event": event}
            handle.write(json.dumps(record, default=repr) + "\n")
        self._warn_once(
            "rejected", f"kavach: {reason}; it is kept in {self._spool.dir / 'rejected.jsonl'}"
        )

    def _fail(self, reason: str, retry_after: float | None = None, key: str | None = None) -> None:
        self.stats.failures += 1
        self.stats.last_error = reason
        self._backoff = min(_MAX_BACKOFF, max(0.25, self._backoff * 2))
        wait = retry_after if retry_after is not None else self._backoff
        self._retry_at = time.monotonic() + wait
        self._warn_once(
            key or reason.split(" ")[0], f"kavach: reporting paused for {wait:.1f}s: {reason}"
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _take(self, count: int) -> list[dict[str, Any]]:
        """The queue's first ``count`` events in wire form (callers hold ``_cond``).

        Pops one by one: callers may append meanwhile, without the lock.
        """
        if count:
            self._idle.clear()  # busy until this batch is delivered or spooled
        popleft = self._queue.popleft
        batch = []
        for _ in range(count):
            item = popleft()
            if isinstance(item, CallEvent):
                try:
                    item = event_json(item)
                except Exception as exc:  # a field of the wrong type: keep it, send the rest
                    self._set_aside(item, f"an event could not be turned into JSON ({exc!r})")
                    continue
            batch.append(item)
        return batch

    def _spill_locked(self) -> None:
        if self._queue:
            batch = self._take(len(self._queue))
            self._spool.append(batch)
            self.stats.spooled += len(batch)
