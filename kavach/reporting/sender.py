"""The reporter: an observer that ships call events to the backend, never on the call path.

Events go into a bounded memory queue as the guard made them; a background thread turns
them into JSON and drains them in batches to ``POST /v1/ingest`` (gzip, idempotent by event
id), so the caller pays one append per call. While the backend is unreachable, answers 5xx,
or the key is refused, batches go to a disk spool (see ``spool.py``) and are replayed in
order once it answers again; ``429`` waits for ``Retry-After``. Nothing is dropped while
the disk takes events: a malformed batch is split until the bad event is found, which is
set aside in the spool's ``rejected`` file with the backend's reason. ``close()`` flushes,
bounded in time, and an ``atexit`` hook does the same for programs that never call it;
what is left, the batch still on its way included, stays on disk for the next process.
When the disk refuses events too, they wait in memory up to ``max_memory``; newer ones
beyond that are dropped, counted in ``stats.dropped`` and logged.
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
    dropped: int = 0
    """Events lost because neither the backend nor the disk could take them."""
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
        # The batch being sent, with its place in the spool's order: if the send fails or
        # the process exits first, it goes to disk ahead of anything spilled after it.
        self._inflight: tuple[int, list[dict[str, Any]]] | None = None
        self._disk_error: str | None = None
        self._disk_backoff = 0.0
        self._disk_retry_at = 0.0
        self._dropped_now = 0  # while the disk refuses events
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
                    try:
                        self._spill_locked()
                    except Exception:  # reporting never fails the caller's call
                        logger.exception("kavach: could not spool events")
                self._cond.notify()

    # -- control ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events not yet accepted by the backend (in memory, on their way and on disk)."""
        inflight = self._inflight
        sending = len(inflight[1]) if inflight is not None else 0
        return len(self._queue) + sending + self._spool.pending

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
        """Flush and stop the thread within ``timeout``; anything unsent stays on disk."""
        if self._stop:
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        with self._cond:
            self._disk_retry_at = 0.0  # last chance: try the disk whatever its backoff said
            if self._inflight is not None:
                # Still on its way: keep it; if it does arrive, the backend drops the copy.
                seq, batch = self._inflight
                self._inflight = None
                self._keep_locked(batch, at=seq)
            self._spill_locked()
            lost = len(self._queue)
            self._queue.clear()
        self._spool.close()
        self.api.close()
        atexit.unregister(self._atexit)
        if lost or self.stats.dropped:
            self.stats.dropped += lost
            logger.error(
                "kavach: %d events are lost: neither the backend nor the spool in %s could "
                "take them",
                self.stats.dropped,
                self._spool.dir,
            )
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
            try:
                if not self._step():
                    return
            except Exception as exc:  # never let the reporter thread die: log, back off
                key = f"error:{type(exc).__name__}"
                if key not in self._warned:
                    self._warned.add(key)
                    logger.exception("kavach: reporter error; retrying with backoff")
                self._fail(f"unexpected error ({exc!r})", key=key)
            with self._cond:
                if not self._queue and not self._spool.pending:
                    self._idle.set()

    def _step(self) -> bool:
        """Send, replay or spool one batch; False once stopped."""
        with self._cond:
            waiting = time.monotonic() < self._retry_at or self._auth_refused
            if not self._stop and (waiting or len(self._queue) < self._batch_size):
                self._cond.wait(self._flush_interval)
            if self._stop:
                return False
            if time.monotonic() < self._retry_at or self._auth_refused:
                if len(self._queue) >= self._batch_size:
                    self._spill_locked()
                return True
            if self._spool.pending:
                self._spill_locked()  # later events queue behind the spooled ones
                batch: list[dict[str, Any]] = []
            else:
                batch = self._take(min(self._batch_size, len(self._queue)))
                if batch:
                    self._inflight = (self._spool.reserve(), batch)
        if not batch:
            self._replay()
            return True
        delivered = False
        try:
            delivered = self._deliver(batch)
        finally:
            with self._cond:
                inflight = self._inflight
                if inflight is not None and inflight[1] is batch:  # close() did not keep it
                    self._inflight = None
                    if not delivered:
                        self._keep_locked(batch, at=inflight[0])
        return True

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
        record = json.dumps({"reason": reason, "event": event}, default=repr)
        try:
            with open(self._spool.dir / "rejected.jsonl", "a", encoding="utf-8") as handle:
                handle.write(record + "\n")
        except OSError as exc:
            logger.error("kavach: %s; it could not be kept on disk (%s): %s", reason, exc, record)
            return
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
        """Move the memory queue to disk (callers hold ``_cond``)."""
        if not self._queue:
            return
        if time.monotonic() >= self._disk_retry_at:
            self._keep_locked(self._take(len(self._queue)))
        if self._disk_error is not None:
            self._bound_memory_locked()

    def _keep_locked(self, batch: list[dict[str, Any]], at: int | None = None) -> None:
        """Put a batch on disk or, if the disk refuses it, back in front of the memory queue."""
        try:
            self._spool.append(batch, at=at)
        except OSError as exc:
            self._queue.extendleft(reversed(batch))
            self._disk_backoff = min(_MAX_BACKOFF, max(0.25, self._disk_backoff * 2))
            self._disk_retry_at = time.monotonic() + self._disk_backoff
            if self._disk_error is None:
                self._disk_error = str(exc)
                logger.error(
                    "kavach: the spool in %s cannot take events (%s); %d events wait in "
                    "memory meanwhile, up to max_memory=%d: newer ones are dropped beyond that",
                    self._spool.dir,
                    exc,
                    len(self._queue),
                    self._max_memory,
                )
            return
        self.stats.spooled += len(batch)
        if self._disk_error is not None:
            logger.warning(
                "kavach: the spool in %s takes events again; %d were dropped meanwhile",
                self._spool.dir,
                self._dropped_now,
            )
            self._disk_error = None
            self._disk_backoff = 0.0
            self._dropped_now = 0

    def _bound_memory_locked(self) -> None:
        """Neither the backend nor the disk takes events: drop the newest past max_memory."""
        excess = len(self._queue) - self._max_memory
        if excess <= 0:
            return
        pop = self._queue.pop
        for _ in range(excess):
            pop()
        if not self._dropped_now:
            logger.error(
                "kavach: dropping events: %d wait in memory (max_memory) and the spool in %s "
                "cannot take more (%s); the count is in stats.dropped",
                self._max_memory,
                self._spool.dir,
                self._disk_error,
            )
        self._dropped_now += excess
        self.stats.dropped += excess
