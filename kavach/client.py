"""The AgentKavach facade: configuration in, a guard that reserves, settles and reports out.

>>> guard = AgentKavach(agent_name="research-bot", budget=Budget.daily(50))   # doctest: +SKIP
>>> with guard.reserve(CallSpec(provider="openai", model="gpt-4o", messages=msgs)) as r:
...     ...  # make the call with max_tokens=r.max_output_tokens, then:
...     r.commit(usage)
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import math
import os
import time
import uuid
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from kavach import tokens
from kavach._money import to_dollars, to_nanos
from kavach.budget import Budget, Period
from kavach.engine import (
    Mode,
    Plan,
    Slot,
    _ttl,
    actual_amounts,
    crossed_thresholds,
    period_slots,
    plan_call,
    refusal_error,
    run_slots,
)
from kavach.errors import (
    AgentKilledError,
    GuardrailError,
    KavachConfigError,
    KavachError,
    LedgerUnavailableError,
    UnmeteredCallError,
)
from kavach.events import (
    CallEvent,
    CallStatus,
    GuardObserver,
    GuardrailTrip,
    NullObserver,
    ThresholdCrossing,
)
from kavach.guardrails import GuardrailConfig, Guardrails
from kavach.killswitch import KillSwitch
from kavach.ledger.base import Hold, Ledger, Refusal
from kavach.ledger.memory import MemoryLedger
from kavach.pricing import ModelPrice, Pricing, _posix
from kavach.reservation import Reservation
from kavach.spec import CallSpec
from kavach.tiers import AccountTiers
from kavach.usage import ZERO_USAGE, PriceVariant, Usage, tier_name

if TYPE_CHECKING:
    from kavach.alerts import AlertDispatcher, ChannelRule, DedupStore
    from kavach.reporting.link import BackendLink
    from kavach.telemetry import TelemetryConfig

logger = logging.getLogger("kavach")
Closer = Callable[[float], object]
AsyncCloser = Callable[[float], Awaitable[object]]
_ALERT_ENV = (
    "AGENTKAVACH_SLACK_WEBHOOK_URL",
    "AGENTKAVACH_PAGERDUTY_ROUTING_KEY",
    "AGENTKAVACH_PD_ROUTING_KEY",
    "AGENTKAVACH_ALERT_EMAIL",
    "AGENTKAVACH_WEBHOOK_URL",
)

_current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kavach_run", default=None
)
_PROMPT_CAP = 32_000


def current_run_id() -> str | None:
    """The run id of the innermost ``guard.run()`` block around this code, or ``None``.

    Framework adapters use it to charge a callback to the run the caller opened. It is a
    contextvar: asyncio tasks created inside the block see it, and so do
    ``asyncio.to_thread`` calls, but a ``threading.Thread`` or a ``ThreadPoolExecutor``
    worker does not (by default they start from an empty context), so their calls go to
    the guard's session run. Carry the run into a thread by running the work in a copy of
    the caller's context (one copy per thread: a context runs in one thread at a time), or
    name the run on the call with ``CallSpec(run_id=run_id)``::

        with guard.run() as run_id:
            pool.submit(contextvars.copy_context().run, work, item)
            threading.Thread(target=contextvars.copy_context().run, args=(work, item)).start()

    >>> from kavach import AgentKavach, current_run_id
    >>> with AgentKavach("bot").run("run-1"):
    ...     current_run_id()
    'run-1'
    >>> current_run_id() is None
    True
    """
    return _current_run.get()


_C = TypeVar("_C")


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where one budget stands now. Amounts in the budget's unit (nano-dollars for cost)."""

    label: str
    unit: str
    key: str
    spent: int
    reserved: int
    limit: int
    period: str
    period_id: str
    resets_at: datetime | None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent - self.reserved)

    @property
    def utilization(self) -> float:
        return self.spent / self.limit if self.limit else 1.0


def _env_disabled() -> bool:
    return os.environ.get("AGENTKAVACH_DISABLED", "").strip().lower() in {"1", "true", "yes"}


