"""The reservation lifecycle: reserve -> commit(usage) | release(), exactly once.

Every adapter (raw client wrapper, LangChain handler, LlamaIndex hook, stream wrapper)
drives this one object and adds nothing of its own to the accounting.

>>> with guard.reserve(spec) as r:                        # doctest: +SKIP
...     response = client.chat.completions.create(..., max_tokens=r.max_output_tokens)
...     r.commit(Usage(input_tokens=12, output_tokens=40))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING

from kavach.events import CallEvent, CallStatus
from kavach.usage import PriceVariant, Usage

logger = logging.getLogger("kavach")

if TYPE_CHECKING:
    from kavach.client import AgentKavach
    from kavach.engine import Plan
    from kavach.ledger.base import Hold
    from kavach.pricing import CompiledPrice
    from kavach.spec import CallSpec


class Reservation:
    """Budget held for one call. Settle it once with ``commit(usage)`` or ``release()``.

    ``max_output_tokens`` is what the call may produce: in strict mode the adapter sets the
    request's limit to it. Used as a context manager, an exception (or task cancellation)
    inside the block releases the hold; a block that ends without a commit releases too.
    """

    __slots__ = (
        "_claim",
        "_event",
        "_guard",
        "fingerprint",
        "hold",
        "plan",
        "price",
        "run_id",
        "spec",
        "started",
        "_started_at",
        "trace_context",
        "variant",
        "wall",
    )

    def __init__(
        self,
        guard: AgentKavach,
        spec: CallSpec,
        plan: Plan | None,
        hold: Hold | None,
        price: CompiledPrice | None,
        run_id: str,
        fingerprint: int | None,
        started_at: datetime | None,
        wall: float | None = None,
        variant: PriceVariant = (),
    ) -> None:
        self._guard = guard
        self.spec = spec
        self.plan = plan
        self.hold = hold
        self.price = price
        """The model's price this call is reserved and settled at (``None`` when disabled):
        at the tier the provider served it at once its usage says so."""
        self.variant = variant
        """The price variant (tier) ``price`` is for: ``()`` is the standard price."""
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.started = time.perf_counter()
        self._started_at = started_at
        self.wall = started_at.timestamp() if wall is None and started_at is not None else wall
        """When the call started, in seconds since the epoch (``started_at`` is made from it
        only when an event needs it: a datetime costs more than the rest of a clock read)."""
        # Settled once: the first settlement pops the token, atomically (one C call on a
        # list), and any later one finds it gone. A list costs less to make than a lock.
        self._claim = [True]
        self._event: CallEvent | None = None
        self.trace_context: object | None = None
        """The caller's trace context at reserve time, captured when telemetry is on."""

    # -- what the adapter reads ---------------------------------------------------------

    @property
    def started_at(self) -> datetime:
        """When the call started (UTC)."""
        if self._started_at is None:
            self._started_at = datetime.fromtimestamp(self.wall or 0.0, UTC)
        return self._started_at

    @property
    def max_output_tokens(self) -> int | None:
        """Output tokens this reservation pays for (``None`` when the guard is disabled)."""
        return self.hold.units if self.hold is not None else None

    @property
    def reserved_nanos(self) -> int:
        """The worst-case cost held, in nano-dollars."""
        if self.plan is None or self.hold is None:
            return 0
        return self.plan.worst_case(self.hold.units)

    @property
    def settled(self) -> bool:
        return not self._claim

    @property
    def event(self) -> CallEvent | None:
        """The call's event once settled."""
        return self._event

    def cost_of(self, usage: Usage) -> int:
        """What ``usage`` costs at this call's price, in nano-dollars."""
        return self.price.cost(usage) if self.price is not None else 0

    def exceeds(self, output_tokens: int) -> bool:
        """True once a stream has produced more output than this reservation pays for."""
        units = self.max_output_tokens
        return units is not None and output_tokens > units

    # -- settlement ---------------------------------------------------------------------

    def commit(
        self,
        usage: Usage,
        *,
        status: CallStatus = "ok",
        response_model: str | None = None,
        finish_reasons: Sequence[str] = (),
        tool_calls: Sequence[str] = (),
        error: str | None = None,
    ) -> CallEvent | None:
        """Settle with what the call actually used. A second settlement is a no-op."""
        # Priced before the claim: a bad ``usage`` raises with the hold still open, which
        # the block's exit (or a release) then gives back.
        amounts, cost = self._guard._amounts(self, usage)
        try:
            self._claim.pop()
        except IndexError:  # settled before
            return self._event
        after: tuple[int, ...] = ()
        if self.hold is not None:
            try:
                after = self._guard.ledger.settle(self.hold, amounts)
            except Exception:
                # The provider already billed this call: never raise into the caller's success.
                logger.exception(
                    "kavach: could not settle %s on the ledger; spend kept locally", self
                )
        self._event = self._guard._settled(
            self,
            usage,
            cost,
            amounts,
            after,
            status,
            response_model,
            finish_reasons,
            tool_calls,
            error,
        )
        return self._event

    async def acommit(
        self,
        usage: Usage,
        *,
        status: CallStatus = "ok",
        response_model: str | None = None,
        finish_reasons: Sequence[str] = (),
        tool_calls: Sequence[str] = (),
        error: str | None = None,
    ) -> CallEvent | None:
        """``commit`` for async code (awaits the ledger when it does I/O)."""
        amounts, cost = self._guard._amounts(self, usage)  # before the claim, as in commit
        try:
            self._claim.pop()
        except IndexError:  # settled before
            return self._event
        after: tuple[int, ...] = ()
        if self.hold is not None:
            try:
                ledger = self._guard.ledger
                if getattr(ledger, "in_process", False):  # no I/O: no coroutine to await
                    after = ledger.settle(self.hold, amounts)
                else:
                    after = await ledger.asettle(self.hold, amounts)
            except Exception:
                logger.exception(
                    "kavach: could not settle %s on the ledger; spend kept locally", self
                )
        self._event = self._guard._settled(
            self,
            usage,
            cost,
            amounts,
            after,
            status,
            response_model,
            finish_reasons,
            tool_calls,
            error,
        )
        return self._event

    def release(self, *, status: CallStatus = "error", error: str | None = None) -> None:
        """Give the hold back: the call failed before anything was billed."""
        try:
            self._claim.pop()
        except IndexError:  # settled before
            return
        self._guard._ledger_release(self)
        self._event = self._guard._released(self, status, error)

    async def arelease(self, *, status: CallStatus = "error", error: str | None = None) -> None:
        try:
            self._claim.pop()
        except IndexError:  # settled before
            return
        await self._guard._aledger_release(self)
        self._event = self._guard._released(self, status, error)

    # -- context managers ---------------------------------------------------------------

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.settled:
            status, error = _exit_status(exc)
            self.release(status=status, error=error)

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.settled:
            status, error = _exit_status(exc)
            # Shielded so a cancelled task still gives its hold back.
            await _shielded(self.arelease(status=status, error=error))

    def __repr__(self) -> str:
        state = "settled" if self.settled else "open"
        return (
            f"<Reservation {self.spec.provider}/{self.spec.model} run={self.run_id!r} "
            f"max_output_tokens={self.max_output_tokens} reserved={self.reserved_nanos}n {state}>"
        )


def _exit_status(exc: BaseException | None) -> tuple[CallStatus, str | None]:
    if exc is None:
        return "error", "reservation closed without a commit"
    import asyncio

    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
        return "cancelled", type(exc).__name__
    return "error", f"{type(exc).__name__}: {exc}"[:500]


async def _shielded(awaitable: Awaitable[None]) -> None:
    import anyio  # imported on first use: async code has it loaded already

    with anyio.CancelScope(shield=True):
        await awaitable


__all__ = ["Reservation"]
