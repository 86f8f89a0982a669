"""Metering of streamed calls: count output as it arrives, cut when the reservation is spent.

Provider adapters supply a ``StreamMeter`` (how to read one chunk: its output tokens, the
final usage, tool calls) and hand the SDK's own item iterator to ``metered`` / ``ametered``.
The settlement is one ``StreamSettlement`` per stream; it settles the reservation exactly
once whichever way the stream ends:

============================  ==============================================================
normal end                    commit the provider's final usage (``status="ok"``)
output passes the reservation close the HTTP response, commit what was consumed
                              (``status="cut"``), raise ``BudgetExceededError`` to the consumer
                              after the chunks already paid for
``break`` / ``close()`` / GC  commit what was consumed (``status="cancelled"``)
an exception, cancellation    commit what was consumed, or release when nothing arrived
============================  ==============================================================

The per-chunk work is a method call on the meter and one integer comparison.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio

from kavach._money import fmt_usd
from kavach._values import fast_init
from kavach.errors import BudgetExceededError
from kavach.events import CallStatus
from kavach.reservation import Reservation
from kavach.usage import Usage

__all__ = ["Outcome", "StreamMeter", "StreamSettlement", "ametered", "metered"]

T = TypeVar("T")


@fast_init
@dataclass(frozen=True)
class Outcome:
    """What a finished call reports: its usage and the details that go into its event."""

    usage: Usage
    response_model: str | None = None
    finish_reasons: Sequence[str] = ()
    tool_calls: Sequence[str] = ()
    billed_later: bool = False
    """The provider goes on with the call after it answered and reports its usage elsewhere
    (an OpenAI ``background`` response): ``usage`` is not what it bills, so the call is
    settled at its reservation's worst case."""


class StreamMeter(Protocol):
    """Reads a provider's stream items. ``output_tokens`` is the running count so far.

    ``exact`` meters never count more tokens than the provider produced (OpenAI and Mistral
    send one token a chunk), so a stream is cut the moment it passes its reservation.
    Estimating meters (text length, for Anthropic's and Gemini's multi-token deltas) could
    overcount; when the request itself carries the max output tokens (the provider stops
    there) they are cut only at twice the reservation plus 16 tokens, so an honest stream
    that ends at its max tokens is never cut for an overestimate, while a provider that
    ignores the limit still is.
    """

    exact: bool
    output_tokens: int
    received: bool
    """True once any item arrived (the provider has billed the input)."""
    complete: bool
    """True once the provider's final usage arrived."""

    def feed(self, item: Any) -> bool:
        """Account for one item; return True to hide it from the consumer."""
        ...

    def outcome(self, estimated_input_tokens: int) -> Outcome:
        """Final usage when reported, otherwise the input estimate and the output counted."""
        ...


