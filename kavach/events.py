"""What the guard tells the rest of the system: settled calls, refusals, threshold crossings, kills.

Observers (alerts, telemetry, the backend reporter) receive these values synchronously
on the call path, so an observer must only hand them off (enqueue) and return.
An observer that raises is logged and ignored: reporting fails open, enforcement does not
depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from kavach._values import fast_init
from kavach.ledger.base import HoldReclaimed
from kavach.usage import Usage

CallStatus = Literal["ok", "error", "refused", "cut", "cancelled"]


@fast_init
@dataclass(frozen=True)
class CallEvent:
    """One guarded call, settled or refused. Money in nano-dollars."""

    id: str
    """Unique per call; the backend's idempotency key."""
    agent: str
    run_id: str
    provider: str
    model: str
    operation: str
    status: CallStatus
    started_at: datetime
    duration_ms: float
    usage: Usage
    cost_nanos: int
    reserved_nanos: int
    refusal_reason: str | None = None
    error: str | None = None
    prompt: str | None = None
    """Prompt text, only when the guard was built with ``save_prompts=True``."""
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    max_output_tokens: int | None = None
    tool_calls: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    price_tier: str | None = None
    """The provider's price tier the call was charged at (``"priority"``, ``"flex"``,
    Anthropic's ``"fast"``); ``None`` for the standard price."""
    trace_context: object | None = field(default=None, repr=False, compare=False)
    """The caller's OpenTelemetry context at reserve time (only with telemetry on)."""


@dataclass(frozen=True, slots=True)
class ThresholdCrossing:
    """A budget passed one of its thresholds (once per budget, period and threshold)."""

    agent: str
    budget: str
    """The budget's label, e.g. ``daily``, ``shared:team daily``, ``org monthly``."""
    budget_key: str
    """The ledger key, e.g. ``agent:bot:daily:2026-11-28``."""
    unit: str
    """``usd`` (amounts in nano-dollars), ``tokens`` or ``calls``."""
    period: str
    period_id: str
    threshold: float
    spent: int
    limit: int
    resets_at: datetime | None
    at: datetime


@dataclass(frozen=True, slots=True)
class GuardrailTrip:
    """A guardrail refused a call."""

    agent: str
    run_id: str
    guardrail: str
    message: str
    at: datetime


class GuardObserver(Protocol):
    """Receives the guard's events. Implement only what you need on top of ``NullObserver``."""

    def on_call(self, event: CallEvent) -> None: ...

    def on_threshold(self, crossing: ThresholdCrossing) -> None: ...

    def on_guardrail(self, trip: GuardrailTrip) -> None: ...

    def on_kill(self, agent: str, reason: str) -> None: ...

    def on_resume(self, agent: str) -> None: ...


class NullObserver:
    """An observer that ignores everything; subclass it and override what you need."""

    def on_call(self, event: CallEvent) -> None:
        return None

    def on_threshold(self, crossing: ThresholdCrossing) -> None:
        return None

    def on_guardrail(self, trip: GuardrailTrip) -> None:
        return None

    def on_kill(self, agent: str, reason: str) -> None:
        return None

    def on_resume(self, agent: str) -> None:
        return None

    def on_reclaim(self, reclaimed: HoldReclaimed) -> None:
        """Optional hook (the guard skips observers without it): a ledger reclaimed an
        expired hold, e.g. one left by a process that died mid-call (Redis ledger)."""
        return None