class AgentKavach:
    """A budget guard for one agent.

    Every call is reserved at its worst-case cost before it leaves the process and settled at
    its actual cost when it returns, so budgets hold under any concurrency.

    Parameters (money in dollars):
        agent_name: the agent's name in ledger keys, events and the dashboard.
        budget: one ``Budget`` or a list (the agent's, shared ones, the org's); a call must fit
            every one of them. Budgets on the same ledger key (two daily budgets of the agent,
            or one in code and one set in the dashboard) count spend once: the smaller limit
            holds and each one's thresholds alert.
        on_kill: called once with the reason when the agent is stopped (sync or async).
        mode: ``"reserve"`` reserves the call's max output tokens (or
            ``default_max_output_tokens`` when the call gives none); ``"strict"`` also sets the
            call's max output tokens to what the budget left can pay, so spend can never pass a
            limit.
        max_tokens_per_run, max_calls_per_run, max_runtime_seconds, max_cost_per_call,
        detect_loops, loop_threshold, max_spend_per_minute: guardrails, see ``GuardrailConfig``.
        kill_on_guardrail: a guardrail trip also stops the agent (default ``True``).
        unmetered: what to do with a paid call the guard cannot meter (DALL·E images,
            ``whisper-1``, batches, ...; see ``admit_unmetered``): ``"allow"`` (the default)
            lets it through uncounted, with a warning the first time; ``"refuse"`` raises
            ``UnmeteredCallError`` before it is sent, for a budget nothing can get around.
        prices: extra or overriding model prices; ``unknown_model_price`` lets models with no
            known price through at that worst-case price (otherwise they are refused).
        ledger: where spend lives: a ``Ledger``, a Redis URL (``"redis://localhost:6379/0"``,
            see ``kavach.ledger.redis``), or ``None``: ``AGENTKAVACH_REDIS_URL`` when set,
            else in-process memory.
        state_file: with the in-process ledger, a file that keeps spent amounts across
            restarts (see ``kavach.ledger.statefile``).
        telemetry: ``True`` or a ``TelemetryConfig``: one OpenTelemetry span per call and
            gen_ai / kavach metrics on the application's providers (see ``kavach.telemetry``).
        enabled: ``False`` (or ``AGENTKAVACH_DISABLED=1``) makes the guard a passthrough.
        save_prompts: keep prompt text in call events (off by default).
        slack_webhook_url, pagerduty_routing_key, alert_email, webhook_url (+ webhook_secret):
            turn an alert channel on with its default rules; ``channels=[AgentKavach.channel(...)]``
            gives rules of your own; ``dashboard_url`` is linked from alerts. Without them the
            ``AGENTKAVACH_SLACK_WEBHOOK_URL``, ``AGENTKAVACH_PAGERDUTY_ROUTING_KEY`` (...)
            environment variables do the same. ``alert_dedup_store`` shares alert
            de-duplication across processes. See ``kavach.alerts``.
        api_key, endpoint: an AgentKavach SDK key (``ak_live_...``) and the backend URL (or
            ``AGENTKAVACH_API_KEY`` and ``AGENTKAVACH_BACKEND_URL``) turn on reporting, the
            control channel (Stop and Resume from the dashboard) and seeding of this period's
            spend after a restart; ``spool_dir`` is where events wait while the backend is away.
        clock: returns the current aware datetime; for simulations and tests of period resets.
        provider, llm_key, base_url: build a guarded provider SDK client on first use
            (``"openai"``, ``"anthropic"``, ``"google"``, ``"mistral"``) for ``create`` /
            ``acreate`` and the provider-shaped paths (``guard.chat.completions.create``...).
            ``llm_key`` and ``base_url`` fall back to the SDK's own environment variables.
    """

    def __init__(
        self,
        agent_name: str = "default",
        budget: Budget | Sequence[Budget] | None = None,
        *,
        on_kill: Callable[[str], Any] | Callable[[str], Awaitable[Any]] | None = None,
        mode: Mode = "reserve",
        default_max_output_tokens: int = 4096,
        min_output_tokens: int = 16,
        max_tokens_per_run: int | None = None,
        max_calls_per_run: int | None = None,
        max_runtime_seconds: float | None = None,
        max_cost_per_call: float | None = None,
        detect_loops: bool = True,
        loop_threshold: int = 5,
        max_spend_per_minute: float | None = None,
        velocity_window_seconds: float = 60.0,
        kill_on_guardrail: bool = True,
        unmetered: Literal["allow", "refuse"] = "allow",
        prices: Mapping[str, ModelPrice] | None = None,
        unknown_model_price: ModelPrice | None = None,
        ledger: Ledger | str | None = None,
        state_file: str | os.PathLike[str] | None = None,
        telemetry: bool | TelemetryConfig = False,
        enabled: bool = True,
        save_prompts: bool = False,
        observers: Sequence[GuardObserver] = (),
        clock: Callable[[], datetime] | None = None,
        slack_webhook_url: str | None = None,
        pagerduty_routing_key: str | None = None,
        alert_email: str | Sequence[str] | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        channels: Sequence[ChannelRule] = (),
        dashboard_url: str | None = None,
        alert_dedup_store: DedupStore | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        provider: str | None = None,
        llm_key: str | None = None,
        base_url: str | None = None,
    ) -> None:
        # The name is a URL path segment (/v1/agents/<name>/kill), an item of the control
        # stream's comma-separated agent list and a part of ledger keys; the backend
        # refuses events whose agent breaks any of them, by the same rule.
        if (
            not agent_name
            or any(c in ",/?#%:" or c < " " or "\x7f" <= c <= "\x9f" for c in agent_name)
            or agent_name != agent_name.strip()
            or agent_name in (".", "..")
        ):
            raise KavachConfigError(
                f"agent_name {agent_name!r} is not allowed: use a non-empty name without "
                "any of , / ? # % : or control characters, without leading or trailing "
                "whitespace, and not '.' or '..' (the name is used in dashboard URLs, in the "
                "control channel's comma-separated agent list and in ledger keys), "
                "e.g. 'research-bot'"
            )
        if mode not in ("reserve", "strict"):
            raise KavachConfigError(f"mode must be 'reserve' or 'strict', got {mode!r}")
        if unmetered not in ("allow", "refuse"):
            raise KavachConfigError(f"unmetered must be 'allow' or 'refuse', got {unmetered!r}")
        if default_max_output_tokens < 1 or min_output_tokens < 1:
            raise KavachConfigError("default_max_output_tokens and min_output_tokens must be >= 1")
        if budget is None:
            budgets: tuple[Budget, ...] = ()
        elif isinstance(budget, Budget):
            budgets = (budget,)
        else:
            budgets = tuple(budget)
        for b in budgets:
            if not isinstance(b, Budget):
                raise KavachConfigError(f"budget must be a Budget, got {type(b).__name__}")
        self.agent_name = agent_name
        self.budgets = budgets
        # What ``budgets`` is built from (see _apply_budgets): the code's, the dashboard's,
        # and the thresholds alert rules fire at.
        self._code_budgets = budgets
        self._remote_budgets: tuple[Budget, ...] = ()
        self._alert_thresholds: frozenset[float] = frozenset()
        self.mode: Mode = mode
        self.default_max_output_tokens = default_max_output_tokens
        self.min_output_tokens = min_output_tokens
        self.kill_on_guardrail = kill_on_guardrail
        self.unmetered = unmetered
        self.save_prompts = save_prompts
        self.enabled = enabled and not _env_disabled()
        self.guardrail_config = GuardrailConfig(
            max_tokens_per_run=max_tokens_per_run,
            max_calls_per_run=max_calls_per_run,
            max_runtime_seconds=max_runtime_seconds,
            max_cost_per_call=to_nanos(max_cost_per_call)
            if max_cost_per_call is not None
            else None,
            detect_loops=detect_loops,
            loop_threshold=loop_threshold,
            max_spend_per_minute=(
                to_nanos(max_spend_per_minute) if max_spend_per_minute is not None else None
            ),
            velocity_window_seconds=velocity_window_seconds,
        )
        self.guardrails = Guardrails(self.guardrail_config)
        self.pricing = Pricing(prices, unknown_model_price=unknown_model_price)
        self.ledger: Ledger = _resolve_ledger(ledger, state_file)
        self.kill_switch = KillSwitch(agent_name, on_kill)
        self._observers: list[GuardObserver] = list(observers)
        self._call_observers = [o for o in self._observers if _listens_to_calls(o)]
        # Set by telemetry: captures the caller's trace context at reserve time.
        self._context_hook: Callable[[], object] | None = None
        add_reclaim_listener = getattr(self.ledger, "add_reclaim_listener", None)
        if add_reclaim_listener is not None:
            add_reclaim_listener(lambda reclaimed: self._emit("on_reclaim", reclaimed))
        if telemetry:
            from kavach.telemetry import TelemetryConfig as _Config
            from kavach.telemetry import instrument

            instrument(self, telemetry if isinstance(telemetry, _Config) else _Config())
        self._session_run = f"{agent_name}-{uuid.uuid4().hex[:12]}"
        self._clock = clock or functools.partial(datetime.now, UTC)
        # Without a clock of the user's, calls read time.time(): a datetime is made only when
        # an event, a refusal or a new period needs one.
        self._custom_clock = clock
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:20]
        # (budgets they were made from, slots, valid until): replaced whole, never mutated,
        # so a budget change from the control channel cannot leave stale keys behind.
        # The fourth item is the third as seconds since the epoch (infinity for never).
        self._slot_cache: (
            tuple[tuple[Budget, ...], tuple[Slot, ...], datetime | None, float] | None
        ) = None
        self._has_run_slots = bool(
            max_tokens_per_run
            or max_calls_per_run
            or any(b.period is Period.PER_RUN for b in budgets)
        )
        self._unmetered_seen: set[tuple[str, str]] = set()  # kinds of call warned about
        self._tiers = AccountTiers()  # what calls that leave the tier to the account cost
        self._provider = _ProviderConfig(provider, llm_key, base_url) if provider else None
        self._clients: Any = None
        self._closers: list[tuple[Closer, AsyncCloser | None]] = []
        if ledger is None or isinstance(ledger, str):  # the guard made it, the guard closes it
            _add_ledger_closer(self, self.ledger)
        self.alerts: AlertDispatcher | None = None
        if (
            slack_webhook_url
            or pagerduty_routing_key
            or alert_email
            or webhook_url
            or webhook_secret
            or channels
            or any(os.environ.get(name) for name in _ALERT_ENV)
        ):
            self._build_alerts(
                slack_webhook_url=slack_webhook_url,
                pagerduty_routing_key=pagerduty_routing_key,
                alert_email=alert_email,
                webhook_url=webhook_url,
                webhook_secret=webhook_secret,
                channels=channels,
                dashboard_url=dashboard_url,
                # With a Redis ledger, alerts are de-duplicated across processes on it.
                dedup=alert_dedup_store or getattr(self.ledger, "dedup_store", lambda: None)(),
            )
        self.backend: BackendLink | None = None
        api_key = api_key or os.environ.get("AGENTKAVACH_API_KEY") or None
        if api_key and self.enabled:
            self._connect_backend(api_key, endpoint, spool_dir)

    def _connect_backend(
        self, api_key: str, endpoint: str | None, spool_dir: str | os.PathLike[str] | None
    ) -> None:
        from pathlib import Path

        from kavach.reporting.api import BackendConfig
        from kavach.reporting.link import connect_backend

        endpoint = backend_endpoint(endpoint)
        self.backend = connect_backend(
            self,
            BackendConfig(api_key=api_key, endpoint=endpoint),
            spool_dir=Path(spool_dir) if spool_dir is not None else None,
        )
        self.add_closer(self.backend.close)

    # -- alerts and shutdown ------------------------------------------------------------

    @staticmethod
    def channel(kind: str | Callable[..., Any], /, **settings: Any) -> ChannelRule:
        """An alert channel with its rule, for ``channels=[...]``.

        >>> AgentKavach.channel("slack", threshold=0.70, webhook_url=url)        # doctest: +SKIP
        >>> AgentKavach.channel("pagerduty", threshold=0.90, routing_key=key)    # doctest: +SKIP
        >>> AgentKavach.channel("email", threshold=0.9, to="ops@example.com")    # doctest: +SKIP
        >>> AgentKavach.channel("webhook", threshold=0.9, url=url, secret=secret) # doctest: +SKIP
        >>> AgentKavach.channel("kill", threshold=1.0)                           # doctest: +SKIP

        Settings are checked now (https URLs, routing key shape, addresses, templates).
        """
        from kavach.alerts.rules import channel

        return channel(kind, **settings)  # type: ignore[arg-type]

    def _build_alerts(self, *, dedup: DedupStore | None, **params: Any) -> None:
        from kavach.alerts import AlertDispatcher, from_params

        config = from_params(**params)
        if not config:
            return
        self._alert_thresholds = config.thresholds
        self._apply_budgets()
        self.alerts = AlertDispatcher(config, kill=self.kill, dedup=dedup)
        self.add_observer(self.alerts)
        self.add_closer(self.alerts.close, self.alerts.aclose)

    def add_closer(self, close: Closer, aclose: AsyncCloser | None = None) -> None:
        """Run ``close(timeout_seconds)`` on ``guard.close()`` (and ``aclose`` on
        ``await guard.aclose()``; without one, ``close`` runs in a worker thread).

        ``close`` may run more than once (a guard can be closed, used and closed again)."""
        self._closers.append((close, aclose))

    def close(self, timeout: float = 5.0) -> None:
        """Flush alerts (and whatever else registered a closer), within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for close, _ in list(self._closers):
            try:
                close(max(0.0, deadline - time.monotonic()))
            except Exception:
                logger.exception("kavach: closing %r failed", close)

    async def aclose(self, timeout: float = 5.0) -> None:
        """``close`` for async code; never blocks the event loop."""
        import anyio.to_thread

        deadline = time.monotonic() + timeout
        for close, aclose in list(self._closers):
            left = max(0.0, deadline - time.monotonic())
            try:
                if aclose is not None:
                    await aclose(left)
                else:
                    await anyio.to_thread.run_sync(close, left)
            except Exception:
                logger.exception("kavach: closing %r failed", close)

    # -- from a file --------------------------------------------------------------------

    @overload
    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], agent: None = None, **overrides: Any
    ) -> dict[str, AgentKavach]: ...

    @overload
    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], agent: str, **overrides: Any
    ) -> AgentKavach: ...

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], agent: str | None = None, **overrides: Any
    ) -> dict[str, AgentKavach] | AgentKavach:
        """Guards by agent name from a YAML file (one guard with ``agent=``); see ``kavach.config``.

        The guards share one ledger, so shared and org budgets hold across them. ``overrides``
        (``on_kill=``, ``observers=``, ``ledger=``) apply to every guard.

        >>> guards = AgentKavach.from_yaml("kavach.yaml")          # doctest: +SKIP
        >>> bot = AgentKavach.from_yaml("kavach.yaml", agent="research-bot")  # doctest: +SKIP
        """
        from kavach.config import guards_from_yaml  # pyyaml and pydantic only when used

        guards = guards_from_yaml(path, agent, guard_class=cls, **overrides)
        return guards if agent is None else guards[agent]

    # -- observers ----------------------------------------------------------------------

    def add_observer(self, observer: GuardObserver) -> None:
        """Receive this guard's events (calls, thresholds, guardrail trips, kill, resume)."""
        self._observers.append(observer)
        self._call_observers = [o for o in self._observers if _listens_to_calls(o)]

    def remove_observer(self, observer: GuardObserver) -> None:
        self._observers.remove(observer)
        self._call_observers = [o for o in self._observers if _listens_to_calls(o)]

    def _emit(self, method: str, *args: Any) -> None:
        # Call events go only to observers that override on_call (alerts do not), so a guard
        # whose only observer is the alert dispatcher builds no event per call.
        observers = self._call_observers if method == "on_call" else self._observers
        for observer in observers:
            hook = getattr(observer, method, None)
            if hook is None:  # optional hooks (on_reclaim) need not be implemented
                continue
            try:
                hook(*args)
            except Exception:
                logger.exception("kavach observer %r failed in %s", observer, method)

    # -- runs ---------------------------------------------------------------------------

    @contextmanager
    def run(self, run_id: str | None = None) -> Iterator[str]:
        """Scope per-run guardrails and budgets to one agent invocation (sync or async code).

        Calls in the block and in asyncio tasks started from it are charged to the run; calls
        from threads it starts are not, unless given its context (see ``current_run_id``).

        >>> with guard.run() as run_id:      # doctest: +SKIP
        ...     agent.invoke(task)
        """
        rid = run_id or uuid.uuid4().hex
        self.guardrails.start_run(rid)
        token = _current_run.set(rid)
        try:
            yield rid
        finally:
            _current_run.reset(token)

    @property
    def current_run(self) -> str:
        return _current_run.get() or self._session_run

    # -- kill switch --------------------------------------------------------------------

    def kill(self, reason: str = "stopped by guard.kill()", until: datetime | None = None) -> bool:
        """Stop the agent until ``until`` (``None``: until ``resume``): later calls raise
        AgentKilledError. Runs on_kill once per stop; a stop already on is made longer by a
        longer one (a Stop pressed while a budget holds the agent outlasts the reset), never
        shorter. Returns True if this stopped the agent or made its stop longer."""
        if self.kill_switch.kill(reason, until):
            logger.warning("kavach: agent %r stopped: %s", self.agent_name, reason)
            self._emit("on_kill", self.agent_name, reason)
            return True
        return False

    def resume(self) -> bool:
        """Lift a stop. Returns True if the agent was stopped."""
        if self.kill_switch.resume():
            logger.warning("kavach: agent %r resumed", self.agent_name)
            self._emit("on_resume", self.agent_name)
            return True
        return False

    @property
    def killed(self) -> bool:
        """Whether the agent is stopped now (a budget stop whose period has reset is lifted
        by reading this, as by the next call)."""
        switch = self.kill_switch
        if switch.reason is not None and switch.lift_if_reset(self._clock()):
            self._resumed_at_reset()
        return switch.killed

    def _resumed_at_reset(self) -> None:
        logger.warning("kavach: agent %r resumed: its budget's period reset", self.agent_name)
        self._emit("on_resume", self.agent_name)

    # -- reserve ------------------------------------------------------------------------

    def reserve(self, spec: CallSpec) -> Reservation:
        """Hold the worst-case cost of ``spec`` in every budget, or raise why it cannot run."""
        r = self._prepare(spec)
        while (plan := r.plan) is not None:
            try:
                result = self.ledger.reserve(plan.lines, plan.min_units, plan.max_units)
            except KavachError as exc:  # the ledger refused the request itself (a config error)
                self._not_held(r)
                self._refused(r.spec, r.run_id, r.started_at, exc)
                raise
            except Exception as exc:
                raise self._ledger_down(r, exc) from exc
            if type(result) is Hold and self._context_hook is None:
                r.hold = result  # admitted: _admit's common case, inlined
                return r
            if type(result) is Hold or not self._tiers.held_above(r.spec, r.variant):
                return self._admit(r, result)
            r = self._at_account_tier(r)
        return r

    async def areserve(self, spec: CallSpec) -> Reservation:
        """``reserve`` for async code (awaits the ledger when it does I/O)."""
        r = self._prepare(spec)
        while (plan := r.plan) is not None:
            try:
                ledger = self.ledger
                if getattr(ledger, "in_process", False):  # no I/O: no coroutine to await
                    result = ledger.reserve(plan.lines, plan.min_units, plan.max_units)
                else:
                    result = await ledger.areserve(plan.lines, plan.min_units, plan.max_units)
            except KavachError as exc:
                self._not_held(r)
                self._refused(r.spec, r.run_id, r.started_at, exc)
                raise
            except Exception as exc:
                raise self._ledger_down(r, exc) from exc
            if type(result) is Hold and self._context_hook is None:
                r.hold = result  # admitted: _admit's common case, inlined
                return r
            if type(result) is Hold or not self._tiers.held_above(r.spec, r.variant):
                return self._admit(r, result)
            r = self._at_account_tier(r)
        return r

    def _at_account_tier(self, r: Reservation) -> Reservation:
        """``r``, refused at the dearest tier its account can default to, planned again at
        the account's tier as now known, or standard. Refusing it would refuse a call that
        fits at standard prices, the tier of nearly every account: near the limit, one call
        of a project whose default is priority may be held at standard prices instead."""
        self._not_held(r)
        return self._prepare(r.spec, self._tiers.known(r.spec.provider))

    def _prepare(self, spec: CallSpec, tier: PriceVariant | None = None) -> Reservation:
        """Check and plan the call: a Reservation not yet held (no plan when disabled).
        ``tier``: the price variant to hold it at, when the request leaves it to the account."""
        custom = self._custom_clock
        now: datetime | None = None
        if custom is None:
            wall = time.time()
        else:
            now = custom()
            wall = _posix(now)
        run_id = spec.run_id or _current_run.get() or self._session_run
        if not self.enabled:
            return Reservation(self, spec, None, None, None, run_id, None, now, wall)
        if self.kill_switch.reason is not None:  # stopped: check() raises or lifts the stop
            self._refuse_if_stopped(spec, run_id, now, wall)
        input_tokens = spec.input_tokens
        content = None  # a hash of plain chat messages, taken while counting them
        media = 0
        if input_tokens is None:
            try:
                input_tokens, content, media = tokens.estimate_with_content_hash(
                    spec.provider,
                    spec.model,
                    messages=spec.messages,
                    prompt=spec.prompt,
                    system=spec.system,
                    tools=spec.tools,
                    bounded=True,
                )
            except KavachError as exc:
                self._refused(spec, run_id, now or _utc(wall), exc)
                raise
        if spec.context_tokens:
            input_tokens += spec.context_tokens
            media += spec.context_media_tokens
        fingerprint = None
        if self.guardrail_config.detect_loops:
            if content is not None and spec.tools is None and spec.request_key is None:
                fingerprint = hash((spec.model, content, None))  # a plain chat call, no tools
            else:
                fingerprint = _fingerprint(spec, content)
        try:
            self.guardrails.check(run_id, fingerprint)
        except GuardrailError as exc:
            self._guardrail_tripped(spec, run_id, now or _utc(wall), exc)
            raise
        try:
            variant = spec.price_variant if tier is None else tier
            if variant is None:  # left to the account: its tier as last served
                variant = self._tiers.to_hold(spec)
            price = self.pricing.resolve_at(spec.provider, spec.model, wall, variant)
            cache = self._slot_cache  # _slots, inlined for the common case
            if (
                cache is not None
                and cache[0] is self.budgets
                and not self._has_run_slots
                and wall < cache[3]
            ):
                slots = cache[1]
            else:
                slots = self._slots(run_id, now or _utc(wall))
            plan = plan_call(
                slots=slots,
                guardrails=self.guardrail_config,
                price=price,
                input_tokens=input_tokens,
                requested_max_output=spec.max_output_tokens,
                mode=self.mode,
                default_max_output=self.default_max_output_tokens,
                min_output=self.min_output_tokens,
                cache_writes=spec.cache_writes,
                media_tokens=media,
                text_output=spec.text_output,
                choices=spec.choices,
                fixed_output=spec.fixed_output,
                searches=spec.max_searches,
                characters=spec.input_characters,
                audio_seconds=spec.audio_seconds,
            )
            if self.guardrails.records_spend:  # the velocity limit counts it in flight
                self.guardrails.admit_spend(plan.worst_case(plan.max_units))
        except GuardrailError as exc:
            self.guardrails.forget_request(run_id, fingerprint)
            self._guardrail_tripped(spec, run_id, now or _utc(wall), exc)
            raise
        except KavachError as exc:
            self.guardrails.forget_request(run_id, fingerprint)
            self._refused(spec, run_id, now or _utc(wall), exc)
            raise
        return Reservation(self, spec, plan, None, price, run_id, fingerprint, now, wall, variant)

    def admit_unmetered(
        self, spec: CallSpec, request: object = None, *, refusable: bool = True
    ) -> None:
        """Let a billable call the guard cannot meter through, or raise why it may not go.

        Wrapped clients call this for paid endpoints without a usage-based price (DALL·E
        images, video generation, audio, batches, fine-tuning, ...). Such a call costs
        nothing against dollar budgets (its cost is unknown) but is a call like any other:
        it stops with the agent (``AgentKilledError``); it counts toward
        ``max_calls_per_run`` and budgets in calls; the runtime limit holds; and ``request``
        (what the call sends), repeated ``loop_threshold`` times in a run, is a loop. Each
        refusal is reported like any other. With ``unmetered="refuse"`` the call is refused
        (``UnmeteredCallError``); else the first call of each kind logs a warning that its
        cost is not counted.

        ``refusable=False``: a call the provider started itself (a Realtime session's
        transcription of a turn), which can only be stopped with the agent: it is not
        counted or refused, only warned about (with ``unmetered="refuse"``, the Realtime
        wrapper refuses the ``session.update`` that turns such calls on instead).
        """
        if not self.enabled:
            return
        count = self._unmetered_count(spec, request, refusable)
        if count is not None:
            try:
                self._count_unmetered(count.plan, count.run_id)
            except KavachError as exc:
                self._unmetered_refused(spec, count.run_id, count.fingerprint, exc)
                raise
        self._warn_unmetered(spec, refusable)

    async def aadmit_unmetered(
        self, spec: CallSpec, request: object = None, *, refusable: bool = True
    ) -> None:
        """``admit_unmetered`` for async code: the call is counted on a ledger that does
        I/O (Redis) without blocking the event loop."""
        if not self.enabled:
            return
        count = self._unmetered_count(spec, request, refusable)
        if count is not None:
            try:
                await self._acount_unmetered(count.plan, count.run_id)
            except KavachError as exc:
                self._unmetered_refused(spec, count.run_id, count.fingerprint, exc)
                raise
        self._warn_unmetered(spec, refusable)

    def _unmetered_count(
        self, spec: CallSpec, request: object, refusable: bool
    ) -> _UnmeteredCount | None:
        """Check an unmetered call (stopped agent, guardrails, ``unmetered="refuse"``) and
        plan counting it: None when nothing counts it (``refusable=False``, or no budget in
        calls and no ``max_calls_per_run``)."""
        self.check_stopped(spec)
        if not refusable:
            return None
        run_id = spec.run_id or _current_run.get() or self._session_run
        fingerprint = None
        if self.guardrail_config.detect_loops and request is not None:
            fingerprint = hash((spec.operation, spec.model, _content_hash(request)))
        try:
            self.guardrails.check(run_id, fingerprint)
        except GuardrailError as exc:
            self._guardrail_tripped(spec, run_id, self._clock(), exc)
            raise
        try:
            if self.unmetered == "refuse":
                raise UnmeteredCallError(self.agent_name, spec.provider, spec.operation, spec.model)
            slots = tuple(s for s in self._slots(run_id, self._clock()) if s.info.unit == "calls")
            if not slots:
                return None
            plan = plan_call(
                slots=slots,
                guardrails=self.guardrail_config,
                price=_FREE,
                input_tokens=0,
                requested_max_output=0,
                mode="reserve",
                default_max_output=0,
                min_output=0,
            )
        except KavachError as exc:
            self._unmetered_refused(spec, run_id, fingerprint, exc)
            raise
        return _UnmeteredCount(run_id, fingerprint, plan)

    def _unmetered_refused(
        self, spec: CallSpec, run_id: str, fingerprint: int | None, exc: KavachError
    ) -> None:
        self.guardrails.forget_request(run_id, fingerprint)
        if isinstance(exc, GuardrailError):  # max_calls_per_run
            self._guardrail_tripped(spec, run_id, self._clock(), exc)
        else:
            self._refused(spec, run_id, self._clock(), exc)

    def _warn_unmetered(self, spec: CallSpec, refusable: bool) -> None:
        kind = (spec.provider, spec.operation)
        if kind not in self._unmetered_seen:
            self._unmetered_seen.add(kind)
            logger.warning(
                "kavach: agent %r made a %s %s call, which the guard cannot meter: it stops "
                "with the agent%s, but its cost is not counted against the agent's budgets%s",
                self.agent_name,
                spec.provider,
                spec.operation,
                " and counts as a call" if refusable else "",
                " (unmetered='refuse' refuses such calls)" if refusable else "",
            )

    def _count_unmetered(self, plan: Plan, run_id: str) -> None:
        """Count an unmetered call on the ledger lines that count calls (a budget in calls,
        ``max_calls_per_run``): held and settled at one call, or refused when one is full."""
        try:
            held = self.ledger.reserve(plan.lines, 0, 0)
        except KavachError:  # the ledger refused the request itself
            raise
        except Exception as exc:
            raise _ledger_unavailable(exc) from exc
        if not isinstance(held, Hold):
            raise refusal_error(plan, held, run_id, self.mode)
        amounts = (1,) * len(plan.lines)
        try:
            after = self.ledger.settle(held, amounts)
        except Exception:  # the call goes ahead: count it here, as a settled call would
            logger.exception("kavach: could not count an unmetered call on the ledger")
            return
        self._check_thresholds(plan, amounts, after)

    async def _acount_unmetered(self, plan: Plan, run_id: str) -> None:
        """``_count_unmetered``, awaiting the ledger."""
        try:
            held = await self.ledger.areserve(plan.lines, 0, 0)
        except KavachError:
            raise
        except Exception as exc:
            raise _ledger_unavailable(exc) from exc
        if not isinstance(held, Hold):
            raise refusal_error(plan, held, run_id, self.mode)
        amounts = (1,) * len(plan.lines)
        try:
            after = await self.ledger.asettle(held, amounts)
        except Exception:
            logger.exception("kavach: could not count an unmetered call on the ledger")
            return
        self._check_thresholds(plan, amounts, after)

    def check_stopped(self, spec: CallSpec) -> None:
        """Raise ``AgentKilledError`` (reported as a refusal of ``spec``) while the agent is
        stopped. For a session whose calls are held one by one later (a WebSocket): it is
        not opened for an agent that may make no call."""
        if self.enabled and self.kill_switch.reason is not None:
            run_id = spec.run_id or _current_run.get() or self._session_run
            self._refuse_if_stopped(spec, run_id, self._clock(), 0.0)

    def _refuse_if_stopped(
        self, spec: CallSpec, run_id: str, now: datetime | None, wall: float
    ) -> None:
        """Raise AgentKilledError (reported as a refusal) while the agent is stopped; a
        budget stop whose period has reset is lifted instead. ``now`` is None when the guard
        reads ``time.time()`` (``wall``) rather than a clock of the user's."""
        try:
            lifted = self.kill_switch.check(now or _utc(wall))
        except AgentKilledError as exc:
            self._refused(spec, run_id, now or _utc(wall), exc)
            raise
        if lifted:
            self._resumed_at_reset()

    def set_remote_budgets(self, budgets: Sequence[Budget]) -> None:
        """Enforce budgets set in the dashboard next to the ones given in code.

        Called by the control channel when a budget changes; takes effect on the next call.
        """
        self._has_run_slots = self._has_run_slots or any(
            b.period is Period.PER_RUN for b in budgets
        )
        self._remote_budgets = tuple(budgets)
        self._apply_budgets()

    def _apply_budgets(self) -> None:
        """Set ``budgets``: the code's and the dashboard's, each emitting the thresholds the
        alert rules fire at (a rule may fire at one the budget does not list)."""
        budgets = self._code_budgets + self._remote_budgets
        extra = self._alert_thresholds
        if extra:
            budgets = tuple(
                replace(b, thresholds=tuple(sorted(set(b.thresholds) | extra))) for b in budgets
            )
        self.budgets = budgets

    def _slots(self, run_id: str, now: datetime) -> tuple[Slot, ...]:
        # Period keys change only when a period resets: compute them once per period.
        budgets = self.budgets
        cache = self._slot_cache
        if cache is None or cache[0] is not budgets or (cache[2] is not None and now >= cache[2]):
            slots, until = period_slots(self.agent_name, budgets, now)
            until_wall = math.inf if until is None else _posix(until)
            cache = self._slot_cache = (budgets, slots, until, until_wall)
        if not self._has_run_slots:
            return cache[1]
        return cache[1] + run_slots(self.agent_name, run_id, budgets, self.guardrail_config)

    def _admit(self, r: Reservation, result: Hold | Refusal) -> Reservation:
        if type(result) is not Hold:
            assert isinstance(result, Refusal) and r.plan is not None
            self._not_held(r)
            error = refusal_error(r.plan, result, r.run_id, self.mode)
            if isinstance(error, GuardrailError):
                self._guardrail_tripped(r.spec, r.run_id, r.started_at, error)
            else:
                self._refused(r.spec, r.run_id, r.started_at, error)
            raise error
        r.hold = result
        if self._context_hook is not None:
            r.trace_context = self._context_hook()
        return r

    def _ledger_down(self, r: Reservation, exc: Exception) -> LedgerUnavailableError:
        error = _ledger_unavailable(exc)
        self._not_held(r)
        self._refused(r.spec, r.run_id, r.started_at, error)
        return error

    # -- settle (called by Reservation) -------------------------------------------------

    def _amounts(self, r: Reservation, usage: Usage) -> tuple[tuple[int, ...], int]:
        plan = r.plan
        if plan is None:
            return (), 0
        served = usage.price_variant
        if r.spec.price_variant is None:  # the tier was left to the account: this answer tells
            served = self._tiers.served(r.spec, served)
        if served is not None and served != r.variant:
            self._priced_as_served(r, served)
        cost = r.price.cost(usage)  # type: ignore[union-attr]  # a plan always has a price
        if len(plan.slots) == 1 and plan.slots[0].info.unit == "usd":
            return (cost,), cost  # one dollar budget, as most guards have
        return actual_amounts(plan, usage, cost), cost

    def _priced_as_served(self, r: Reservation, served: PriceVariant) -> None:
        """Price ``r`` at the tier the provider served it at, not the one it was reserved at.

        A request that left the tier to the account (OpenAI's ``auto``) has taught the guard
        that account's default (``_amounts``): the next such calls are reserved at it, so a
        project whose default is priority is not held at standard prices, half of what it
        pays."""
        spec = r.spec
        r.price = self.pricing.resolve_at(spec.provider, spec.model, r.wall or time.time(), served)
        r.variant = served

    def _ledger_release(self, r: Reservation) -> None:
        if r.hold is None:
            return
        try:
            self.ledger.release(r.hold)
        except Exception:
            logger.exception("kavach: could not release %s on the ledger", r)

    async def _aledger_release(self, r: Reservation) -> None:
        if r.hold is None:
            return
        try:
            await self.ledger.arelease(r.hold)
        except Exception:
            logger.exception("kavach: could not release %s on the ledger", r)

    def _settled(
        self,
        r: Reservation,
        usage: Usage,
        cost: int,
        amounts: tuple[int, ...],
        after: tuple[int, ...],
        status: CallStatus,
        response_model: str | None,
        finish_reasons: Sequence[str],
        tool_calls: Sequence[str],
        error: str | None,
    ) -> CallEvent | None:
        if r.plan is None:
            return None
        guardrails = self.guardrails
        if guardrails.records_spend:
            plan = r.plan
            guardrails.record(
                r.run_id, cost, tuple(tool_calls), in_flight=plan.worst_case(plan.max_units)
            )
        elif tool_calls:
            guardrails.record(r.run_id, cost, tuple(tool_calls))
        event = None
        if self._call_observers:  # events are built only for someone who listens
            event = self._event(
                r,
                status,
                usage,
                cost,
                error,
                response_model,
                tuple(finish_reasons),
                tuple(tool_calls),
            )
            self._emit("on_call", event)
        if after:
            self._check_thresholds(r.plan, amounts, after)
        return event

    def _not_held(self, r: Reservation) -> None:
        """Undo what the guardrails counted for a call that will not spend: refused after
        its checks, or released unbilled (a provider error, a cancellation: retrying the
        request is not a loop)."""
        guardrails = self.guardrails
        guardrails.forget_request(r.run_id, r.fingerprint)
        if guardrails.records_spend and r.plan is not None:
            guardrails.end_spend(r.plan.worst_case(r.plan.max_units))
        if r.spec.price_variant is None:
            self._tiers.unanswered(r.spec)

    def _released(self, r: Reservation, status: CallStatus, error: str | None) -> CallEvent | None:
        self._not_held(r)
        if r.plan is None or not self._call_observers:
            return None
        event = self._event(r, status, ZERO_USAGE, 0, error, None, (), ())
        self._emit("on_call", event)
        return event

    def _check_thresholds(
        self, plan: Plan, amounts: tuple[int, ...], after: tuple[int, ...]
    ) -> None:
        # Each settle moves spent over a disjoint interval (before, after], so a threshold
        # is crossed by exactly one settle, across threads and (with Redis) processes.
        i = -1
        for slot in plan.slots:
            i += 1
            amount = amounts[i]
            if amount <= 0:
                continue
            spent = after[i]
            before = spent - amount
            marks = slot.marks
            first = bisect_right(marks, before)  # the first mark above the spend before
            if (
                slot.limit > 0
                and not before < slot.limit <= spent
                and (first == len(marks) or marks[first] > spent)
            ):
                continue  # no threshold crossed and the limit not reached: most calls
            info = slot.info
            if info.kind != "budget":
                continue
            crossed = crossed_thresholds(slot, before, spent)
            if crossed:
                now = self._clock()
                for threshold in crossed:
                    self._emit(
                        "on_threshold",
                        ThresholdCrossing(
                            agent=self.agent_name,
                            budget=info.label,
                            budget_key=slot.key,
                            unit=info.unit,
                            period=info.period,
                            period_id=info.period_id,
                            threshold=threshold,
                            spent=spent,
                            limit=slot.limit,
                            resets_at=info.resets_at,
                            at=now,
                        ),
                    )
            if before < slot.limit <= spent and info.period != Period.PER_RUN.value:
                self.kill(f"{info.label} budget reached 100%", until=info.resets_at)

    # -- events -------------------------------------------------------------------------

    def _event(
        self,
        r: Reservation,
        status: CallStatus,
        usage: Usage,
        cost: int,
        error: str | None,
        response_model: str | None,
        finish_reasons: tuple[str, ...],
        tool_calls: tuple[str, ...],
        refusal_reason: str | None = None,
    ) -> CallEvent:
        spec = r.spec
        return CallEvent(
            id=f"{self._id_prefix}{next(self._ids):012x}",
            agent=self.agent_name,
            run_id=r.run_id,
            provider=spec.provider,
            model=spec.model,
            operation=spec.operation,
            status=status,
            started_at=r.started_at,
            duration_ms=(time.perf_counter() - r.started) * 1000.0,
            usage=usage,
            cost_nanos=cost,
            reserved_nanos=r.reserved_nanos,
            refusal_reason=refusal_reason,
            error=error,
            prompt=_prompt_text(spec) if self.save_prompts else None,
            response_model=response_model,
            finish_reasons=finish_reasons,
            max_output_tokens=r.max_output_tokens,
            tool_calls=tool_calls,
            tags=dict(spec.tags),
            price_tier=tier_name(r.variant),
            trace_context=r.trace_context,
        )

    def _refused(self, spec: CallSpec, run_id: str, now: datetime, exc: KavachError) -> None:
        if not self._call_observers:
            return
        r = Reservation(self, spec, None, None, None, run_id, None, now)
        if self._context_hook is not None:
            r.trace_context = self._context_hook()
        self._emit(
            "on_call",
            self._event(
                r, "refused", ZERO_USAGE, 0, str(exc), None, (), (), refusal_reason=exc.reason
            ),
        )

    def _guardrail_tripped(
        self, spec: CallSpec, run_id: str, now: datetime, exc: GuardrailError
    ) -> None:
        self._refused(spec, run_id, now, exc)
        self._emit(
            "on_guardrail", GuardrailTrip(self.agent_name, run_id, exc.reason, str(exc), now)
        )
        if self.kill_on_guardrail:
            self.kill(f"guardrail {exc.reason}: {exc}")

    # -- provider clients (kavach_integrations, imported on first use) ----------------------

    def wrap(self, client: _C) -> _C:
        """Guard every billable call made through a provider SDK client; returns the client.

        >>> client = guard.wrap(OpenAI())     # doctest: +SKIP
        """
        from kavach_integrations._provider import wrap

        return wrap(client, self)

    @property
    def clients(self) -> Any:
        """The ``ProviderClients`` built from ``provider=``/``llm_key=`` (made on first use)."""
        if self._clients is None:
            if self._provider is None:
                raise KavachConfigError(
                    "this guard has no provider: pass AgentKavach(provider='openai', "
                    "llm_key=...) to call through it, or wrap your own client with guard.wrap()"
                )
            from kavach_integrations.clients import ProviderClients

            self._clients = ProviderClients(self, *self._provider)
        return self._clients

    def create(self, **kwargs: Any) -> Any:
        """A guarded chat call in the provider's own API; returns the SDK's response."""
        return self.clients.create(**kwargs)

    async def acreate(self, **kwargs: Any) -> Any:
        return await self.clients.acreate(**kwargs)

    @property
    def chat(self) -> Any:
        return self.clients.path("chat")

    @property
    def responses(self) -> Any:
        return self.clients.path("responses")

    @property
    def messages(self) -> Any:
        return self.clients.path("messages")

    @property
    def models(self) -> Any:
        return self.clients.path("models")

    @property
    def embeddings(self) -> Any:
        return self.clients.path("embeddings")

    # -- seeding ------------------------------------------------------------------------

    def seed(self, spent_by_key: Mapping[str, int]) -> None:
        """Raise each ledger key's spent to at least the given amount (never lowers it).

        For spend recorded elsewhere (the backend's view of the period, a state file), so a
        restarted guard does not hand out a fresh budget. Idempotent: seeding twice with the
        same figures adds nothing. Keys are ledger keys (``BudgetStatus.key``); amounts are
        in the budget's unit (nano-dollars for cost).
        """
        now = self._clock()
        ttls: dict[str, int | None] = {}
        for budget in self.budgets:
            key, resets_at = budget.key(self.agent_name, now, self.current_run)
            ttls[key] = _ttl(now, resets_at, budget.period)
        for key, amount in spent_by_key.items():
            missing = int(amount) - self.ledger.read(key).spent
            if missing > 0:
                self.ledger.add_spent(key, missing, ttls.get(key))

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[BudgetStatus]:
        """Each budget's spent, reserved and limit right now (this agent's view): the
        budgets that reset by period, in the order given, then the per-run ones.

        Read from the same slots calls are reserved on, so budgets on one ledger key are one
        entry, with the limit and reset that are enforced (the smaller and the earlier).
        """
        out = []
        for slot in self._slots(self.current_run, self._clock()):
            info = slot.info
            if info.kind != "budget":  # the per-run token and call guardrails
                continue
            balance = self.ledger.read(slot.key)
            out.append(
                BudgetStatus(
                    label=info.label,
                    unit=info.unit,
                    key=slot.key,
                    spent=balance.spent,
                    reserved=balance.reserved,
                    limit=slot.limit,
                    period=info.period,
                    period_id=info.period_id,
                    resets_at=info.resets_at,
                )
            )
        return out

    def _primary(self) -> BudgetStatus | None:
        statuses = [s for s in self.status() if s.unit == "usd"]
        for s in statuses:
            if not s.key.startswith(("shared:", "org:")):
                return s
        return statuses[0] if statuses else None

    @property
    def spent(self) -> float:
        """Dollars spent in the current period of the guard's (first cost) budget."""
        primary = self._primary()
        return to_dollars(primary.spent) if primary else 0.0

    @property
    def remaining(self) -> float | None:
        """Dollars left in the current period of the guard's budget (``None`` without one)."""
        primary = self._primary()
        return to_dollars(primary.remaining) if primary else None

    def __repr__(self) -> str:
        budgets = ", ".join(b.label for b in self.budgets) or "no budget"
        return f"<AgentKavach agent={self.agent_name!r} mode={self.mode} budgets=[{budgets}]>"


