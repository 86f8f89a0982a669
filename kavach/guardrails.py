"""Runaway-agent guardrails: runtime, loops and spend velocity, checked before each call.

Token and call limits per run are enforced by the ledger as per-run lines (so they hold
atomically under concurrency, like budgets); this module keeps the state the others need.
All checks are in-memory and take a lock for microseconds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from kavach._money import fmt_usd
from kavach.errors import (
    GuardrailError,
    KavachConfigError,
    LoopDetectedError,
    RuntimeLimitError,
    VelocityError,
)

_MAX_TRACKED_RUNS = 10_000
_MAX_CYCLE = 4
# Distinct requests remembered per run for loop detection (the latest 1,024 to 2,048): a loop
# repeats within far fewer.
_MAX_FINGERPRINTS = 1024


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """Limits on one agent's behaviour. ``None`` turns a limit off. Money in nano-dollars."""

    max_tokens_per_run: int | None = None
    max_calls_per_run: int | None = None
    max_runtime_seconds: float | None = None
    max_cost_per_call: int | None = None
    detect_loops: bool = True
    loop_threshold: int = 5
    """The N-th identical request in a run, or a tool-call cycle repeated N times, is refused."""
    max_spend_per_minute: int | None = None
    velocity_window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.loop_threshold < 2:
            raise KavachConfigError(f"loop_threshold must be at least 2, got {self.loop_threshold}")
        for name in ("max_tokens_per_run", "max_calls_per_run", "max_cost_per_call"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise KavachConfigError(f"{name} must be positive, got {value}")
        if self.max_runtime_seconds is not None and self.max_runtime_seconds <= 0:
            raise KavachConfigError("max_runtime_seconds must be positive")
        if self.velocity_window_seconds <= 0:
            raise KavachConfigError("velocity_window_seconds must be positive")


@dataclass(slots=True)
class _RunState:
    started: float
    requests: dict[int, int] = field(default_factory=dict)
    older: dict[int, int] = field(default_factory=dict)
    """The previous generation of ``requests``: a full generation becomes this one and a new
    one starts, so memory stays bounded at O(1) a call (evicting the oldest key of a dict one
    by one makes each eviction scan the ones deleted before it)."""
    tool_calls: deque[str] = field(default_factory=lambda: deque(maxlen=64))
    cycle: tuple[str, ...] | None = None
    """The tool-call cycle the run is stuck in, found when tool calls are recorded."""


def find_cycle(history: deque[str] | list[str], repeats: int) -> tuple[str, ...] | None:
    """The tool-call cycle that the end of ``history`` repeats ``repeats`` times, if any.

    >>> find_cycle(["search", "read", "search", "read", "search", "read"], 3)
    ('search', 'read')
    """
    items = list(history)
    for length in range(1, _MAX_CYCLE + 1):
        span = length * repeats
        if span > len(items):
            break
        tail = items[-span:]
        cycle = tail[:length]
        if all(tail[i] == cycle[i % length] for i in range(span)):
            return tuple(cycle)
    return None


class Guardrails:
    """Per-run state and the checks made before a call is reserved."""

    def __init__(self, config: GuardrailConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, _RunState] = OrderedDict()
        self._spend: deque[tuple[float, int]] = deque()
        self._spend_sum = 0
        self._in_flight = 0
        """The worst cases of admitted calls not yet settled (for the velocity limit)."""
        self.records_spend = config.max_spend_per_minute is not None
        """Whether ``record`` keeps settled spend (for the velocity limit)."""
        # Whether any limit is checked before a call: most guards set none of them.
        self._checks = config.max_runtime_seconds is not None or config.detect_loops

    def start_run(self, run_id: str, now: float | None = None) -> None:
        with self._lock:
            self._run(run_id, time.monotonic() if now is None else now)

    def check(self, run_id: str, fingerprint: int | None, now: float | None = None) -> None:
        """Raise the GuardrailError for the first limit this call would break."""
        if not self._checks:
            return
        cfg = self.config
        now = time.monotonic() if now is None else now
        with self._lock:
            run = self._runs.get(run_id)  # _run, inlined: this runs on every call
            if run is None:
                run = self._run(run_id, now)
            else:
                self._runs.move_to_end(run_id)
            if cfg.max_runtime_seconds is not None:
                elapsed = now - run.started
                if elapsed > cfg.max_runtime_seconds:
                    raise RuntimeLimitError(
                        f"run {run_id!r} has run for {elapsed:.1f}s, over max_runtime_seconds="
                        f"{cfg.max_runtime_seconds:g}; start a new run or raise the limit",
                        limit=cfg.max_runtime_seconds,
                        observed=elapsed,
                    )
            if cfg.detect_loops:
                cycle = run.cycle
                if cycle is not None:
                    raise LoopDetectedError(
                        f"run {run_id!r} repeated the tool-call cycle {' -> '.join(cycle)} "
                        f"{cfg.loop_threshold} times in a row; the agent looks stuck. Fix the "
                        "prompt or tools, or raise loop_threshold",
                        limit=cfg.loop_threshold,
                        observed=cfg.loop_threshold,
                    )
                if fingerprint is not None:
                    requests = run.requests
                    seen = requests.get(fingerprint)
                    if seen is None:
                        seen = run.older.get(fingerprint, 0)
                    seen += 1
                    if seen >= cfg.loop_threshold:
                        raise LoopDetectedError(
                            f"run {run_id!r} sent the same request {seen} times "
                            f"(loop_threshold={cfg.loop_threshold}); the agent looks stuck in a "
                            "loop. Change the request, start a new run, or raise loop_threshold",
                            limit=cfg.loop_threshold,
                            observed=seen,
                        )
                    if len(requests) >= _MAX_FINGERPRINTS and fingerprint not in requests:
                        run.older = requests  # a long run must not grow forever
                        requests = run.requests = {}
                    requests[fingerprint] = seen

    def admit_spend(self, worst_case: int, now: float | None = None) -> None:
        """The velocity limit, once the call's worst case is known: refuse when the spend
        settled in the window plus what calls in flight may still spend has reached the
        allowance; else count this call's ``worst_case`` in flight until it settles.

        Checked and counted under one lock, so concurrent calls cannot all pass on spend
        not yet settled: the window ends at most one call's worst case past its allowance.
        """
        cfg = self.config
        if cfg.max_spend_per_minute is None:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire_spend(now)
            window = cfg.velocity_window_seconds
            allowed = cfg.max_spend_per_minute * window / 60.0
            spent, in_flight = self._spend_sum, self._in_flight
            if spent + in_flight >= allowed:
                held = f" (+ {fmt_usd(in_flight)} held by calls in flight)" if in_flight else ""
                raise VelocityError(
                    f"spent {fmt_usd(spent)}{held} in the last {window:g}s, over the velocity "
                    f"limit of {fmt_usd(cfg.max_spend_per_minute)}/minute; wait for spend to "
                    "slow or raise max_spend_per_minute",
                    limit=cfg.max_spend_per_minute,
                    observed=spent + in_flight,
                )
            self._in_flight = in_flight + worst_case

    def end_spend(self, worst_case: int) -> None:
        """A call counted by ``admit_spend`` ended without spending (released, refused)."""
        if self.config.max_spend_per_minute is not None:
            with self._lock:
                self._in_flight -= worst_case

    def forget_request(self, run_id: str, fingerprint: int | None) -> None:
        """Undo the count of a request that was refused after its check (e.g. by a budget)."""
        if fingerprint is None:
            return
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return
            for requests in (run.requests, run.older):
                seen = requests.get(fingerprint)
                if seen is not None:
                    if seen > 0:
                        requests[fingerprint] = seen - 1
                    return

    def record(
        self,
        run_id: str,
        cost_nanos: int,
        tool_calls: tuple[str, ...],
        now: float | None = None,
        in_flight: int = 0,
    ) -> None:
        """Record a settled call's cost (for velocity; ``in_flight``: the worst case
        ``admit_spend`` counted for it) and tool calls (for cycles)."""
        velocity = self.config.max_spend_per_minute is not None
        if not tool_calls and not velocity:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            if tool_calls:
                run = self._run(run_id, now)
                run.tool_calls.extend(tool_calls)
                if self.config.detect_loops:
                    run.cycle = find_cycle(run.tool_calls, self.config.loop_threshold)
            if velocity:
                self._in_flight -= in_flight
                if cost_nanos:
                    self._spend.append((now, cost_nanos))
                    self._spend_sum += cost_nanos

    def _run(self, run_id: str, now: float) -> _RunState:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _RunState(started=now)
            if len(self._runs) > _MAX_TRACKED_RUNS:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(run_id)
        return run

    def _expire_spend(self, now: float) -> None:
        horizon = now - self.config.velocity_window_seconds
        while self._spend and self._spend[0][0] < horizon:
            self._spend_sum -= self._spend.popleft()[1]


__all__ = ["GuardrailConfig", "GuardrailError", "Guardrails", "find_cycle"]
