"""Guard every LlamaIndex LLM call in the process: ``instrument(guard)`` / ``uninstrument()``.

>>> from kavach_integrations.llamaindex import instrument            # doctest: +SKIP
>>> handle = instrument(AgentKavach(agent_name="rag", budget=Budget.daily(5)))
>>> index.as_query_engine().query("...")     # every LLM call is reserved, refused or settled
>>> handle.uninstrument()

What is covered, and how:

- **Refusal.** LlamaIndex's instrumentation dispatcher swallows every handler exception, so
  it cannot stop a call. Every LLM method LlamaIndex decorates (``chat``, ``achat``,
  ``stream_chat``, ``astream_chat``, ``complete``, ``acomplete``, ``stream_complete``,
  ``astream_complete``, and so ``predict``, ``chat_with_tools``, query engines, chat engines
  and agents built on them) calls the legacy ``CallbackManager.on_event_start`` for an
  ``LLM`` event before the provider is called, outside any ``try``. ``instrument`` wraps that
  method on the ``CallbackManager`` class, so it applies to ``Settings.llm``, to LLMs created
  before or after, and whatever callback manager an LLM carries. There the guard reserves
  the call's worst case or raises its refusal, and the provider is never called.
- **Settlement.** The matching ``on_event_end`` (it runs on success, on error and when a
  stream ends or is closed) commits the usage in ``ChatResponse.raw``: OpenAI chat and
  Responses usage with cached and reasoning tokens, Anthropic usage with cache reads and
  writes (5-minute and 1-hour). A streamed OpenAI call reports usage only when the LLM asks
  for it (``additional_kwargs={"stream_options": {"include_usage": True}}``); without usage,
  the call is billed at the input estimate plus the streamed text. As ``kavach.stream``
  settles a raw stream: a call that failed before anything arrived releases its hold; a
  cancelled call (a cancelled task, a timeout, a stream closed or broken off) may have been
  sent, so it is billed at the input estimate plus what streamed. A stream dropped without
  being read to its end (``break`` and no ``close()``/``aclose()``, or never iterated) is
  settled the same way when it is garbage collected, at once, not when the event loop gets
  round to closing it. A call that raised between its start event and the provider call
  (a cancelled rate limiter wait) was never sent: its hold goes back.
- **Observation.** A span handler on the root dispatcher maps each call to the outermost
  span it runs in (a query, a chat turn, an agent or workflow run): that span's id is the
  kavach run (unless the code runs inside ``guard.run()``), so per-run guardrails apply to
  one query or agent run. An event handler meters streams as they arrive
  (``LLMChatInProgressEvent``, ``LLMCompletionInProgressEvent``), so a stream that breaks
  midway is billed for what it produced. An LLM event nested in another one (Anthropic's
  ``complete`` calls its own ``chat``) is guarded once, by the outer event.
- **Not covered.** Requests are sent unchanged: the reservation is for the LLM's
  ``max_tokens`` (or the guard's ``default_max_output_tokens`` when it has none), so set
  ``max_tokens`` on the LLM for a hard bound; streams are not cut, because no LlamaIndex
  hook runs per chunk and can raise. Embedding calls are not guarded. A stream kept
  referenced after its consumer stopped reading keeps its hold until it is closed or freed.

Instrumenting twice is a no-op that returns the same handle.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kavach.client import AgentKavach, current_run_id
from kavach.errors import MissingDependencyError
from kavach.events import CallStatus
from kavach.reservation import Reservation
from kavach.spec import CallSpec
from kavach.usage import Usage
from kavach_integrations._provider import price_variant, tool_signature

try:
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.instrumentation.events.llm import (
        LLMChatInProgressEvent,
        LLMCompletionInProgressEvent,
    )
    from llama_index.core.instrumentation.span import BaseSpan, active_span_id
    from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("llama-index-core", "llamaindex") from exc

__all__ = ["Instrumentation", "instrument", "uninstrument", "usage_from_raw"]

logger = logging.getLogger("kavach.llamaindex")

_PROVIDERS = {
    "openai_llm": "openai",
    "azure_openai_llm": "openai",
    "anthropic_llm": "anthropic",
    "gemini_llm": "google",
    "googlegenai_llm": "google",
    "google_genai_llm": "google",
    "mistralai_llm": "mistral",
}


@dataclass(slots=True)
class _Call:
    reservation: Reservation
    span_id: str | None
    streamed_chars: int = 0
    received: bool = False
    """True once any chunk arrived: the provider answered, and bills the input."""


# -- usage ------------------------------------------------------------------------------


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _has(obj: Any, name: str) -> bool:
    if isinstance(obj, Mapping):
        return name in obj
    return hasattr(obj, name)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def usage_from_raw(raw: Any) -> Usage | None:
    """``_usage_from_raw`` with the tier the answer says served it (OpenAI's
    ``service_tier``, Anthropic's ``usage.speed``) and Anthropic's web searches."""
    usage = _usage_from_raw(raw)
    if usage is None:
        return None
    reported = _get(raw, "usage")
    tier = price_variant("service_tier", _get(raw, "service_tier"))
    if tier is None:
        tier = price_variant("speed", _get(reported, "speed"))
    searches = _int(_get(_get(reported, "server_tool_use"), "web_search_requests"))
    if tier is None and not searches:
        return usage
    return replace(usage, price_variant=tier, web_searches=searches)


def _usage_from_raw(raw: Any) -> Usage | None:
    """A kavach ``Usage`` from a provider response LlamaIndex keeps in ``ChatResponse.raw``.

    Reads OpenAI chat completions (``prompt_tokens``, cached and reasoning details), OpenAI
    Responses (``input_tokens_details``) and Anthropic messages (input reported without the
    cache reads and writes, which are added back in). ``None`` when ``raw`` carries no usage.

    >>> usage_from_raw({"usage": {"input_tokens": 20, "output_tokens": 5,
    ...     "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0}}).input_tokens
    120
    """
    usage = _get(raw, "usage")
    if usage is None:
        return None
    if _get(usage, "prompt_tokens") is not None:  # OpenAI chat completions (and look-alikes)
        prompt = _get(usage, "prompt_tokens_details")
        completion = _get(usage, "completion_tokens_details")
        return Usage(
            input_tokens=_int(_get(usage, "prompt_tokens")),
            output_tokens=_int(_get(usage, "completion_tokens")),
            cache_read_tokens=_int(_get(prompt, "cached_tokens")),
            input_audio_tokens=_int(_get(prompt, "audio_tokens")),
            reasoning_tokens=_int(_get(completion, "reasoning_tokens")),
            output_audio_tokens=_int(_get(completion, "audio_tokens")),
        )
    if _has(usage, "cache_read_input_tokens") or _has(usage, "cache_creation_input_tokens"):
        read = _int(_get(usage, "cache_read_input_tokens"))
        created = _int(_get(usage, "cache_creation_input_tokens"))
        lifetimes = _get(usage, "cache_creation")
        one_hour = _int(_get(lifetimes, "ephemeral_1h_input_tokens"))
        thinking = _int(_get(_get(usage, "output_tokens_details"), "thinking_tokens"))
        return Usage(
            input_tokens=_int(_get(usage, "input_tokens")) + read + created,
            output_tokens=_int(_get(usage, "output_tokens")),
            cache_read_tokens=read,
            cache_write_tokens=created - one_hour,
            cache_write_1h_tokens=one_hour,
            reasoning_tokens=thinking,
        )
    if _get(usage, "input_tokens") is not None:  # OpenAI Responses
        return Usage(
            input_tokens=_int(_get(usage, "input_tokens")),
            output_tokens=_int(_get(usage, "output_tokens")),
            cache_read_tokens=_int(_get(_get(usage, "input_tokens_details"), "cached_tokens")),
            reasoning_tokens=_int(_get(_get(usage, "output_tokens_details"), "reasoning_tokens")),
        )
    return None


# -- the dispatcher side: spans (runs) and stream progress -------------------------------


class _RunSpans(BaseSpanHandler[BaseSpan]):
    """Remembers open spans' parents, to find the outermost span of a call.

    Also tells the guard how each span ended: ``on_exit(span_id, result)`` (an LLM method
    returning its stream) and ``on_drop(span_id, err)`` (a method that raised).
    """

    on_exit: Any = None
    on_drop: Any = None

    def new_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        return BaseSpan(id_=id_, parent_id=parent_span_id)

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        if self.on_exit is not None:
            self.on_exit(id_, result)
        return self.open_spans.get(id_)

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> BaseSpan | None:
        if self.on_drop is not None:
            self.on_drop(id_, err)
        return self.open_spans.get(id_)

    def ancestry(self, span_id: str | None) -> list[str]:
        """``span_id`` and its open ancestors, innermost first."""
        out: list[str] = []
        while span_id is not None and span_id not in out:
            out.append(span_id)
            span = self.open_spans.get(span_id)
            span_id = span.parent_id if span is not None else None
        return out


class _StreamMeter(BaseEventHandler):
    """Counts streamed text per span, so a broken stream is billed for what it produced."""

    on_delta: Any = None

    @classmethod
    def class_name(cls) -> str:
        return "KavachStreamMeter"

    def handle(self, event: BaseEvent, **kwargs: Any) -> Any:
        if isinstance(event, LLMChatInProgressEvent | LLMCompletionInProgressEvent):
            delta = getattr(event.response, "delta", None)
            if self.on_delta is not None:
                self.on_delta(event.span_id, len(delta or ""))
        return None


# -- the legacy callback side: reserve and settle ----------------------------------------


class Instrumentation:
    """The handle ``instrument`` returns: undo it with ``uninstrument()``."""

    def __init__(self, guard: AgentKavach) -> None:
        self.guard = guard
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self._nested: set[str] = set()
        self._by_span: dict[str, str] = {}
        self._spans = _RunSpans()
        self._meter = _StreamMeter()
        self._meter.on_delta = self._streamed
        self._spans.on_exit = self._returned
        self._spans.on_drop = self._raised
        self._original_start: Callable[..., str] | None = None
        self._original_end: Callable[..., None] | None = None

    @property
    def active(self) -> bool:
        return self._original_start is not None

    @property
    def open_calls(self) -> int:
        """LLM calls reserved and not yet settled."""
        return len(self._calls)

    def _install(self) -> None:
        original_start = CallbackManager.on_event_start
        original_end = CallbackManager.on_event_end
        this = self

        def on_event_start(
            self: CallbackManager,
            event_type: CBEventType,
            payload: dict[str, Any] | None = None,
            event_id: str | None = None,
            parent_id: str | None = None,
            **kwargs: Any,
        ) -> str:
            if event_type != CBEventType.LLM:
                return original_start(self, event_type, payload, event_id, parent_id, **kwargs)
            event_id = event_id or str(uuid.uuid4())
            this._reserve(event_id, payload or {})
            try:
                return original_start(self, event_type, payload, event_id, parent_id, **kwargs)
            except BaseException as exc:  # no end event follows, and nothing was sent
                this._unsent(event_id, exc)
                raise

        def on_event_end(
            self: CallbackManager,
            event_type: CBEventType,
            payload: dict[str, Any] | None = None,
            event_id: str | None = None,
            **kwargs: Any,
        ) -> None:
            try:
                original_end(self, event_type, payload, event_id, **kwargs)
            finally:
                if event_type == CBEventType.LLM and event_id is not None:
                    this._settle(event_id, payload or {})

        CallbackManager.on_event_start = on_event_start  # type: ignore[method-assign]
        CallbackManager.on_event_end = on_event_end  # type: ignore[method-assign]
        self._original_start, self._original_end = original_start, original_end
        root = get_dispatcher()
        root.add_span_handler(self._spans)
        root.add_event_handler(self._meter)

    def uninstrument(self) -> None:
        """Stop guarding LlamaIndex; open holds are given back. Idempotent."""
        global _active
        with _install_lock:
            if self._original_start is None or self._original_end is None:
                return
            CallbackManager.on_event_start = self._original_start  # type: ignore[method-assign]
            CallbackManager.on_event_end = self._original_end  # type: ignore[method-assign]
            self._original_start = self._original_end = None
            root = get_dispatcher()
            root.span_handlers = [h for h in root.span_handlers if h is not self._spans]
            root.event_handlers = [h for h in root.event_handlers if h is not self._meter]
            if _active is self:
                _active = None
        with self._lock:
            calls = list(self._calls.values())
            self._calls.clear()
            self._by_span.clear()
            self._nested.clear()
        for call in calls:
            call.reservation.release(status="cancelled", error="uninstrumented before it ended")

    # -- reserve ------------------------------------------------------------------------

    def _reserve(self, event_id: str, payload: Mapping[str, Any]) -> None:
        span_id = active_span_id.get()
        ancestry = self._spans.ancestry(span_id)
        with self._lock:
            if any(s in self._by_span for s in ancestry):
                # Part of an LLM call already guarded (e.g. complete() calling chat()).
                self._nested.add(event_id)
                return
        model: Mapping[str, Any] = payload.get(EventPayload.SERIALIZED) or {}
        kwargs: Mapping[str, Any] = payload.get(EventPayload.ADDITIONAL_KWARGS) or {}
        messages = payload.get(EventPayload.MESSAGES)
        prompt = payload.get(EventPayload.PROMPT)
        run_id = current_run_id() or (ancestry[-1] if ancestry else None)
        spec = CallSpec(
            provider=_provider(model),
            model=str(model.get("model_name") or model.get("model") or "unknown"),
            messages=[_message_dict(m) for m in messages] if messages is not None else None,
            prompt=str(prompt) if prompt is not None else None,
            tools=kwargs.get("tools"),
            max_output_tokens=_max_tokens(model, kwargs),
            operation="chat" if messages is not None else "text_completion",
            run_id=run_id,
            tags={"integration": "llamaindex"},
        )
        reservation = self.guard.reserve(spec)
        with self._lock:
            self._calls[event_id] = _Call(reservation, span_id)
            if span_id is not None:
                self._by_span[span_id] = event_id

    def _streamed(self, span_id: str | None, chars: int) -> None:
        if span_id is None:
            return
        event_id = self._by_span.get(span_id)
        call = self._calls.get(event_id) if event_id is not None else None
        if call is not None:
            call.received = True
            call.streamed_chars += chars

    def _returned(self, span_id: str, result: Any) -> None:
        """An LLM method returned: if it is a stream, settle its call should it be dropped."""
        if not isinstance(result, Generator | AsyncGenerator):
            return
        event_id = self._by_span.get(span_id)
        if event_id is not None and event_id in self._calls:
            # Runs before the generator's own finalizer (weak references are cleared first),
            # which for an async generator only schedules aclose() on the event loop, if any.
            weakref.finalize(result, self._dropped, event_id)

    def _raised(self, span_id: str, err: BaseException | None) -> None:
        """An LLM method raised; its call is still open only if nothing was sent.

        LlamaIndex ends the event of every error raised by the provider call; one raised before
        its ``try`` (a cancelled rate limiter wait) leaves the event open.
        """
        event_id = self._by_span.get(span_id)
        if event_id is not None:
            self._unsent(event_id, err)

    def _unsent(self, event_id: str, err: BaseException | None) -> None:
        call = self._pop(event_id)
        if call is not None:
            status = _error_status(err) if err is not None else "error"
            why = f"{type(err).__name__}: {err}"[:500] if err is not None else None
            self._safely(call, lambda: call.reservation.release(status=status, error=why))

    def _dropped(self, event_id: str) -> None:
        # Called by the garbage collector, maybe while this thread holds self._lock, so no
        # lock: dict.pop is atomic, and whichever path pops the call settles it.
        call = self._calls.pop(event_id, None)
        if call is None:
            return
        if call.span_id is not None:
            self._by_span.pop(call.span_id, None)
        why = "the stream was dropped before its end"
        self._safely(call, lambda: _give_up(call, "cancelled", why))

    # -- settle -------------------------------------------------------------------------

    def _pop(self, event_id: str) -> _Call | None:
        with self._lock:
            if event_id in self._nested:
                self._nested.discard(event_id)
                return None
            call = self._calls.pop(event_id, None)
            if call is not None and call.span_id is not None:
                self._by_span.pop(call.span_id, None)
        return call

    def _settle(self, event_id: str, payload: Mapping[str, Any]) -> None:
        call = self._pop(event_id)
        if call is not None:
            self._safely(call, lambda: self._commit(call, payload))

    @staticmethod
    def _safely(call: _Call, settle: Callable[[], object]) -> None:
        try:
            settle()
        except Exception:
            # Settlement is reporting: never raise into the user's call. Give the hold back.
            logger.exception("kavach: could not settle a LlamaIndex call; releasing its hold")
            call.reservation.release(error="settlement failed")

    def _commit(self, call: _Call, payload: Mapping[str, Any]) -> None:
        r = call.reservation
        error = payload.get(EventPayload.EXCEPTION)
        if isinstance(error, BaseException):
            _give_up(call, _error_status(error), f"{type(error).__name__}: {error}"[:500])
            return
        response = payload.get(EventPayload.RESPONSE)
        if response is None:
            response = payload.get(EventPayload.COMPLETION)
        usage = usage_from_raw(_get(response, "raw")) if response is not None else None
        if usage is None:
            usage = _estimate(r, max(call.streamed_chars, len(_text(response))))
        elif usage.input_tokens == 0 and r.plan is not None:
            usage = replace(usage, input_tokens=r.plan.input_tokens)
        r.commit(
            usage,
            response_model=_response_model(response),
            finish_reasons=_finish_reasons(response),
            tool_calls=_tool_calls(response),
        )


_install_lock = threading.Lock()
_active: Instrumentation | None = None


def instrument(guard: AgentKavach) -> Instrumentation:
    """Guard every LlamaIndex LLM call in this process with ``guard``; returns a handle.

    Calling it again while instrumented returns the same handle (the first guard stays);
    ``uninstrument()`` first to switch guards.
    """
    global _active
    with _install_lock:
        if _active is not None:
            if _active.guard is not guard:
                logger.warning(
                    "kavach: LlamaIndex is already instrumented with %r; keeping it", _active.guard
                )
            return _active
        handle = Instrumentation(guard)
        handle._install()
        _active = handle
        return handle


def uninstrument() -> None:
    """Undo ``instrument``; a no-op when LlamaIndex is not instrumented."""
    handle = _active
    if handle is not None:
        handle.uninstrument()


# -- reading LlamaIndex's values ---------------------------------------------------------


def _provider(model: Mapping[str, Any]) -> str:
    name = str(model.get("class_name") or "unknown").lower()
    if name in _PROVIDERS:
        return _PROVIDERS[name]
    return name.removesuffix("_llm") or "unknown"


def _max_tokens(model: Mapping[str, Any], kwargs: Mapping[str, Any]) -> int | None:
    for value in (
        kwargs.get("max_tokens"),
        kwargs.get("max_completion_tokens"),
        model.get("max_tokens"),
        model.get("num_output"),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return None


def _message_dict(message: Any) -> dict[str, Any]:
    role = _get(message, "role")
    content = _get(message, "content")
    return {"role": str(getattr(role, "value", role)), "content": str(content or "")}


def _text(response: Any) -> str:
    if response is None:
        return ""
    message = _get(response, "message")
    if message is not None:
        return str(_get(message, "content") or "")
    return str(_get(response, "text") or "")


def _give_up(call: _Call, status: CallStatus, why: str) -> None:
    """Settle a call that ended without an answer, as ``kavach.stream`` settles a raw stream.

    A failure before anything arrived releases the hold: the provider refused the request or
    was never reached. A cancellation may come after the request was sent, which the provider
    bills whether or not it answers: the input estimate and whatever streamed.
    """
    r = call.reservation
    if status == "error" and not call.received:
        r.release(status=status, error=why)
        return
    r.commit(_estimate(r, call.streamed_chars), status=status, error=why)


def _estimate(r: Reservation, output_chars: int) -> Usage:
    input_tokens = r.plan.input_tokens if r.plan is not None else 0
    output = max(1, output_chars // 4) if output_chars else 0
    return Usage(input_tokens=input_tokens, output_tokens=output)


def _error_status(error: BaseException) -> CallStatus:
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
        return "cancelled"
    return "error"


def _response_model(response: Any) -> str | None:
    model = _get(_get(response, "raw"), "model")
    return str(model) if model else None


def _finish_reasons(response: Any) -> list[str]:
    raw = _get(response, "raw")
    out: list[str] = []
    for choice in _get(raw, "choices") or ():
        reason = _get(choice, "finish_reason")
        if reason:
            out.append(str(reason))
    stop = _get(raw, "stop_reason") or _get(_get(raw, "delta"), "stop_reason")
    if stop:
        out.append(str(stop))
    return out


def _tool_calls(response: Any) -> list[str]:
    """Tool calls in the answer as ``name(args)``, for the loop detector."""
    message = _get(response, "message")
    out: list[str] = []
    for block in _get(message, "blocks") or ():
        name = _get(block, "tool_name")
        if name:
            out.append(tool_signature(str(name), _get(block, "tool_kwargs")))
    if out:
        return out
    for call in (_get(message, "additional_kwargs") or {}).get("tool_calls") or ():
        function = _get(call, "function")
        name = _get(function, "name") or _get(call, "name")
        if name:
            args = _get(function, "arguments") or _get(call, "input")
            out.append(tool_signature(str(name), args))
    return out