@dataclass(frozen=True, slots=True)
class _ProviderConfig:
    provider: str
    llm_key: str | None = field(default=None, repr=False)
    base_url: str | None = None

    def __post_init__(self) -> None:
        if self.provider not in ("openai", "anthropic", "google", "mistral"):
            raise KavachConfigError(
                f"provider must be one of openai, anthropic, google, mistral, got {self.provider!r}"
            )

    def __iter__(self) -> Iterator[str | None]:
        return iter((self.provider, self.llm_key, self.base_url))


def wrap(client: _C, guard: AgentKavach) -> _C:
    """``guard.wrap(client)``: guard every billable call of a provider SDK client."""
    return guard.wrap(client)


def _utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


def _listens_to_calls(observer: GuardObserver) -> bool:
    return getattr(type(observer), "on_call", None) is not NullObserver.on_call


def _fingerprint(spec: CallSpec, content: int | None = None) -> int:
    """A hash of what the call sends, equal for identical requests (loop detection).

    ``content`` is the hash of ``spec.messages`` taken while counting their tokens, when
    they are plain chat messages; the history is then not hashed a second time.
    """
    messages, prompt, system, tools = spec.messages, spec.prompt, spec.system, spec.tools
    beside = (spec.context_tokens, spec.request_key)  # context and content not in messages
    if content is not None and prompt is None and system is None:
        return hash((spec.model, content, None if tools is None else _content_hash(tools), beside))
    return hash(
        (
            spec.model,
            None if messages is None else _content_hash(messages),
            None if prompt is None else _content_hash(prompt),
            None if system is None else _content_hash(system),
            None if tools is None else _content_hash(tools),
            beside,
        )
    )