class StreamSettlement:
    """Settles one streamed call's reservation, exactly once, from whichever path ends it."""

    __slots__ = ("limit", "limited", "meter", "pulling", "raw", "reservation")

    def __init__(self, reservation: Reservation, meter: StreamMeter, limited: bool) -> None:
        """``limited``: the request sent to the provider carries its max output tokens."""
        self.reservation = reservation
        self.meter = meter
        self.limited = limited
        units = reservation.max_output_tokens
        if units is not None and limited and not meter.exact:
            units = 2 * units + 16
        self.limit = units
        self.pulling = False
        """True while the SDK produces the next item: a response it closes then (on its own
        end or failure) is settled by the metering loop, which knows how it ended."""
        self.raw = False
        """The caller holds the raw HTTP response (``with_raw_response``,
        ``with_streaming_response``) and may read its body past the meter (``iter_lines()``):
        a stream closed with nothing metered is then settled at what was reserved."""

    def _args(self, status: CallStatus | None, error: str | None) -> dict[str, Any] | None:
        """Commit arguments, or None when the hold is just given back.

        Once the provider answered, the input is billed even if no item is read (the stream was
        dropped or closed at once), so only an error before any item releases.
        """
        meter = self.meter
        if not meter.received and status == "error":
            return None  # failed before the provider sent anything: nothing to pay for
        r = self.reservation
        plan = r.plan
        input_tokens = plan.input_tokens if plan is not None else 0
        outcome = meter.outcome(input_tokens)
        usage = outcome.usage
        if (self.raw and not meter.received) or outcome.billed_later:
            # Read as bytes, if at all (unseen), or still running at the provider: the worst.
            usage = Usage(input_tokens=input_tokens, output_tokens=r.max_output_tokens or 0)
        if status is None:
            status = "ok" if meter.complete else "cancelled"
        return {
            "status": status,
            "response_model": outcome.response_model,
            "finish_reasons": outcome.finish_reasons,
            "tool_calls": outcome.tool_calls,
            "error": error,
            "usage": usage,
        }

    def finish(self, status: CallStatus | None = None, error: str | None = None) -> None:
        if self.reservation.settled:
            return
        args = self._args(status, error)
        if args is None:
            self.reservation.release(status="error", error=error)
        else:
            self.reservation.commit(args.pop("usage"), **args)

    async def afinish(self, status: CallStatus | None = None, error: str | None = None) -> None:
        if self.reservation.settled:
            return
        args = self._args(status, error)
        # Shielded so a cancelled task still settles its stream.
        with anyio.CancelScope(shield=True):
            if args is None:
                await self.reservation.arelease(status="error", error=error)
            else:
                await self.reservation.acommit(args.pop("usage"), **args)

    def on_close(self) -> None:
        """The HTTP response is being closed (``close()``, a context manager exit)."""
        if not self.pulling:
            self.finish()

    async def aon_close(self) -> None:
        if not self.pulling:
            await self.afinish()

    def finish_on_gc(self) -> None:
        """For ``weakref.finalize``: a stream dropped without being read to its end."""
        self.finish()

    def cut_error(self) -> BudgetExceededError:
        r = self.reservation
        consumed = self.meter.output_tokens
        paid = r.max_output_tokens or 0
        return BudgetExceededError.for_one_call(
            f"{r.spec.model} stream",
            used=consumed,
            paid=paid,
            requested=0,
            scope="this stream",
            detail=(
                f"The stream was cut after {consumed:,} output tokens: its reservation "
                f"({fmt_usd(r.reserved_nanos)}) pays for {paid:,}. "
                + (
                    # Strict mode or the caller set it: telling them to set it misleads.
                    "The provider sent more than the max output tokens the request carried."
                    if self.limited
                    else "Set max output tokens on the request so the provider stops in time."
                )
            ),
        )


def _failure(exc: BaseException) -> tuple[CallStatus, str]:
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
        return "cancelled", type(exc).__name__
    return "error", f"{type(exc).__name__}: {exc}"[:500]


def metered(
    items: Iterator[T], settlement: StreamSettlement, close: Callable[[], object]
) -> Iterator[T]:
    """Yield ``items`` while metering them; ``close`` closes the HTTP response on a cut."""
    meter, limit = settlement.meter, settlement.limit
    feed = meter.feed
    try:
        settlement.pulling = True
        for item in items:
            settlement.pulling = False
            if feed(item):
                settlement.pulling = True
                continue
            if limit is not None and meter.output_tokens > limit:
                settlement.finish("cut", "output passed the reservation")
                close()
                raise settlement.cut_error()
            yield item
            settlement.pulling = True
    except GeneratorExit:
        settlement.finish("cancelled")
        raise
    except BaseException as exc:  # a cut has settled already: this is then a no-op
        settlement.finish(*_failure(exc))
        raise
    finally:
        settlement.pulling = False
    settlement.finish()


async def ametered(
    items: AsyncIterator[T],
    settlement: StreamSettlement,
    aclose: Callable[[], Awaitable[object]],
) -> AsyncIterator[T]:
    """``metered`` for async streams; cancellation settles (shielded) what was consumed."""
    meter, limit = settlement.meter, settlement.limit
    feed = meter.feed
    try:
        settlement.pulling = True
        async for item in items:
            settlement.pulling = False
            if feed(item):
                settlement.pulling = True
                continue
            if limit is not None and meter.output_tokens > limit:
                await settlement.afinish("cut", "output passed the reservation")
                with anyio.CancelScope(shield=True):
                    await aclose()
                raise settlement.cut_error()
            yield item
            settlement.pulling = True
    except GeneratorExit:
        # aclose() of this generator (or its finalizer): no await is allowed after
        # GeneratorExit in every case, and the memory ledger needs none.
        settlement.finish("cancelled")
        raise
    except BaseException as exc:  # a cut has settled already: this is then a no-op
        await settlement.afinish(*_failure(exc))
        raise
    finally:
        settlement.pulling = False
    await settlement.afinish()
