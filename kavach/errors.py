"""Errors raised by kavach. Every one says what was exceeded, by how much, and what to change.

::

    KavachError
    ├── BudgetExceededError        a budget (cost, tokens or calls) cannot pay for the call
    ├── AgentKilledError           the kill switch is on (budget at 100%, guardrail trip, guard.kill)
    ├── GuardrailError             a runaway-agent guardrail refused the call
    │   ├── TokenLimitError        max_tokens_per_run
    │   ├── CallLimitError         max_calls_per_run
    │   ├── RuntimeLimitError      max_runtime_seconds
    │   ├── CostPerCallError       max_cost_per_call
    │   ├── LoopDetectedError      the same request or tool-call cycle repeated
    │   └── VelocityError          spend per minute over the limit
    ├── UnknownModelPriceError     no price for the model; enforcement fails closed
    ├── UnmeteredCallError         a paid call the guard cannot meter, with unmetered="refuse"
    ├── LedgerUnavailableError     the ledger (e.g. Redis) cannot be reached; fails closed
    ├── KavachConfigError          bad configuration (also a ValueError)
    └── MissingDependencyError     an optional integration's extra is not installed (also an ImportError)

Refusals (``BudgetExceededError``, ``AgentKilledError``, ``GuardrailError``) are raised
before any request leaves the process. Each has a stable ``reason`` code that appears in
events, telemetry and the dashboard.
"""

from __future__ import annotations

from datetime import datetime

from kavach._money import fmt_usd

__all__ = [
    "AgentKilledError",
    "BudgetExceededError",
    "CallLimitError",
    "CostPerCallError",
    "GuardrailError",
    "KavachConfigError",
    "KavachError",
    "LedgerUnavailableError",
    "LoopDetectedError",
    "MissingDependencyError",
    "RuntimeLimitError",
    "TokenLimitError",
    "UnknownModelPriceError",
    "UnmeteredCallError",
    "VelocityError",
]


class KavachError(Exception):
    """Root of every error kavach raises."""

    reason: str = "error"


class BudgetExceededError(KavachError):
    """A budget cannot pay for the call (or a stream ran into its limit).

    Attributes give the numbers: ``budget`` (its label), ``unit`` (``usd``, ``tokens``,
    ``calls``), ``spent``, ``reserved``, ``limit`` and ``requested`` in that unit (cost in
    nano-dollars), ``period`` and ``resets_at``.
    """

    reason = "budget_exceeded"

    def __init__(
        self,
        *,
        budget: str,
        unit: str,
        spent: int,
        reserved: int,
        limit: int,
        requested: int,
        period: str,
        resets_at: datetime | None,
        detail: str = "",
        message: str | None = None,
    ) -> None:
        self.budget = budget
        self.unit = unit
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.requested = requested
        self.period = period
        self.resets_at = resets_at
        if message is not None:  # not about a budget's period: see for_one_call
            super().__init__(message)
            return
        fmt = fmt_usd if unit == "usd" else (lambda n: f"{n:,} {unit}")
        over = spent + reserved + requested - limit
        # Waiting helps only for a reset, or for calls in flight to give back their holds.
        if resets_at is not None:
            when = f"It resets at {resets_at:%Y-%m-%d %H:%M} UTC; raise the limit, "
            advice = "lower max output tokens, or wait."
        else:
            when = (
                "It lasts this run; start a new run, raise the limit"
                if period.startswith("run ")
                else "It does not reset; raise the limit"
            )
            advice = (
                ", lower max output tokens, or wait for the calls in flight to settle."
                if reserved
                else " or lower max output tokens."
            )
        super().__init__(
            f"{budget} budget exceeded: spent {fmt(spent)}"
            + (f" + {fmt(reserved)} held by calls in flight" if reserved else "")
            + f" of {fmt(limit)} ({period}); this call needs up to {fmt(requested)}"
            + (f", {fmt(over)} over" if over > 0 else "")
            + f". {detail + ' ' if detail else ''}{when}{advice}"
        )

    @classmethod
    def for_one_call(
        cls, what: str, *, used: int, paid: int, requested: int, scope: str, detail: str
    ) -> BudgetExceededError:
        """A refusal about one call's output tokens rather than a budget's period: what the
        budget left pays for (``paid`` tokens) cannot cover what the call needs. The message
        is ``detail``, which says what to change: a period's "resets at" and "or wait" would
        mislead here."""
        return cls(
            message=f"Budget exceeded ({what}): {detail}",
            budget=what,
            unit="tokens",
            spent=used,
            reserved=0,
            limit=paid,
            requested=requested,
            period=scope,
            resets_at=None,
            detail=detail,
        )


