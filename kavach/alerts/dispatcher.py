"""The alert dispatcher: turns guard events into alerts and delivers them off the call path.

Design. The guard calls observers synchronously on the call path, from whatever thread or
event loop settles the call. The dispatcher's observer methods only append the event to a
bounded in-memory queue and schedule its processing; everything else (matching rules,
de-duplication, formatting, HTTP, SMTP, retries) happens on one daemon thread per process
("kavach-alerts") that runs an asyncio event loop shared by every dispatcher. It is started
when the first dispatcher is built, never on the call path.

One thread with its own loop serves sync and async programs alike, which a task on the
caller's loop could not: a guard is often built before any loop exists and shared by threads
and by several ``asyncio.run`` calls; a task on the caller's loop would die with that loop
(losing queued alerts), a slow channel would share the application's loop, and sync programs
would have no loop at all. The hand-off is a deque append plus ``call_soon_threadsafe``, and
it only happens when a threshold is crossed, a guardrail trips or the agent is stopped or
resumed: ordinary calls pay nothing (the dispatcher does not listen to ``on_call``).

Delivery. Each (alert, channel) pair is claimed in a ``DedupStore`` under the key agent +
budget key (which carries the period) + threshold + channel (agent + guardrail + channel for
trips), so concurrent crossings, duplicate rules and, with a shared store, other processes
send one alert. A claim lasts the rule's cooldown (default 5 minutes), and for a budget
threshold at least until the period resets. Then the channel is tried with its own timeout
and retried with exponential backoff (honouring ``Retry-After``) on timeouts, connection
errors, 408, 429 and 5xx. The first failure of each channel is logged with the reason
(secrets masked); every failure is counted in ``dispatcher.stats``. Nothing is ever raised
into the caller.

PagerDuty incidents opened by a budget threshold are resolved when the budget's period
resets (a timer, or the first crossing of a later period, whichever comes first) and, with
every other incident of the agent, when the agent is resumed.

Deliveries to one channel are ordered: each waits for the one before it on that channel, so a
channel shows 70% before 90%; a hanging channel delays the next alert by at most
``ORDER_PATIENCE_SECONDS`` (1 s), then it goes anyway. A PagerDuty resolve waits for the whole
delivery before it (retries included), so it never lands before the trigger it closes.
Different channels never wait for each other.

Flush. ``close(timeout)`` (called by ``guard.close()``; ``guard.aclose()`` runs it in a worker
thread so the caller's loop keeps running) waits for queued and in-flight alerts up to
``timeout``, then cancels what is left, counting it in ``stats.abandoned`` with a warning. An
``atexit`` hook does the same for every live dispatcher within ``AGENTKAVACH_ALERT_FLUSH_SECONDS``
(default 5) in total; the loop thread is a daemon, so it never holds the process open.

A delivery that fails for good (not retryable, out of attempts, or cancelled at close)
releases its claim, so the alert is not lost for the rest of the period: the next event that
claims the key (a later trip, the same crossing seen by another process sharing the store)
sends it. While a delivery is being tried the claim holds, so no one else sends it meanwhile.

A ``DedupStore`` backed by Redis would implement ``claim`` as
``SET key 1 NX PX ceil(ttl_seconds * 1000)`` and return whether the key was set, and
``release`` as ``DEL key``; both are called on the alert loop's thread (a blocking client with
a short socket timeout is fine; an error is logged once and the alert is sent anyway).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import inspect
import logging
import os
import random
import smtplib
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import httpx

from kavach.alerts.alert import (
    Alert,
    from_crossing,
    from_kill,
    from_trip,
    resolving,
    series_key,
)
from kavach.alerts.channels import (
    CallableChannel,
    Channel,
    DeliveryError,
    EmailChannel,
    HttpResponse,
    KillChannel,
    PagerDutyChannel,
)
from kavach.alerts.rules import AlertingConfig, AlertRule
from kavach.alerts.secret import hide_in_logs, redact, show_in_logs
from kavach.events import GuardrailTrip, NullObserver, ThresholdCrossing

logger = logging.getLogger("kavach.alerts")

T = TypeVar("T")
KillFn = Callable[[str, "datetime | None"], object]
_TOTAL_PERIOD_TTL = 400 * 86_400.0
ORDER_PATIENCE_SECONDS = 1.0
"""How long an alert waits for the delivery before it on the same channel before going anyway."""


class DedupStore(Protocol):
    """Claims alert keys so one alert is sent per key; a Redis store shares it across processes.

    ``claim`` returns ``True`` for the first caller of ``key`` within ``ttl_seconds`` and
    ``False`` for everyone else until it expires (Redis: ``SET key 1 NX EX ttl``). ``release``
    gives a claim back after its delivery failed for good, so the alert can be sent by the
    next event that claims it instead of being lost until the claim expires (Redis: ``DEL``,
    best compare-and-delete on a token stored by ``claim``, so a claim that expired and was
    taken by another process is left alone). A store without ``release`` keeps a failed
    claim until its TTL. Both are called on the dispatcher's thread, never on the call path.
    """

    def claim(self, key: str, ttl_seconds: float) -> bool: ...

    def release(self, key: str) -> None: ...


class MemoryDedupStore:
    """The in-process ``DedupStore`` (the default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, key: str, ttl_seconds: float) -> bool:
        now = self._clock()
        with self._lock:
            until = self._until.get(key)
            if until is not None and until > now:
                return False
            if len(self._until) > 10_000:
                self._until = {k: u for k, u in self._until.items() if u > now}
            self._until[key] = now + ttl_seconds
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._until.pop(key, None)


