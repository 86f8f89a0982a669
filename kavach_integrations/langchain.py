"""Guard LangChain and LangGraph model calls with a callback handler that can refuse them.

>>> from kavach_integrations.langchain import KavachHandler            # doctest: +SKIP
>>> handler = KavachHandler(agent_name="research-bot", budget=Budget.daily(5))
>>> model = ChatOpenAI(model="gpt-4o-mini", callbacks=[handler])
>>> graph.invoke(inputs, config={"callbacks": [handler]})

How it enforces:

- ``on_chat_model_start`` / ``on_llm_start`` reserve the call's worst case and raise the
  guard's refusal (``BudgetExceededError``, ``GuardrailError``, ``AgentKilledError`` ...), so
  the provider is never called. The handler is a *sync* ``BaseCallbackHandler`` with
  ``raise_error=True`` and ``run_inline=True``: LangChain re-raises its errors on the sync
  path and runs it inline (in order, on the calling task) on the async path, so the refusal
  holds for ``invoke``, ``ainvoke``, ``stream``, ``astream``, ``batch`` and ``abatch``. (An
  ``AsyncCallbackHandler``'s errors are logged and swallowed when LangChain drives it from
  sync code, so it could not refuse there.) LangChain logs every error a handler raises
  (``Error in KavachHandler.on_chat_model_start callback: ...``) before re-raising it; for
  the guard's refusals, which reach the caller as they are, that line is dropped.
- ``on_llm_new_token`` meters a stream and cuts it, by raising, once it produces more output
  than the reservation pays for; the cut call is committed at what it consumed.
- ``on_llm_end`` settles at the actual ``usage_metadata`` (cache reads and writes, reasoning);
  ``on_llm_error`` releases the hold (or commits what a broken stream consumed).
- Model, provider and max tokens come from the run's ``ls_*`` metadata, then from
  ``invocation_params``. LangChain cannot lower a request's ``max_tokens`` from a callback,
  so set ``max_tokens`` on the model for a hard bound on non-streamed calls; streams are cut
  at the reservation in either mode.
- Each model run (``run_id``) has its own reservation, so ``batch``, ``abatch`` and parallel
  graph branches hold separately. A LangChain run tree is one kavach run: the root run's id
  becomes ``CallSpec.run_id`` (unless the code runs inside ``guard.run()``), so per-run
  guardrails apply to one chain, agent or graph invocation. Tool calls in the model's answer
  feed the loop detector.

Calls LangChain never ends are settled too. LangChain sends no ``on_llm_error`` when the
task awaiting a model is cancelled (``asyncio.wait_for``, a LangGraph branch cancelled by a
failing sibling), and stops at the first handler that raises, so another handler's error in
the start or end event hides it from this one. Such a call is settled when its parent run
(chain, tool, retriever, graph node) ends, or, for an async call, when the coroutine that made
it (LangChain's ``agenerate``) or the task that made it ends (since Python 3.12,
``asyncio.wait_for``, like ``asyncio.timeout()``, cancels the call and resumes the same task,
which goes on): released if the error came out of a start event (nothing was sent), billed at the most
it could cost if it came out of an end event (answered, the answer unseen), otherwise at the
input estimate plus what streamed (``status="cancelled"`` for a cancellation), as
``kavach.stream`` bills a dropped stream. A sync ``generate()`` whose prompt fails settles
the prompts answered before it the same way and releases those never sent. A refusal by one
``KavachHandler`` releases what the others listed with it reserved for the call, so two
handlers for two guards (agent and team budgets) hold together or not at all.

Not covered: a sync model call made on its own (no chain around it, no running event loop)
whose start or end event another handler aborts keeps its hold (nothing tells the handler
the call is over). So does, until its parent run or its task ends, an async text LLM's call
cancelled on a task that goes on (its start event comes from a task of its own), or a chat
model's whose task awaits it through an awaitable that does not show what it awaits (not a
coroutine, generator, async generator or asyncio future). Run such calls in a chain or a task.

The handler uses the guard's sync API: with the in-memory ledger that does no I/O. A Redis
ledger makes a short blocking round trip on the event loop for async LangChain calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import AsyncGeneratorType, CoroutineType, FrameType, GeneratorType
from typing import Any, Literal
from uuid import UUID

from kavach.client import AgentKavach, current_run_id
from kavach.errors import BudgetExceededError, KavachConfigError, MissingDependencyError
from kavach.events import CallStatus
from kavach.reservation import Reservation
from kavach.spec import CallSpec
from kavach.usage import PriceVariant, Usage
from kavach_integrations._provider import price_variant, tool_signature, web_search_uses

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("langchain-core", "langchain") from exc

__all__ = ["KavachHandler", "usage_from_metadata"]

logger = logging.getLogger("kavach.langchain")

_CALLBACK_MANAGER = "langchain_core.callbacks.manager"


class _RefusalsReachTheCaller(logging.Filter):
    """Drops LangChain's warning about a KavachHandler refusal: the refusal is re-raised to
    the caller (``raise_error``), so the line would only repeat it, as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg != "Error in %s.%s callback: %s" or not isinstance(args, tuple):
            return True
        if len(args) != 3 or not _is_kavach_handler(args[0]):
            return True
        error = str(args[2])
        return not error.startswith(_kavach_error_names())