class AgentKilledError(KavachError):
    """The agent's kill switch is on: no call is made until ``guard.resume()`` or the period resets."""

    reason = "killed"

    def __init__(self, agent: str, kill_reason: str) -> None:
        self.agent = agent
        self.kill_reason = kill_reason
        super().__init__(
            f"agent {agent!r} is stopped ({kill_reason}); call guard.resume() or press Resume "
            "in the dashboard to let calls through again"
        )


class GuardrailError(KavachError):
    """A guardrail refused the call before it was made."""

    reason = "guardrail"

    def __init__(self, message: str, *, limit: float | int, observed: float | int) -> None:
        self.limit = limit
        self.observed = observed
        super().__init__(message)


class TokenLimitError(GuardrailError):
    reason = "max_tokens_per_run"


class CallLimitError(GuardrailError):
    reason = "max_calls_per_run"


class RuntimeLimitError(GuardrailError):
    reason = "max_runtime"


class CostPerCallError(GuardrailError):
    reason = "max_cost_per_call"


class LoopDetectedError(GuardrailError):
    reason = "loop_detected"


class VelocityError(GuardrailError):
    reason = "velocity"


class UnknownModelPriceError(KavachError):
    """No price is known for a model, so the worst case of the call cannot be bounded."""

    reason = "unknown_model_price"

    def __init__(self, model: str, provider: str | None, detail: str = "") -> None:
        self.model = model
        self.provider = provider
        super().__init__(
            f"no price known for model {model!r}"
            + (f" (provider {provider!r})" if provider else "")
            + (f": {detail}" if detail else "")
            + "; the call was refused because its cost cannot be bounded. Add a price in "
            "dollars per million tokens, keyed by model name or 'provider/model', e.g. "
            f"AgentKavach(..., prices={{{model!r}: ModelPrice(input_per_mtok=1.0, "
            "output_per_mtok=4.0)}) (Pricing(overrides=...) when pricing directly), or allow "
            "unknown models with unknown_model_price=ModelPrice(...)"
        )


class UnmeteredCallError(KavachError):
    """A paid call the guard cannot meter (DALL·E, ``whisper-1``, batches, ...), refused
    because the guard was built with ``unmetered="refuse"``."""

    reason = "unmetered"

    def __init__(self, agent: str, provider: str, operation: str, model: str) -> None:
        self.provider = provider
        self.operation = operation
        self.model = model
        what = f"{provider} {operation}" + (f" call with model {model!r}" if model else " call")
        super().__init__(
            f"agent {agent!r} made a {what}, which the guard cannot meter, and was built with "
            "unmetered='refuse', so the call was not sent. Use a model billed by the token, "
            "or let such calls through uncounted with unmetered='allow'"
        )


class LedgerUnavailableError(KavachError):
    """The ledger cannot be reached; the call is refused (fail closed) unless fail-open was chosen."""

    reason = "ledger_unavailable"


class KavachConfigError(KavachError, ValueError):
    """Configuration is invalid; the message names the file, line and field where known."""

    reason = "config"


class MissingDependencyError(KavachError, ImportError):
    """An optional integration needs a package that is not installed."""

    reason = "missing_dependency"

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'agentkavach[{extra}]'"
        )