def _ledger_unavailable(exc: Exception) -> LedgerUnavailableError:
    return LedgerUnavailableError(
        f"the ledger could not be reached ({type(exc).__name__}: {exc}); the call was refused "
        "so no budget can be broken. Fix the ledger connection, or choose fail-open "
        "explicitly on the ledger"
    )


_PLAIN = frozenset((str, int, float, bool, type(None)))
_FREE = ModelPrice(input_per_mtok=0, output_per_mtok=0).compile()
"""The price an unmetered call is planned at: it holds nothing but a call."""


@dataclass(frozen=True, slots=True)
class _UnmeteredCount:
    """An unmetered call checked and about to be counted (``admit_unmetered``)."""

    run_id: str
    fingerprint: int | None
    plan: Plan
    """The ledger lines that count calls, one call each."""


def _content_hash(value: object) -> int:
    # A plain message dict hashes through its strings, whose hashes Python caches, so a
    # long history costs a few operations per message rather than its length. Anything
    # else hashes its repr, which is content-based for dicts, lists and pydantic models.
    # A value that hashes by identity (a custom object) only makes repeats look distinct.
    if type(value) is list or type(value) is tuple:
        parts = []
        for item in value:
            if type(item) is dict:
                try:
                    parts.append(hash(tuple(item.items())))
                    continue
                except TypeError:  # a list or dict value: content parts, tool calls
                    pass
            parts.append(hash(repr(item)))
        return hash(tuple(parts))
    if type(value) in _PLAIN:
        return hash(value)
    return hash(repr(value))