@dataclass
class ChannelStats:
    sent: int = 0
    failed: int = 0
    retries: int = 0
    deduplicated: int = 0
    last_error: str | None = None


@dataclass
class DispatcherStats:
    """Counters since the dispatcher was built (read them any time, from any thread)."""

    events: int = 0
    dropped: int = 0
    """Events refused because the queue was full."""
    abandoned: int = 0
    """Deliveries still pending when a flush timed out at close."""
    channels: dict[str, ChannelStats] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.channels.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.channels.values())

    @property
    def retries(self) -> int:
        return sum(c.retries for c in self.channels.values())


class _AlertLoop:
    """The one event loop (on one daemon thread) that every dispatcher in the process uses."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _pid = 0
    client: httpx.AsyncClient | None = None
    """Shared by dispatchers without a transport of their own; made on the loop at start,
    so its TLS set-up (tens of milliseconds) never lands on a call that crossed a threshold."""

    @classmethod
    def _make_client(cls) -> None:
        if cls.client is None:
            cls.client = httpx.AsyncClient(follow_redirects=False)

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        loop = cls._loop
        if loop is not None and cls._pid == os.getpid():
            return loop
        with cls._lock:
            # After a fork the parent's thread does not exist in the child: start afresh.
            if cls._loop is None or cls._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="kavach-alerts", daemon=True
                )
                thread.start()
                cls._loop, cls._thread, cls._pid = loop, thread, os.getpid()
                cls.client = None
                loop.call_soon_threadsafe(cls._make_client)
            return cls._loop

    @classmethod
    def on_loop_thread(cls) -> bool:
        return threading.current_thread() is cls._thread


@dataclass
class _Incident:
    alert: Alert
    timer: asyncio.TimerHandle | None = None


_live: weakref.WeakSet[AlertDispatcher] = weakref.WeakSet()
_atexit_lock = threading.Lock()
_atexit_registered = False


def _flush_all_at_exit() -> None:
    try:
        budget = float(os.environ.get("AGENTKAVACH_ALERT_FLUSH_SECONDS", "5"))
    except ValueError:
        budget = 5.0
    deadline = time.monotonic() + budget
    for dispatcher in list(_live):
        dispatcher.close(max(0.0, deadline - time.monotonic()))


def _register_atexit(dispatcher: AlertDispatcher) -> None:
    global _atexit_registered
    with _atexit_lock:
        _live.add(dispatcher)
        if not _atexit_registered:
            atexit.register(_flush_all_at_exit)
            _atexit_registered = True


class AlertDispatcher(NullObserver):
    """A guard observer that sends alerts for threshold crossings, guardrail trips and stops.

    >>> guard.add_observer(AlertDispatcher(config, kill=guard.kill))   # doctest: +SKIP

    AgentKavach builds one from its alert parameters; build your own for custom stores.
    ``kill`` is what a kill rule runs (the guard's ``kill``).
    """

    def __init__(
        self,
        config: AlertingConfig,
        *,
        kill: KillFn | None = None,
        dedup: DedupStore | None = None,
        queue_size: int = 1000,
        max_attempts: int = 4,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.dedup: DedupStore = dedup if dedup is not None else MemoryDedupStore()
        self.queue_size = queue_size
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._transport = transport
        self._kill: Callable[[], KillFn | None]
        if kill is None:
            self._kill = lambda: None
        elif inspect.ismethod(kill):
            ref = weakref.WeakMethod(kill)
            self._kill = ref
        else:
            self._kill = lambda: kill
        self.stats = DispatcherStats(channels={name: ChannelStats() for name in config.channels})
        self._kill_rules = tuple(
            r for r in config.rules if any(self._is_kill(c) for c in r.channels)
        )
        self._notify_rules = tuple(
            AlertRule(
                **{**_fields(r), "channels": tuple(c for c in r.channels if not self._is_kill(c))}
            )
            for r in config.rules
            if any(not self._is_kill(c) for c in r.channels)
        )
        self._watch_resume = any(isinstance(c, PagerDutyChannel) for c in config.channels.values())
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._qlock = threading.Lock()
        self._scheduled = False
        self._pid = os.getpid()
        # State below is only touched on the alert loop's thread.
        self._tasks: set[asyncio.Task[None]] = set()
        self._incidents: dict[tuple[str, str], _Incident] = {}
        self._latest: dict[str, asyncio.Task[None]] = {}  # per channel: the next delivery waits
        self._logged: set[str] = set()
        self._client: httpx.AsyncClient | None = None
        _AlertLoop.get()  # start the thread now, off the call path
        _register_atexit(self)
        self._secrets = [s for c in config.channels.values() for s in c.secrets()]
        hide_in_logs(self._secrets)
        weakref.finalize(self, show_in_logs, self._secrets)

    def _is_kill(self, name: str) -> bool:
        return isinstance(self.config.channels.get(name), KillChannel)

    # -- observer (call path: hand off and return) ---------------------------------------

    def on_threshold(self, crossing: ThresholdCrossing) -> None:
        for rule in self._kill_rules:
            if rule.covers_crossing(crossing):
                self._run_kill(crossing)
                break
        if self._notify_rules:
            self._submit(("crossing", crossing))

    def on_guardrail(self, trip: GuardrailTrip) -> None:
        if any(r.guardrails for r in self._notify_rules):
            self._submit(("trip", trip))

    def on_kill(self, agent: str, reason: str) -> None:
        if any(r.kills for r in self._notify_rules):
            self._submit(("kill", agent, reason, datetime.now(UTC)))

    def on_resume(self, agent: str) -> None:
        if self._watch_resume:
            self._submit(("resume", agent))

    def _after_fork(self) -> None:
        # The child inherits the parent's queue and tasks but not its loop thread.
        with self._qlock:
            self._pid = os.getpid()
            self._queue.clear()
            self._scheduled = False
            self._tasks, self._incidents, self._latest, self._client = set(), {}, {}, None

    def _run_kill(self, c: ThresholdCrossing) -> None:
        kill = self._kill()
        if kill is None:
            return
        try:
            kill(
                f"alert rule: {c.budget} budget passed {c.threshold * 100:g}% of its limit",
                c.resets_at,
            )
        except Exception:
            logger.exception("kavach: the kill rule could not stop agent %r", c.agent)

    def _submit(self, event: tuple[Any, ...]) -> None:
        try:
            if self._pid != os.getpid():
                self._after_fork()
            with self._qlock:
                if len(self._queue) >= self.queue_size:
                    self.stats.dropped += 1
                    first: bool | None = self.stats.dropped == 1
                    schedule = False
                else:
                    self._queue.append(event)
                    self.stats.events += 1
                    first = None
                    schedule, self._scheduled = not self._scheduled, True
            if first is not None:
                if first:
                    logger.warning(
                        "kavach: alert queue full (%d events); dropping alerts until the "
                        "channels catch up (counted in dispatcher.stats.dropped)",
                        self.queue_size,
                    )
                return
            if schedule:
                _AlertLoop.get().call_soon_threadsafe(self._process_queue)
        except Exception:
            # Alerts fail open: whatever went wrong here must not reach the caller.
            logger.exception("kavach: could not hand an alert to the dispatcher")

    # -- on the alert loop ---------------------------------------------------------------

    def _process_queue(self) -> None:
        while True:
            with self._qlock:
                if not self._queue:
                    self._scheduled = False
                    return
                event = self._queue.popleft()
            try:
                self._handle(event)
            except Exception:
                logger.exception("kavach: could not turn %s into alerts", event[0])

    def _handle(self, event: tuple[Any, ...]) -> None:
        dashboard = self.config.dashboard_url
        kind = event[0]
        if kind == "crossing":
            crossing: ThresholdCrossing = event[1]
            alert = from_crossing(crossing, dashboard)
            self._resolve_earlier_periods(alert)
            self._fan_out(alert, [r for r in self._notify_rules if r.covers_crossing(crossing)])
        elif kind == "trip":
            trip: GuardrailTrip = event[1]
            alert = from_trip(trip, dashboard)
            self._fan_out(alert, [r for r in self._notify_rules if r.covers_trip(trip)])
        elif kind == "kill":
            alert = from_kill(event[1], event[2], event[3], dashboard)
            self._fan_out(alert, [r for r in self._notify_rules if r.kills])
        elif kind == "resume":
            agent: str = event[1]
            for (name, key), incident in list(self._incidents.items()):
                if incident.alert.agent == agent:
                    self._resolve(name, key, "the agent was resumed")

    def _fan_out(self, alert: Alert, rules: list[AlertRule]) -> None:
        seen: set[str] = set()
        for rule in rules:
            for name in rule.channels:
                if name in seen:
                    continue
                seen.add(name)
                channel = self.config.channels[name]
                key, ttl = self._dedup_key(alert, name, rule)
                try:
                    fresh = self.dedup.claim(key, ttl)
                except Exception as exc:
                    # A store that cannot answer must not silence alerts: send anyway.
                    self._log_once(
                        f"dedup:{type(exc).__name__}",
                        f"the de-duplication store failed ({type(exc).__name__}); sending without it",
                    )
                    fresh = True
                if not fresh:
                    self.stats.channels[name].deduplicated += 1
                    continue
                self._deliver_in_order(channel, alert, claim=key)
                if isinstance(channel, PagerDutyChannel):
                    self._track(name, alert)

    def _dedup_key(self, alert: Alert, channel: str, rule: AlertRule) -> tuple[str, float]:
        cooldown = rule.cooldown_seconds
        if alert.kind == "threshold":
            key = f"kavach:alert:{alert.agent}|{alert.budget_key}|{alert.threshold:g}|{channel}"
            if alert.resets_at is not None:
                left = (alert.resets_at - datetime.now(UTC)).total_seconds()
                return key, max(cooldown, left + 60.0)
            return key, cooldown if alert.period == "per_run" else max(cooldown, _TOTAL_PERIOD_TTL)
        if alert.kind == "guardrail":
            return f"kavach:alert:{alert.agent}|guardrail:{alert.guardrail}|{channel}", cooldown
        return f"kavach:alert:{alert.agent}|{alert.kind}|{channel}", cooldown

    def _deliver_in_order(self, channel: Channel, alert: Alert, claim: str | None = None) -> None:
        before = self._latest.get(channel.name)
        patience = None if alert.kind == "resolve" else ORDER_PATIENCE_SECONDS
        task = asyncio.get_running_loop().create_task(
            self._deliver_claimed(channel, alert, claim, after=before, patience=patience)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._latest[channel.name] = task

    # -- PagerDuty incidents --------------------------------------------------------------

    def _track(self, name: str, alert: Alert) -> None:
        slot = (name, alert.incident_key)
        if slot in self._incidents:
            self._incidents[slot].alert = alert
            return
        incident = _Incident(alert)
        if alert.kind == "threshold" and alert.resets_at is not None:
            delay = (alert.resets_at - datetime.now(UTC)).total_seconds()
            incident.timer = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._resolve, name, alert.incident_key, "a new period started"
            )
        self._incidents[slot] = incident

    def _resolve_earlier_periods(self, alert: Alert) -> None:
        if alert.budget_key is None:
            return
        series = series_key(alert.budget_key)
        for (name, key), incident in list(self._incidents.items()):
            old = incident.alert
            if (
                old.kind == "threshold"
                and old.agent == alert.agent
                and old.budget_key is not None
                and old.budget_key != alert.budget_key
                and series_key(old.budget_key) == series
            ):
                self._resolve(name, key, "a new period started")

    def _resolve(self, name: str, key: str, why: str) -> None:
        incident = self._incidents.pop((name, key), None)
        if incident is None:
            return
        if incident.timer is not None:
            incident.timer.cancel()
        channel = self.config.channels[name]
        resolve = resolving(incident.alert, datetime.now(UTC), why)
        self._deliver_in_order(channel, resolve)

    # -- delivery ------------------------------------------------------------------------

    async def _deliver_claimed(
        self,
        channel: Channel,
        alert: Alert,
        claim: str | None,
        after: asyncio.Task[None] | None = None,
        patience: float | None = None,
    ) -> None:
        delivered = False
        try:
            if after is not None and not after.done():
                await asyncio.wait({after}, timeout=patience)
            delivered = await self._deliver(channel, alert)
        finally:
            if claim is not None and not delivered:
                self._release(claim)

    def _release(self, key: str) -> None:
        release = getattr(self.dedup, "release", None)
        if release is None:
            return
        try:
            release(key)
        except Exception as exc:
            self._log_once(
                f"dedup-release:{type(exc).__name__}",
                f"the de-duplication store could not release a failed alert's claim "
                f"({type(exc).__name__}); that alert is not sent again until the claim expires",
            )

    async def _deliver(self, channel: Channel, alert: Alert) -> bool:
        """Try ``channel`` with retries; True once delivered, False when it gave up."""
        stats = self.stats.channels[channel.name]
        attempt = 0
        while True:
            attempt += 1
            try:
                await asyncio.wait_for(self._send(channel, alert), timeout=channel.timeout)
            except DeliveryError as exc:
                error = exc
            except TimeoutError:
                error = DeliveryError(f"no answer within {channel.timeout:g}s", retryable=True)
            except httpx.TransportError as exc:
                error = DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True)
            except smtplib.SMTPRecipientsRefused as exc:
                codes = sorted({code for code, _ in exc.recipients.values()})
                error = DeliveryError(
                    f"the SMTP server refused every recipient ({', '.join(map(str, codes))})",
                    retryable=all(400 <= c < 500 for c in codes),
                )
            except smtplib.SMTPResponseException as exc:
                error = DeliveryError(
                    f"the SMTP server answered {exc.smtp_code}: {exc.smtp_error!r}",
                    retryable=400 <= exc.smtp_code < 500,
                )
            except Exception as exc:
                error = DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True)
            else:
                stats.sent += 1
                return True
            reason = redact(error.reason, channel.secrets())
            if not error.retryable or attempt >= self.max_attempts:
                stats.failed += 1
                stats.last_error = reason
                tried = f" after {attempt} attempts" if attempt > 1 else ""
                self._log_once(
                    channel.name,
                    f"alert channel {channel.name!r} ({channel.kind}, {channel.target()}) could "
                    f"not deliver {alert.kind} alert for agent {alert.agent!r}{tried}: {reason}. "
                    "Further failures of this channel are only counted in dispatcher.stats",
                )
                return False
            stats.retries += 1
            delay = error.retry_after
            if delay is None:
                delay = self.backoff_seconds * (2 ** (attempt - 1)) * (0.5 + random.random())
            await asyncio.sleep(min(delay, self.max_backoff_seconds))

    async def _send(self, channel: Channel, alert: Alert) -> None:
        if isinstance(channel, CallableChannel):
            if inspect.iscoroutinefunction(channel.fn):
                await channel.fn(alert)
                return
            result = await _in_thread(channel.fn, alert)
            if inspect.isawaitable(result):
                await result
            return
        if isinstance(channel, KillChannel):
            return
        if isinstance(channel, EmailChannel) and channel.api is None:
            if alert.kind != "resolve":
                await _in_thread(channel.send_smtp, channel.message(alert))
            return
        request = channel.request(alert, time.time())
        if request is None:
            return
        client = self._client
        if client is None:
            if self._transport is not None:
                client = self._client = httpx.AsyncClient(
                    transport=self._transport, follow_redirects=False
                )
            else:
                _AlertLoop._make_client()
                client = _AlertLoop.client
                assert client is not None
        response = await client.post(
            request.url,
            content=request.body,
            headers=dict(request.headers),
            timeout=channel.timeout,
        )
        channel.check(HttpResponse(response.status_code, response.text, response.headers))

    def _log_once(self, slot: str, message: str) -> None:
        if slot in self._logged:
            logger.debug("kavach: %s", message)
            return
        self._logged.add(slot)
        logger.warning("kavach: %s", message)

    # -- flush and close -----------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            self._process_queue()
            if not self._tasks:
                with self._qlock:
                    if not self._queue:
                        return
                continue
            await asyncio.wait(set(self._tasks))

    async def _shutdown(self) -> int:
        pending = len(self._tasks)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for incident in self._incidents.values():
            if incident.timer is not None:
                incident.timer.cancel()
        self._incidents = {}
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        return pending

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, _AlertLoop.get())
        try:
            return future.result(timeout=max(0.0, timeout))
        except BaseException:
            future.cancel()
            raise

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds for queued and in-flight alerts. True if all went."""
        if _AlertLoop.on_loop_thread():
            return False  # called from a channel callable: waiting here would deadlock
        try:
            self._run(self._drain(), timeout)
            return True
        except Exception:
            return False

    def close(self, timeout: float = 5.0) -> bool:
        """Flush (bounded by ``timeout``), then cancel what is left and close connections.

        True if everything was delivered. A guard used again after ``close()`` keeps alerting.
        """
        if _AlertLoop.on_loop_thread():
            return False
        deadline = time.monotonic() + timeout
        done = self.flush(timeout)
        with self._qlock:
            pending = len(self._queue)
            self._queue.clear()
        try:
            pending += self._run(self._shutdown(), max(0.5, deadline - time.monotonic()))
        except Exception:
            logger.debug("kavach: the alert dispatcher did not shut down in time", exc_info=True)
        if not done and pending:
            self.stats.abandoned += pending
            logger.warning(
                "kavach: %d alert(s) were still undelivered when the guard closed (flush timed "
                "out after %.1fs)",
                pending,
                timeout,
            )
        return done

    async def aclose(self, timeout: float = 5.0) -> bool:
        """``close`` for async code: waits in a worker thread, never blocking the event loop."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.close, timeout)

    def __repr__(self) -> str:
        names = ", ".join(f"{c.kind}:{n}" for n, c in self.config.channels.items())
        return f"<AlertDispatcher channels=[{names}] rules={len(self.config.rules)}>"


def _fields(rule: AlertRule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in AlertRule.__dataclass_fields__}


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` in a fresh daemon thread (a pool refuses work during interpreter
    exit, when the atexit flush may still need to send an email)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=run, name="kavach-alert-io", daemon=True).start()
    return await future