def _is_kavach_handler(name: object) -> bool:
    return name == "KavachHandler" or any(
        name == kind.__name__ for kind in _subclasses(KavachHandler)
    )


def _subclasses(kind: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in kind.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _kavach_error_names() -> tuple[str, ...]:
    from kavach.errors import KavachError

    return tuple(f"{kind.__name__}(" for kind in [KavachError, *_subclasses(KavachError)])


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_PROVIDERS = {
    "azure": "openai",
    "azure_openai": "openai",
    "google_genai": "google",
    "google_vertexai": "google",
    "mistralai": "mistral",
}


@dataclass(slots=True)
class _Batch:
    """The model runs of one multi-prompt ``generate()``, in prompt order."""

    key: tuple[object, UUID | None]
    """Its key in ``KavachHandler._batches`` while prompts are still joining it."""
    size: int
    serial: bool
    """Sync chat ``generate()``: prompts are sent one after another, and a failure ends the
    call with no ``on_llm_end`` for the prompts already answered."""
    runs: list[UUID] = field(default_factory=list)


@dataclass(slots=True)
class _Call:
    reservation: Reservation
    parent: UUID | None = None
    task: asyncio.Task[Any] | None = None
    """The task that made the call (the handler runs inline on it), if any."""
    thread: threading.Thread = field(default_factory=threading.current_thread)
    batch: _Batch | None = None
    output_tokens: int = 0
    cut: bool = False
    owner: weakref.ref[Any] | None = None
    """The coroutine of LangChain's that made an async call (``agenerate``), once found:
    when it is gone, so is the call (see ``KavachHandler._bind_owner``)."""
    owner_frame: FrameType | None = None
    owner_line: int | None = None
    """Its frame, and the line it was on when it sent the start event: a coroutine that ended
    on that line ended with an error out of the start event, so the call was never sent."""


# A call LangChain never ends: was its request sent, and was it answered?
_Fate = Literal["unsent", "answered", "unknown"]

# Every live handler, so one that refuses a run gives back what the others reserved for it.
_handlers: weakref.WeakSet[KavachHandler] = weakref.WeakSet()
_handlers_lock = threading.Lock()


def usage_from_metadata(usage_metadata: Mapping[str, Any]) -> Usage:
    """A kavach ``Usage`` from LangChain's ``AIMessage.usage_metadata``.

    LangChain's ``input_tokens`` already includes cache reads and writes for every provider
    (langchain-anthropic adds Anthropic's separately reported cache tokens in), which is
    kavach's convention too, so it is taken as is.

    >>> usage_from_metadata({"input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
    ...     "input_token_details": {"cache_read": 100}}).cache_read_tokens
    100
    """
    inp = usage_metadata.get("input_token_details") or {}
    out = usage_metadata.get("output_token_details") or {}
    five_minute = int(inp.get("ephemeral_5m_input_tokens") or 0)
    one_hour = int(inp.get("ephemeral_1h_input_tokens") or 0)
    # langchain-openai names an answer's priority or flex tier by its token details, and
    # prefixes the cache and reasoning counts with it ("priority_cache_read").
    tier = next((t for t in _TIERS if t in inp or t in out), None)
    pre = f"{tier}_" if tier else ""
    return Usage(
        input_tokens=int(usage_metadata.get("input_tokens") or 0),
        output_tokens=int(usage_metadata.get("output_tokens") or 0),
        cache_read_tokens=int(inp.get(f"{pre}cache_read") or 0),
        # langchain-anthropic gives Anthropic's cache writes by lifetime too. Since 1.x it then
        # zeroes "cache_creation"; before, that key kept the total, the same tokens again.
        cache_write_tokens=five_minute
        + max(0, int(inp.get(f"{pre}cache_creation") or 0) - five_minute - one_hour),
        cache_write_1h_tokens=one_hour,
        reasoning_tokens=int(out.get(f"{pre}reasoning") or 0),
        input_audio_tokens=int(inp.get("audio") or 0),
        output_audio_tokens=int(out.get("audio") or 0),
        price_variant=(("service_tier", tier),) if tier else None,
    )


_TIERS = ("priority", "flex")


class KavachHandler(BaseCallbackHandler):
    """A LangChain callback handler that reserves, refuses, meters and settles model calls.

    Build it from a guard (``KavachHandler(guard)``) or from ``AgentKavach``'s arguments
    (``KavachHandler(agent_name="bot", budget=Budget.daily(5))``); ``handler.guard`` is the
    guard either way. One handler serves any number of concurrent runs.
    """

    raise_error = True
    run_inline = True

    def __init__(self, guard: AgentKavach | str | None = None, /, **guard_kwargs: Any) -> None:
        if isinstance(guard, str):  # KavachHandler("bot", budget=...), like AgentKavach
            guard = AgentKavach(guard, **guard_kwargs)
        elif guard is None:
            guard = AgentKavach(**guard_kwargs)
        elif not isinstance(guard, AgentKavach):
            raise KavachConfigError(
                f"KavachHandler takes an AgentKavach or its arguments, got {type(guard).__name__}"
            )
        elif guard_kwargs:
            raise KavachConfigError(
                "pass either a guard or AgentKavach arguments to KavachHandler, not both"
            )
        self.guard = guard
        self._lock = threading.Lock()
        self._calls: dict[UUID, _Call] = {}
        self._roots: dict[UUID, UUID] = {}
        # Multi-prompt generate() calls whose prompts are still being reserved.
        self._batches: dict[tuple[object, UUID | None], _Batch] = {}
        self._watched: set[asyncio.Task[Any]] = set()
        self._warned_unseen_parent = False
        with _handlers_lock:
            _handlers.add(self)

    def __repr__(self) -> str:
        return f"<KavachHandler {self.guard!r} open={len(self._calls)}>"

    # -- run tree -----------------------------------------------------------------------

    def _enter(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        with self._lock:
            if parent_run_id is None:
                self._roots[run_id] = run_id
            else:
                self._roots[run_id] = self._roots.get(parent_run_id, parent_run_id)
        if parent_run_id is None and current_run_id() is None:
            self.guard.guardrails.start_run(str(run_id))

    def _exit(self, run_id: UUID, error: BaseException | None = None) -> None:
        task, thread = _current_task(), threading.current_thread()
        with self._lock:
            self._roots.pop(run_id, None)
            # A model call under this run that LangChain never ended: another handler raised
            # in its start or end event, and LangChain stops at the first handler that raises.
            orphans = [
                r
                for r, c in self._calls.items()
                if c.parent == run_id and _finished(c, task, thread)
            ]
            calls = [c for c in (self._pop(r) for r in orphans) if c is not None]
        status = _error_status(error) if error is not None else "error"
        for call in calls:
            _give_up(call, _fate(error), status, "its parent run ended before the call did")

    def _kavach_run(self, parent_run_id: UUID | None) -> str:
        scoped = current_run_id()
        if scoped is not None:
            return scoped
        if parent_run_id is None:
            return self.guard.current_run
        with self._lock:
            root = self._roots.get(parent_run_id)
        if root is None:
            # Attached to the model only: the handler never sees the chain or graph around
            # the call, so each step becomes its own run and per-run guardrails see one call.
            if not self._warned_unseen_parent:
                self._warned_unseen_parent = True
                logger.warning(
                    "kavach: KavachHandler sees model calls but not the chain or graph that "
                    "runs them; pass it as config={'callbacks': [handler]} to the invocation "
                    "so per-run guardrails (calls, tokens, loops) cover the whole run"
                )
            return str(parent_run_id)
        return str(root)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit(run_id, error)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit(run_id, error)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id)

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._exit(run_id, error)

    # -- model runs: reserve ------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        flat = [m for batch in messages for m in batch]
        self._reserve(
            run_id,
            parent_run_id,
            metadata,
            kwargs,
            messages=[_message_dict(m) for m in flat],
            prompt=None,
            serial=not _called_from_coroutine(),
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._reserve(
            run_id,
            parent_run_id,
            metadata,
            kwargs,
            messages=None,
            prompt="\n".join(prompts),
            # A text LLM's generate() sends its prompts in one request and errors them all.
            serial=False,
        )

    def _reserve(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        *,
        messages: list[dict[str, Any]] | None,
        prompt: str | None,
        serial: bool,
    ) -> None:
        meta = metadata or {}
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        batch_size = int(kwargs.get("batch_size") or 1)
        spec = CallSpec(
            provider=_provider(meta, params),
            model=_model(meta, params),
            messages=messages,
            prompt=prompt,
            tools=params.get("tools"),
            max_output_tokens=_max_tokens(meta, params),
            operation="chat" if messages is not None else "text_completion",
            choices=_choices(params),
            price_variant=_price_variant(params),
            max_searches=web_search_uses(params.get("tools")),
            run_id=self._kavach_run(parent_run_id),
            tags={"integration": "langchain"},
        )
        task = _current_task()
        batch_key = (task if task is not None else threading.get_ident(), parent_run_id)
        try:
            reservation = self.guard.reserve(spec)
        except BaseException:
            # The run never starts, so nothing was sent: every KavachHandler (this one and
            # any other listed with it) gives back what it holds for the run and its batch.
            with _handlers_lock:
                handlers = list(_handlers)
            for handler in handlers:
                handler._start_failed(run_id, batch_key)
            raise
        call = _Call(reservation, parent_run_id, task)
        with self._lock:
            self._calls[run_id] = call
            if batch_size > 1:
                batch = self._batches.get(batch_key)
                if batch is None:
                    batch = _Batch(batch_key, batch_size, serial=serial)
                    self._batches[batch_key] = batch
                batch.runs.append(run_id)
                call.batch = batch
                if len(batch.runs) >= batch_size:
                    del self._batches[batch_key]
            watch = task is not None and task not in self._watched
            if task is not None and watch:
                self._watched.add(task)
        if task is not None and watch:
            task.add_done_callback(self._task_done)
        if task is not None and (frame := _owner_frame()) is not None:
            call.owner_frame, call.owner_line = frame, frame.f_lineno
            task.get_loop().call_soon(self._bind_owner, run_id, call)

    def _bind_owner(self, run_id: UUID, call: _Call) -> None:
        """Watch the coroutine that made an async call, from the first moment its task
        waits (the handler runs inside it, and a running task's coroutines cannot be seen).

        A cancelled ``ainvoke`` never gets ``on_llm_error``, and since Python 3.12 neither
        ``asyncio.wait_for`` nor ``asyncio.timeout`` ends the task it cancels: the task goes
        on, so its end cannot be what settles the call. The coroutine that made the call
        (``agenerate``) ends with it, though, so the call is settled when that coroutine is
        gone, as when its task ends."""
        task, frame = call.task, call.owner_frame
        if task is None or frame is None or task.done() or self._calls.get(run_id) is not call:
            return  # ended already, or the task's end settles it
        found = _awaiting(task, frame)
        if found is _UNSEEN:
            return  # an await the chain cannot be followed through: left to the task's end
        if found is None:  # not on its task any more: it ended without ending the call
            self._owner_gone(run_id, call)
            return
        loop = task.get_loop()
        handler = weakref.ref(self)

        def gone(_: object) -> None:
            # Called wherever the coroutine is freed, maybe with a lock held: settle later.
            if (live := handler()) is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: the task ended
                    loop.call_soon_threadsafe(live._owner_gone, run_id, call)

        call.owner = weakref.ref(found, gone)

    def _owner_gone(self, run_id: UUID, call: _Call) -> None:
        if call.task is not None and call.task.done():
            return  # the task's end settles it, and knows the error that ended it
        with self._lock:
            if self._calls.get(run_id) is not call:
                return
            self._pop(run_id)
        frame = call.owner_frame
        # Ended on the line that sent the start event: another handler raised out of it.
        unsent = frame is not None and frame.f_lineno == call.owner_line
        call.owner_frame = None
        if unsent:
            _give_up(call, "unsent", "error", "another handler refused it before it was sent")
        else:  # a cancellation, as errors of the request itself come as on_llm_error
            _give_up(call, "unknown", "cancelled", "the coroutine that made it ended first")

    def _start_failed(self, run_id: UUID, batch_key: tuple[object, UUID | None]) -> None:
        with self._lock:
            batch = self._batches.pop(batch_key, None)
            runs = [*(batch.runs if batch is not None else ()), run_id]
            calls = [c for c in (self._pop(r) for r in runs) if c is not None]
        for call in calls:
            call.reservation.release(error="refused before it was sent (this run or its batch)")

    def _pop(self, run_id: UUID) -> _Call | None:
        """Take an open call off the books (with ``self._lock`` held)."""
        call = self._calls.pop(run_id, None)
        batch = call.batch if call is not None else None
        if batch is not None and self._batches.get(batch.key) is batch:
            del self._batches[batch.key]  # still being reserved: a later prompt cannot join it
        return call

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        # A cancelled ainvoke (a timeout, a cancelled graph branch) never gets on_llm_error:
        # LangChain is awaiting asyncio.gather when the cancellation arrives.
        with self._lock:
            self._watched.discard(task)
            orphans = [r for r, c in self._calls.items() if c.task is task]
            calls = [c for c in (self._pop(r) for r in orphans) if c is not None]
        if not calls:
            return
        # Read without marking the exception retrieved (task.exception() would), so asyncio
        # still reports a failed task nobody awaited. Unreadable, the fate is unknown.
        error = None if task.cancelled() else getattr(task, "_exception", None)
        if not isinstance(error, BaseException):
            error = None
        status: CallStatus = "cancelled" if task.cancelled() else "error"
        if error is not None:
            status = _error_status(error)
        for call in calls:
            _give_up(call, _fate(error), status, "its task ended before the call did")

    # -- model runs: meter and settle ---------------------------------------------------

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        call = self._calls.get(run_id)
        if call is None:
            return
        call.output_tokens += _chunk_tokens(token, chunk)
        r = call.reservation
        if r.exceeds(call.output_tokens) and not call.cut:
            call.cut = True
            units = r.max_output_tokens or 0
            raise BudgetExceededError(
                budget="this call's reservation",
                unit="tokens",
                spent=call.output_tokens,
                reserved=0,
                limit=units,
                requested=0,
                period="one call",
                resets_at=None,
                detail=(
                    f"The stream of {r.spec.model} was cut after {call.output_tokens:,} output "
                    f"tokens; the budget held only {units:,}. Set max_tokens on the model to "
                    "stay within it."
                ),
            )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._pop(run_id)
        if call is not None:
            _settle(call, lambda: _commit_end(call, response))

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        response: LLMResult | None = None,
        **kwargs: Any,
    ) -> None:
        answered: list[_Call] = []
        unsent: list[_Call] = []
        with self._lock:
            call = self._pop(run_id)
            batch = call.batch if call is not None else None
            if batch is not None and batch.serial:
                # Sync chat generate() stops at the failed prompt and raises: the prompts
                # before it were answered (their on_llm_end never comes), those after unsent.
                at = batch.runs.index(run_id)
                answered = [c for c in map(self._pop, batch.runs[:at]) if c is not None]
                unsent = [c for c in map(self._pop, batch.runs[at + 1 :]) if c is not None]
        if call is not None:
            _settle(call, lambda: _commit_error(call, error, response))
        why = "another prompt of the same generate() failed"
        for other in answered:
            _give_up(other, "answered", "error", why)
        for other in unsent:
            _give_up(other, "unsent", "error", why)

    @property
    def open_calls(self) -> int:
        """Model runs reserved and not yet settled."""
        return len(self._calls)


# -- settling ------------------------------------------------------------------------------


def _settle(call: _Call, settle: Callable[[], object]) -> None:
    # Settling is accounting after the provider answered: a failure here is logged, never
    # raised into the user's call (raise_error=True would otherwise re-raise it).
    try:
        settle()
    except Exception:
        logger.exception("kavach: could not settle a LangChain call; releasing its hold")
        call.reservation.release(error="settlement failed")


def _give_up(call: _Call, fate: _Fate, status: CallStatus, why: str) -> None:
    """Settle a call LangChain will never end, as ``kavach.stream`` settles a dropped stream.

    Never sent: the hold goes back. Answered but the answer unseen: the most it could have
    cost (the input estimate and every output token held). Otherwise the request may have
    been sent and billed: the input estimate and whatever streamed, like a stream cancelled
    before or during its first chunks.
    """
    r = call.reservation
    if fate == "unsent":
        r.release(status=status, error=why)
        return
    usage = _estimate(call, None)
    if fate == "answered":
        usage = replace(usage, output_tokens=max(usage.output_tokens, r.max_output_tokens or 0))
    _settle(call, lambda: r.commit(usage, status=status, error=why))


def _fate(error: BaseException | None) -> _Fate:
    """What an error that ended a call's run tells of the call, from where it was raised.

    LangChain raises a callback's error out of the callback manager: out of a model's start
    event, nothing was sent; out of its end event, the answer came back but we never saw it.
    """
    fate: _Fate = "unknown"
    tb = error.__traceback__ if error is not None else None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__") == _CALLBACK_MANAGER:
            name = frame.f_code.co_name
            if name in ("on_chat_model_start", "on_llm_start"):
                return "unsent"
            if name == "on_llm_end":
                fate = "answered"
        tb = tb.tb_next
    return fate


def _finished(call: _Call, task: asyncio.Task[Any] | None, thread: threading.Thread) -> bool:
    """True when ``call`` can no longer be in flight as its parent run ends.

    A call on the ending run's own task or thread is over (the run is past it); a call on a
    task that has finished is over. A branch still running on another task or thread (an
    ``asyncio.gather`` that raised first) is left to its own end, or to its task's end.
    """
    if call.task is not None:
        return call.task is task or call.task.done()
    return call.thread is thread or not call.thread.is_alive()


# The coroutines of LangChain's that make model calls and end only when the calls they made
# are over (answered, failed or cancelled): a call made by one is over once it is gone.
_OWNERS = {
    ("langchain_core.language_models.chat_models", "agenerate"),
    ("langchain_core.language_models.llms", "agenerate"),
}
_UNSEEN = object()


def _owner_frame() -> FrameType | None:
    """The frame of LangChain's ``agenerate`` that is calling the handler, if that is what
    is: the first frame above the handler and LangChain's callback manager."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_globals.get("__name__") == __name__
        or str(frame.f_globals.get("__name__")).startswith("langchain_core.callbacks")
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or (frame.f_globals.get("__name__"), frame.f_code.co_name) not in _OWNERS:
        return None
    return frame if frame.f_code.co_flags & inspect.CO_COROUTINE else None


def _awaiting(task: asyncio.Task[Any], frame: FrameType) -> Any:
    """The coroutine of ``frame`` if ``task`` (waiting, not running) is awaiting it; None
    when the task's chain of awaits, followed to its end, does not hold it; ``_UNSEEN`` when
    the chain passes through an awaitable it cannot be followed through."""
    awaited: Any = task.get_coro()
    for _ in range(1000):
        if isinstance(awaited, CoroutineType):
            if awaited.cr_frame is frame:
                return awaited
            awaited = awaited.cr_await
        elif isinstance(awaited, GeneratorType):  # a generator-based coroutine, a bare yield
            awaited = awaited.gi_yieldfrom
        elif type(awaited).__name__ in ("async_generator_asend", "async_generator_athrow"):
            # An async generator's step: it does not show its generator but refers to it.
            agen = [a for a in gc.get_referents(awaited) if isinstance(a, AsyncGeneratorType)]
            if len(agen) != 1:
                return _UNSEEN
            awaited = agen[0].ag_await
        elif (
            awaited is None
            or isinstance(awaited, asyncio.Future)
            or type(awaited).__name__ == "FutureIter"  # what awaiting a C future awaits
        ):
            return None  # the end of the chain: a future (a task, a gather) or nothing
        else:
            return _UNSEEN
    return _UNSEEN


def _current_task() -> asyncio.Task[Any] | None:
    """The task making the call, None outside one. A task that only delivers this event
    (a text LLM's ``agenerate`` sends each prompt's start event in a task of its own, which
    ends before the call is made) is not it, and is not watched."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop running in this thread
        return None
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    if frame is not None and frame.f_globals.get("__name__") == _CALLBACK_MANAGER:
        return None
    return task


def _called_from_coroutine() -> bool:
    """True when LangChain's async callback manager calls the handler.

    The handler is sync and inline, so on the async path its caller is a coroutine of
    ``langchain_core.callbacks.manager``; on the sync path a plain function.
    """
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return bool(frame.f_code.co_flags & inspect.CO_COROUTINE)


def _commit_end(call: _Call, response: LLMResult) -> None:
    message = _first_message(response)
    usage = _usage(response, message)
    if usage is None:
        usage = _estimate(call, response)
    elif usage.input_tokens == 0 and call.reservation.plan is not None:
        # Some streams report output only; a call always had input, so bill the estimate.
        usage = replace(usage, input_tokens=call.reservation.plan.input_tokens)
    call.reservation.commit(
        usage,
        response_model=_response_model(message),
        finish_reasons=_finish_reasons(response),
        tool_calls=_tool_calls(message),
    )


def _commit_error(call: _Call, error: BaseException, response: LLMResult | None) -> None:
    text = f"{type(error).__name__}: {error}"[:500]
    if not call.cut and call.output_tokens == 0:
        call.reservation.release(status=_error_status(error), error=text)
        return
    # A stream that produced output was billed for it, whether we cut it or it broke.
    message = _first_message(response) if response is not None else None
    usage = _usage(response, message) if response is not None else None
    if usage is None or usage.output_tokens < call.output_tokens:
        usage = _estimate(call, response)
    status: CallStatus = "cut" if call.cut else _error_status(error)
    call.reservation.commit(usage, status=status, error=text)


# -- reading LangChain's values ----------------------------------------------------------


def _provider(meta: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    raw = meta.get("ls_provider") or params.get("_type") or "unknown"
    name = str(raw).lower()
    if name.endswith("-chat"):
        name = name[: -len("-chat")]
    return _PROVIDERS.get(name, name)


def _model(meta: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    for value in (
        meta.get("ls_model_name"),
        params.get("model"),
        params.get("model_name"),
        params.get("model_id"),
    ):
        if value:
            return str(value)
    return "unknown"


def _max_tokens(meta: Mapping[str, Any], params: Mapping[str, Any]) -> int | None:
    for value in (
        meta.get("ls_max_tokens"),
        params.get("max_tokens"),
        params.get("max_completion_tokens"),
        params.get("max_output_tokens"),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return None


def _choices(params: Mapping[str, Any]) -> int:
    """Replies the request asks for, each up to max tokens and all billed: ``n`` (OpenAI,
    Gemini), ``candidate_count`` (Gemini), or a legacy completion's ``best_of``."""
    most = 1
    for name in ("n", "candidate_count", "best_of"):
        value = params.get(name)
        if type(value) is int and value > most:
            most = value
    return most


def _message_dict(message: BaseMessage) -> dict[str, Any]:
    content = message.content if isinstance(message.content, str) else str(message.content)
    tool_calls = getattr(message, "tool_calls", None)
    if tool_calls:
        content += json.dumps(tool_calls, default=str)
    return {"role": _ROLES.get(message.type, message.type), "content": content}


def _chunk_tokens(token: str | list[str | dict[str, Any]], chunk: Any) -> int:
    """A conservative count of the output tokens one streamed chunk carries."""
    text = _text(token)
    message = getattr(chunk, "message", None)
    for tool_chunk in getattr(message, "tool_call_chunks", None) or ():
        text += str(tool_chunk.get("name") or "") + str(tool_chunk.get("args") or "")
    if not text:
        return 0
    return max(1, len(text) // 4)


def _text(content: str | list[str | dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            # Tool-call arguments are counted from tool_call_chunks, not from their blocks.
            for key in ("text", "thinking", "reasoning"):
                value = block.get(key)
                if isinstance(value, str):
                    parts.append(value)
    return "".join(parts)


def _first_message(response: LLMResult | None) -> Any:
    if response is None:
        return None
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            if message is not None:
                return message
    return None


def _web_searches(message: Any) -> int:
    """Anthropic web searches, which usage_metadata leaves out: langchain-anthropic keeps
    the API's own usage (``server_tool_use.web_search_requests``) in response_metadata."""
    meta = getattr(message, "response_metadata", None)
    usage = meta.get("usage") if isinstance(meta, Mapping) else None
    tools = usage.get("server_tool_use") if isinstance(usage, Mapping) else None
    count = tools.get("web_search_requests") if isinstance(tools, Mapping) else None
    return count if type(count) is int and count > 0 else 0


def _price_variant(params: Mapping[str, Any]) -> PriceVariant | None:
    """The tier the model's parameters ask for (``ChatOpenAI(service_tier="priority")``,
    Anthropic's ``speed="fast"`` among ``model_kwargs``), or ``None``: the account's."""
    tier = params.get("service_tier")
    if tier is not None:
        return price_variant("service_tier", tier)
    speed = params.get("speed")
    return None if speed is None else price_variant("speed", speed)


def _usage(response: LLMResult | None, message: Any) -> Usage | None:
    llm_output = (response.llm_output if response is not None else None) or {}
    metadata = getattr(message, "usage_metadata", None)
    if metadata:
        usage = usage_from_metadata(metadata)
        served = llm_output.get("service_tier")  # langchain-openai: the answer's tier
        if usage.price_variant is None and isinstance(served, str):
            usage = replace(usage, price_variant=price_variant("service_tier", served))
        searches = _web_searches(message)
        if searches:
            usage = replace(usage, web_searches=searches)
        return usage
    token_usage = llm_output.get("token_usage") or llm_output.get("usage")
    if isinstance(token_usage, Mapping) and token_usage:
        return Usage(
            input_tokens=int(token_usage.get("prompt_tokens") or 0),
            output_tokens=int(token_usage.get("completion_tokens") or 0),
        )
    return None


def _estimate(call: _Call, response: LLMResult | None) -> Usage:
    """Usage when the provider reported none (e.g. a stream without ``stream_usage``)."""
    r = call.reservation
    input_tokens = r.plan.input_tokens if r.plan is not None else 0
    output = call.output_tokens
    if response is not None and not output:
        text = "".join(getattr(g, "text", "") or "" for gens in response.generations for g in gens)
        output = max(1, len(text) // 4) if text else 0
    return Usage(input_tokens=input_tokens, output_tokens=output)


def _finish_reasons(response: LLMResult) -> list[str]:
    out = []
    for generations in response.generations:
        for generation in generations:
            info = getattr(generation, "generation_info", None) or {}
            meta = getattr(getattr(generation, "message", None), "response_metadata", None) or {}
            reason = (
                info.get("finish_reason") or meta.get("finish_reason") or meta.get("stop_reason")
            )
            if reason:
                out.append(str(reason))
    return out


def _response_model(message: Any) -> str | None:
    meta = getattr(message, "response_metadata", None) or {}
    model = meta.get("model_name") or meta.get("model")
    return str(model) if model else None


def _tool_calls(message: Any) -> list[str]:
    """Tool calls as ``name(args)``, so the loop detector sees repeats of the same call."""
    return [
        tool_signature(str(call.get("name")), call.get("args") or {})
        for call in getattr(message, "tool_calls", None) or ()
    ]


def _error_status(error: BaseException) -> CallStatus:
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
        return "cancelled"
    return "error"


logging.getLogger(_CALLBACK_MANAGER).addFilter(_RefusalsReachTheCaller())