def _prompt_text(spec: CallSpec) -> str | None:
    parts: list[str] = []
    if spec.system is not None:
        parts.append(f"system: {spec.system}")
    if spec.messages is not None:
        for message in spec.messages:
            if isinstance(message, Mapping):
                content = message.get("content")
                if content is None:  # Gemini contents carry their text in parts
                    content = message.get("parts")
                parts.append(f"{message.get('role', '?')}: {_text_of(content)}")
            else:  # a plain string, or an SDK object (google-genai Content)
                role = getattr(message, "role", None)
                text = _text_of(message)
                parts.append(f"{role}: {text}" if isinstance(role, str) else text)
    if spec.prompt is not None:
        parts.append(_text_of(spec.prompt))
    text = "\n".join(parts)
    return text[:_PROMPT_CAP] if text else None


def _text_of(content: Any) -> str:
    """The text in a message's content: a string, text blocks or parts (OpenAI, Anthropic,
    Gemini), with other blocks (images, audio, files) and token ids named, not dumped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, bytes | bytearray):
        return "[bytes]"
    if isinstance(content, Sequence):
        if content and all(isinstance(item, int) for item in content):
            return f"[{len(content)} token ids]"
        return "\n".join(t for t in (_text_of(item) for item in content) if t)
    text = content.get("text") if isinstance(content, Mapping) else getattr(content, "text", None)
    if isinstance(text, str):
        return text
    if isinstance(content, Mapping):
        kind = content.get("type")
        return f"[{kind}]" if isinstance(kind, str) else ""
    parts = getattr(content, "parts", None)  # a google-genai Content object
    if parts is not None:
        return _text_of(parts)
    return f"[{type(content).__name__}]"


def backend_endpoint(endpoint: str | None) -> str:
    """The backend URL for an api_key: ``endpoint``, else AGENTKAVACH_BACKEND_URL."""
    endpoint = endpoint or os.environ.get("AGENTKAVACH_BACKEND_URL")
    if not endpoint:
        raise KavachConfigError(
            "api_key is set but no backend endpoint: pass endpoint='https://your-backend' "
            "or set AGENTKAVACH_BACKEND_URL (budgets are enforced locally either way)"
        )
    return endpoint


def check_ledger_url(url: str) -> None:
    """Raise KavachConfigError unless ``url`` is a Redis URL a ledger can be built from."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise KavachConfigError(
            f"ledger must be a Ledger or a redis:// URL, got {url.split('@')[-1]!r}"
        )


def _resolve_ledger(
    ledger: Ledger | str | None, state_file: str | os.PathLike[str] | None
) -> Ledger:
    if ledger is None:
        url = os.environ.get("AGENTKAVACH_REDIS_URL", "").strip()
        ledger = url or None
    if isinstance(ledger, str):
        if state_file is not None:
            raise KavachConfigError(
                "state_file keeps the in-process ledger's spend; a Redis ledger already "
                "survives restarts, drop one of them"
            )
        check_ledger_url(ledger)
        from kavach.ledger.redis import RedisLedger

        return RedisLedger(ledger)
    if state_file is not None:
        if ledger is not None:
            raise KavachConfigError("state_file applies to the default in-process ledger only")
        from kavach.ledger.statefile import PersistentMemoryLedger

        return PersistentMemoryLedger(state_file)
    return ledger if ledger is not None else MemoryLedger()


def _add_ledger_closer(guard: AgentKavach, ledger: Ledger) -> None:
    close = getattr(ledger, "close", None)
    if close is None:
        return
    aclose = getattr(ledger, "aclose", None)

    async def aclose_ledger(_timeout: float) -> None:
        assert aclose is not None
        await aclose()

    guard.add_closer(lambda _timeout: close(), aclose_ledger if aclose is not None else None)
