"""One generic wrapper that guards every billable call of a provider SDK client.

Each provider module (``openai``, ``anthropic``, ``google``, ``mistral``) supplies only
``Endpoint`` values: how to read a request into a ``CallSpec``, which field carries the
request's max output tokens, how to read an ``Outcome`` (usage, tool calls, finish reasons)
from a response and a ``StreamMeter`` for its stream items. This module drives the guard's
``Reservation`` around the SDK's own call and adds nothing to the accounting:

    reserve (refusals raise here, before any HTTP request and outside the SDK's retry loop)
    -> strict mode: set the request's max output tokens to what the reservation pays for
    -> the SDK call, unchanged otherwise (its retries, errors and types are its own)
    -> commit the outcome | release on an error | hand a stream to ``kavach.stream``

Paid APIs the guard cannot price by usage (DALL·E images, audio, batches, ...) are
``Unmetered``: their calls stop with the agent and are otherwise passed on, not counted. An
API metered for some models only (OpenAI's Images API) is ``PerRequest``: the request's body
chooses its ``Endpoint`` or ``Unmetered``, call by call.

Clients are instrumented per instance, never per class: OpenAI and Anthropic at their one
``request`` method (every resource, ``with_raw_response`` and the ``.stream()`` helpers go
through it), Google and Mistral at their billable resource methods. The client keeps its
type; attributes pass through; wrapping twice is a no-op; ``unwrap`` undoes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import inspect
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kavach.errors import KavachConfigError, MissingDependencyError
from kavach.events import CallStatus
from kavach.spec import CallSpec
from kavach.stream import Outcome, StreamMeter, StreamSettlement, ametered, metered
from kavach.usage import PriceVariant, Usage

if TYPE_CHECKING:
    from kavach.client import AgentKavach
    from kavach.reservation import Reservation

logger = logging.getLogger("kavach")

__all__ = [
    "Endpoint",
    "Outcome",
    "PerRequest",
    "StoredContext",
    "TokenCounter",
    "bound_web_searches",
    "price_variant",
    "Unmetered",
    "field",
    "patch",
    "READERS",
    "reader",
    "remember",
    "tool_signature",
    "web_search_uses",
    "unwrap",
    "wrap",
]

C = TypeVar("C")
R = TypeVar("R")
Body = dict[str, Any]

_GUARD_ATTR = "_kavach_guard"
_NO_ROUTE = object()
_PATCHES_ATTR = "_kavach_patches"


def field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` for SDK models, ``obj[name]`` for dicts; ``default`` when absent or None."""
    read = READERS.get(type(obj)) or _reader(type(obj))
    value = read(obj, name, None)
    return default if value is None else value


def reader(obj: Any) -> Callable[[Any, str, Any], Any]:
    """How to read ``obj``'s fields: ``read(obj, name, None)``. For the hot paths that read
    several fields of one object (usage on every call), where ``field`` per name costs more;
    they look in ``READERS`` first, which saves even this call."""
    read = READERS.get(type(obj))
    return read if read is not None else _reader(type(obj))


# How field() reads each type, decided once per type: usage is read on every call, and an
# ABC isinstance check costs more than the read itself.
READERS: dict[type, Callable[[Any, str, Any], Any]] = {dict: dict.get, type(None): getattr}


def _reader(kind: type) -> Callable[[Any, str, Any], Any]:
    mapping = issubclass(kind, Mapping) and not hasattr(kind, "__pydantic_fields__")
    read: Callable[[Any, str, Any], Any] = kind.get if mapping else getattr  # type: ignore[attr-defined]
    if len(READERS) < 1024:  # classes made on the fly must not grow it forever
        READERS[kind] = read
    return read


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to guard one billable API. All functions are pure reads of the request or response."""

    operation: str
    read: Callable[[Mapping[str, Any]], CallSpec]
    """The request (JSON body, or the keyword arguments of a method) as a ``CallSpec``."""
    outcome: Callable[[Any], Outcome]
    """Usage and details of a non-streamed response."""
    limit: Callable[[Body, int], Body] | None = None
    """Strict mode: a copy of the request with its max output tokens set."""
    meter: Callable[[Mapping[str, Any]], StreamMeter] | None = None
    """A fresh meter for one streamed response to this request."""
    prepare_stream: Callable[[Body], Body] | None = None
    """Changes a streamed request needs to be metered (OpenAI: ask for the usage chunk)."""
    estimate_unreported_input: bool = False
    """The provider may report no input tokens (Gemini API embeddings): settle such a response
    at the reserved input estimate rather than at zero, which would make a billed call free."""
    context: StoredContext | None = None
    """Context the provider keeps and adds to a request's input, which ``read`` holds only
    when this process knows it: how to look up what it does not (the one part that does I/O)."""
    reads_response: bool = True
    """False when ``outcome`` needs nothing from the answer (speech billed by the character:
    the answer is audio, and reports nothing): a raw response is then not parsed, so a body
    the caller streams (``with_streaming_response``) is left for the caller to read."""


@dataclass(frozen=True, slots=True)
class StoredContext:
    """Earlier turns a provider adds to a request's input (an OpenAI ``previous_response_id``).

    ``unknown`` names the stored item a request refers to that this process has not seen
    answered (None: nothing to look up; logged as ``str(ref)``); ``fetch`` / ``afetch`` read
    it through the wrapped client before the call is reserved, and remember its size for
    ``read``. A lookup that fails is logged and the request held for its own input, as
    before: the provider refuses a request whose stored item cannot be read."""

    unknown: Callable[[Mapping[str, Any]], Any]
    fetch: Callable[[Any, Any], object]
    afetch: Callable[[Any, Any], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Unmetered:
    """A paid API the guard cannot meter (no usage-based price): its calls go through
    ``AgentKavach.admit_unmetered``, which stops them with the agent and warns, once, that
    their cost is not counted."""

    provider: str
    operation: str
    """What the call does, as events and the warning name it (``image_generation``)."""


@dataclass(frozen=True, slots=True)
class PerRequest:
    """A paid API metered for some requests and not others: ``choose`` reads a request's
    JSON body (and uploaded files) and returns how to guard it. OpenAI's Images API bills the
    GPT image models by tokens (an ``Endpoint``) and DALL·E per image (``Unmetered``); its
    transcriptions are held for the length of the speech uploaded. Routes are cached per
    path, so the choice is made on every call, after the cache."""

    choose: Callable[[Mapping[str, Any], Any], Endpoint | Unmetered]
    """Called with the JSON body and the files of a multipart request (None for others)."""
    unmetered: Unmetered
    """For a request without a JSON body, which ``choose`` cannot read."""


Route = Endpoint | Unmetered | PerRequest | None


def _admit_unmetered(
    guard: AgentKavach,
    unmetered: Unmetered,
    body: Any,
    uploads: bool = False,
    refusable: bool = True,
) -> None:
    """``AgentKavach.admit_unmetered`` for a request ``body`` (a JSON body, or a method's
    keyword arguments). ``uploads``: the request also sends files, which the body does not
    show, so two such requests with one body need not be the same (no loop is looked for).
    ``refusable=False``: a call the server started."""
    guard.admit_unmetered(
        _unmetered_spec(unmetered, body), None if uploads else body, refusable=refusable
    )


async def _aadmit_unmetered(
    guard: AgentKavach, unmetered: Unmetered, body: Any, uploads: bool = False
) -> None:
    """``_admit_unmetered`` for async clients: counted without blocking the event loop."""
    await guard.aadmit_unmetered(_unmetered_spec(unmetered, body), None if uploads else body)


async def _aunmetered_call(
    guard: AgentKavach,
    unmetered: Unmetered,
    body: Any,
    uploads: bool,
    send: Callable[[], Awaitable[R]],
) -> R:
    """Admit an async client's unmetered request, then make it with ``send``."""
    await _aadmit_unmetered(guard, unmetered, body, uploads)
    return await send()


def _unmetered_spec(unmetered: Unmetered, body: Any) -> CallSpec:
    model = body.get("model") if isinstance(body, Mapping) else None
    return CallSpec(
        provider=unmetered.provider, model=str(model or ""), operation=unmetered.operation
    )


def set_max_tokens(*names: str) -> Callable[[Body, int], Body]:
    """A ``limit`` that lowers the first of ``names`` the request has, or sets ``names[0]``."""

    def limit(body: Body, tokens: int) -> Body:
        for name in names:
            current = body.get(name)
            if current is not None:
                return {**body, name: min(int(current), tokens)}
        return {**body, names[0]: tokens}

    return limit


ASSUMED_SEARCHES = 10
"""Searches held for a request whose search tool sets no bound (Anthropic ``max_uses``,
OpenAI ``max_tool_calls``): the 10 iterations Anthropic allows a turn of server tools.
The call is settled at the searches it reports, whatever this assumed."""


def remember(store: dict[str, int], key: str, value: int, limit: int) -> None:
    """Set ``store[key]`` as its newest entry, dropping the oldest past ``limit`` entries
    (stored context by id: response ids, cache names)."""
    store.pop(key, None)  # re-inserted last: the newest
    store[key] = value
    while len(store) > limit:
        try:
            del store[next(iter(store))]
        except (KeyError, RuntimeError, StopIteration):  # another thread got there first
            break


def web_search_uses(tools: Any) -> int:
    """Searches Anthropic-style web search tools may make (``{"type": "web_search_...",
    "max_uses": 5}``): their ``max_uses``, or ``ASSUMED_SEARCHES`` for one that sets none."""
    total = 0
    for tool in tools if isinstance(tools, list) else ():
        if _is_web_search(tool):
            uses = tool.get("max_uses")
            total += uses if type(uses) is int and uses >= 0 else ASSUMED_SEARCHES
    return total


def _is_web_search(tool: Any) -> bool:
    kind = tool.get("type") if isinstance(tool, Mapping) else None
    return isinstance(kind, str) and kind.startswith("web_search")


def bound_web_searches(body: Body) -> Body:
    """Strict mode: give each Anthropic-style web search tool without ``max_uses`` the
    ``ASSUMED_SEARCHES`` it is held for, so the provider stops there too."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not any(_unbounded_search(t) for t in tools):
        return body
    bounded = [
        {**tool, "max_uses": ASSUMED_SEARCHES} if _unbounded_search(tool) else tool
        for tool in tools
    ]
    return {**body, "tools": bounded}


def _unbounded_search(tool: Any) -> bool:
    return _is_web_search(tool) and type(tool.get("max_uses")) is not int


def price_variant(key: str, tier: Any) -> PriceVariant | None:
    """The price variant a request's or response's tier names (``key`` is genai-prices' name
    for it: ``service_tier``, ``speed``): ``None`` when it names none or leaves the tier to
    the account (``auto``), ``()`` for the standard tier. Enums (Gemini's) give their value.

    >>> price_variant("service_tier", "priority"), price_variant("service_tier", "default")
    ((('service_tier', 'priority'),), ())
    """
    if tier is None:
        return None
    known = _VARIANTS.get((key, tier), _UNKNOWN) if type(tier) is str else _UNKNOWN
    if known is not _UNKNOWN:
        return known  # type: ignore[return-value]
    name = str(getattr(tier, "value", tier)).lower()
    variant: PriceVariant | None = ((key, name),)
    if name in _ACCOUNT_TIERS:
        variant = None
    elif name in _STANDARD_TIERS:
        variant = ()
    if type(tier) is str and len(_VARIANTS) < 256:  # every response names its tier
        _VARIANTS[(key, tier)] = variant
    return variant


_VARIANTS: dict[tuple[str, str], PriceVariant | None] = {}
_UNKNOWN = object()
_ACCOUNT_TIERS = frozenset(("auto", "unspecified", "service_tier_unspecified", ""))
_STANDARD_TIERS = frozenset(("default", "standard"))


def tool_signature(name: str, arguments: Any) -> str:
    """``name(args)`` with the arguments as canonical JSON, whether they came as a dict, a
    JSON string or streamed JSON fragments, so the loop detector sees repeats as equal."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments else {}
        except ValueError:
            return f"{name}({arguments})"
    try:
        text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(arguments)
    return f"{name}({text})"


class TokenCounter:
    """Base for stream meters: counts output tokens from text deltas, cheaply.

    Subclasses set ``exact = True`` when they count with ``count_one`` (one token a chunk,
    never more than the provider produced) or read the provider's running count.
    """

    __slots__ = (
        "complete",
        "finish_reasons",
        "model",
        "output_tokens",
        "received",
        "tools",
        "usage",
    )

    def __init__(self) -> None:
        self.output_tokens = 0
        self.received = False
        self.complete = False
        self.usage: Usage | None = None
        self.model: str | None = None
        self.finish_reasons: list[str] = []
        self.tools: dict[int, list[str]] = {}

    exact = False

    def count(self, text: Any) -> None:
        """Estimate a multi-token text delta: about four characters a token, at least one."""
        if text and type(text) is str:
            n = len(text) >> 2
            self.output_tokens += n if n else 1

    def count_one(self, text: Any) -> None:
        """A delta that carries one token (OpenAI and Mistral stream one token a chunk)."""
        if text and type(text) is str:
            self.output_tokens += 1

    def tool(self, index: int, name: str | None, arguments: str | None) -> None:
        entry = self.tools.setdefault(index, ["", ""])
        if name:
            entry[0] += name
        if arguments:
            entry[1] += arguments

    def outcome(self, estimated_input_tokens: int) -> Outcome:
        usage = self.usage
        if usage is None:
            usage = Usage(input_tokens=estimated_input_tokens, output_tokens=self.output_tokens)
        elif not self.complete:
            # Usage reported so far, with what was metered since: every kind it reports
            # (images, audio, reasoning, cache) keeps its own price.
            usage = dataclasses.replace(
                usage,
                input_tokens=usage.input_tokens or estimated_input_tokens,
                output_tokens=max(usage.output_tokens, self.output_tokens),
            )
        return Outcome(
            usage=usage,
            response_model=self.model,
            finish_reasons=tuple(self.finish_reasons),
            tool_calls=tuple(tool_signature(name, args) for name, args in self.tools.values()),
        )


# -- the lifecycle around one call --------------------------------------------------------


def _failure(exc: BaseException) -> tuple[CallStatus, str]:
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
        return "cancelled", type(exc).__name__
    return "error", f"{type(exc).__name__}: {exc}"[:500]


def _prepare(
    guard: AgentKavach, endpoint: Endpoint, body: Body, r: Reservation, streamed: bool
) -> Body:
    units = r.max_output_tokens
    if endpoint.limit is not None and guard.mode == "strict" and units is not None:
        # The reservation pays for every choice's output together; the limit is per choice.
        choices = r.spec.choices
        body = endpoint.limit(body, units if choices == 1 else units // choices)
    if streamed and endpoint.prepare_stream is not None:
        body = endpoint.prepare_stream(body)
    return body


def _limited(guard: AgentKavach, endpoint: Endpoint, spec: CallSpec) -> bool:
    """Whether the request sent carries max output tokens (so the provider stops there)."""
    return spec.max_output_tokens is not None or (
        guard.mode == "strict" and endpoint.limit is not None
    )


def _outcome(
    endpoint: Endpoint, response: Any, r: Reservation, answered: Answered = None
) -> Outcome:
    """The outcome of a non-streamed response (a raw one is parsed first: the SDK caches
    what ``parse()`` returns, so the caller's own ``parse()`` gets the same object)."""
    raw = _RAW_TYPES.get(type(response))
    if raw is None:
        raw = _is_raw(response)
    if raw and endpoint.reads_response:
        try:
            response = response.parse()
        except Exception:
            billed = answered() if answered is not None else None
            if billed is None:
                return _unreadable(r)
            response = billed  # read, then refused by the SDK's post-parser
    return _read_outcome(endpoint, response, r)


async def _aoutcome(
    endpoint: Endpoint, response: Any, r: Reservation, answered: Answered = None
) -> Outcome:
    """``_outcome`` for a raw response of an async client, whose ``parse()`` may be a
    coroutine (``with_streaming_response``) that reads the body."""
    try:
        parsed = response.parse()
        if inspect.isawaitable(parsed):
            parsed = await parsed
    except Exception:
        parsed = answered() if answered is not None else None
        if parsed is None:
            return _unreadable(r)
    return _read_outcome(endpoint, parsed, r)


def _failed_settlement(
    endpoint: Endpoint, response: Any, r: Reservation, status: CallStatus, error: str
) -> tuple[Usage, dict[str, Any]]:
    """How to settle a call the provider answered (and billed) but the SDK then failed."""
    outcome = _read_outcome(endpoint, response, r)
    return outcome.usage, {
        "status": status,
        "error": error,
        "response_model": outcome.response_model,
        "finish_reasons": outcome.finish_reasons,
        "tool_calls": outcome.tool_calls,
    }


def _unreadable(r: Reservation) -> Outcome:
    # The call was made and billed; settle at the worst case rather than lose it.
    logger.exception("kavach: could not read usage of a %s response", r.spec.provider)
    return Outcome(_worst_usage(r))


def _worst_usage(r: Reservation) -> Usage:
    plan = r.plan
    return Usage(
        input_tokens=plan.input_tokens if plan is not None else 0,
        output_tokens=r.max_output_tokens or 0,
    )


def _read_outcome(endpoint: Endpoint, response: Any, r: Reservation) -> Outcome:
    try:
        outcome = endpoint.outcome(response)
    except Exception:
        return _unreadable(r)
    if outcome.billed_later:  # still running: it bills up to its limits, and no one reports it
        return dataclasses.replace(outcome, usage=_worst_usage(r))
    if endpoint.estimate_unreported_input and not outcome.usage.input_tokens:
        plan = r.plan
        if plan is not None:
            usage = dataclasses.replace(outcome.usage, input_tokens=plan.input_tokens)
            outcome = dataclasses.replace(outcome, usage=usage)
    return outcome


_RAW_TYPES: dict[type, bool] = {}


def _parse(response: Any) -> Any:
    """What a raw response's ``parse()`` gives (for an async one, an awaitable of it)."""
    return response.parse()


def _is_raw(response: Any) -> bool:
    # with_raw_response / with_streaming_response: the SDK returns an API response whose
    # parse() gives (and caches) the response object or stream. Decided once per type, on
    # the class (``http_request`` is a property there; ``http_response`` is set only on
    # instances): hasattr on a pydantic model raises and catches inside, which is slow.
    kind = type(response)
    raw = _RAW_TYPES.get(kind)
    if raw is None:
        raw = _RAW_TYPES[kind] = hasattr(kind, "parse") and hasattr(kind, "http_request")
    return raw


Attach = Callable[[Any, StreamSettlement], Any]
Answered = Callable[[], Any] | None


def guarded_call(
    guard: AgentKavach,
    endpoint: Endpoint,
    body: Body,
    send: Callable[[Body], R],
    streamed: bool,
    attach: Attach,
    answered: Answered = None,
    client: Any = None,
) -> R:
    """Reserve, make the SDK call with ``send``, then settle or hand the stream to a meter.

    ``answered``: the provider's response when the SDK failed after it came (see
    ``_observe_post_parser``), so a billed call is settled rather than given back.
    ``client``: the wrapped client, through which stored context the request names and this
    process has not seen is looked up first (``Endpoint.context``)."""
    if not guard.enabled:  # a passthrough: the request as written, nothing read or held
        return send(body)
    context = endpoint.context
    if context is not None and (ref := context.unknown(body)) is not None:
        try:
            context.fetch(client, ref)
        except Exception as exc:
            _lookup_failed(ref, exc)
    r = guard.reserve(spec := endpoint.read(body))
    try:
        sent = body  # as it is, unless strict mode or a stream changes it
        if streamed or (endpoint.limit is not None and guard.mode == "strict"):
            sent = _prepare(guard, endpoint, body, r, streamed)
        response = send(sent)
        if streamed and endpoint.meter is not None:
            settlement = StreamSettlement(r, endpoint.meter(body), _limited(guard, endpoint, spec))
            if _is_raw(response):  # the stream is what parse() gives, and caches
                settlement.raw = True
                attach(_parse(response), settlement)
                return response
            return attach(response, settlement)  # type: ignore[no-any-return]
    except BaseException as exc:
        status, error = _failure(exc)
        billed = answered() if answered is not None else None
        if billed is None:
            r.release(status=status, error=error)
        else:
            usage, details = _failed_settlement(endpoint, billed, r, status, error)
            r.commit(usage, **details)
        raise
    outcome = _outcome(endpoint, response, r, answered)
    r.commit(
        outcome.usage,
        response_model=outcome.response_model,
        finish_reasons=outcome.finish_reasons,
        tool_calls=outcome.tool_calls,
    )
    return response


async def aguarded_call(
    guard: AgentKavach,
    endpoint: Endpoint,
    body: Body,
    send: Callable[[Body], Awaitable[R]],
    streamed: bool,
    attach: Attach,
    answered: Answered = None,
    client: Any = None,
) -> R:
    """``guarded_call`` for async clients."""
    if not guard.enabled:
        return await send(body)
    context = endpoint.context
    if context is not None and (ref := context.unknown(body)) is not None:
        try:
            await context.afetch(client, ref)
        except Exception as exc:
            _lookup_failed(ref, exc)
    # An in-process ledger does no I/O: its sync methods spare two coroutines a call.
    in_process = getattr(guard.ledger, "in_process", False)
    spec = endpoint.read(body)
    r = guard.reserve(spec) if in_process else await guard.areserve(spec)
    try:
        sent = body  # as it is, unless strict mode or a stream changes it
        if streamed or (endpoint.limit is not None and guard.mode == "strict"):
            sent = _prepare(guard, endpoint, body, r, streamed)
        response = await send(sent)
        if streamed and endpoint.meter is not None:
            settlement = StreamSettlement(r, endpoint.meter(body), _limited(guard, endpoint, spec))
            if _is_raw(response):  # the stream is what parse() gives (awaited), and caches
                settlement.raw = True
                stream = _parse(response)
                attach(await stream if inspect.isawaitable(stream) else stream, settlement)
                return response
            return attach(response, settlement)  # type: ignore[no-any-return]
    except BaseException as exc:
        status, error = _failure(exc)
        billed = answered() if answered is not None else None
        with _shield():
            if billed is None:
                await r.arelease(status=status, error=error)
            else:
                usage, details = _failed_settlement(endpoint, billed, r, status, error)
                await r.acommit(usage, **details)
        raise
    raw = _RAW_TYPES.get(type(response))
    if raw is None:
        raw = _is_raw(response)
    if not raw or not endpoint.reads_response:
        outcome = _read_outcome(endpoint, response, r)
    else:
        try:
            outcome = await _aoutcome(endpoint, response, r, answered)
        except BaseException:  # cancelled while reading the body: billed all the same
            with _shield():
                await r.acommit(_worst_usage(r), status="cancelled")
            raise
    if in_process:
        r.commit(
            outcome.usage,
            response_model=outcome.response_model,
            finish_reasons=outcome.finish_reasons,
            tool_calls=outcome.tool_calls,
        )
    else:
        await r.acommit(
            outcome.usage,
            response_model=outcome.response_model,
            finish_reasons=outcome.finish_reasons,
            tool_calls=outcome.tool_calls,
        )
    return response


def _shield() -> Any:
    import anyio

    return anyio.CancelScope(shield=True)


# -- attaching a meter to the SDK's own stream object -------------------------------------


def _hook_close(response: Any, settlement: StreamSettlement) -> Callable[[], object]:
    """Settle before the HTTP response closes (the SDK closes it on normal end and ``close()``).

    Returns the unhooked close for the cut path. The hook holds the response strongly: a
    stream dropped unread is freed by the garbage collector (the SDK's stream and its generator
    form a cycle), which clears weak references before the SDK's generator finalizer closes
    the response, so a weak one would skip the close and leave the connection to the
    transport's own generator finalizers (httpcore2 then closes one generator from two tasks).
    The hook removes itself on the first close, which breaks the cycle it makes.
    """
    real_close = functools.partial(type(response).close, response)

    def close() -> None:
        response.__dict__.pop("close", None)
        try:
            settlement.on_close()
        finally:
            real_close()

    response.close = close
    return real_close


def _hook_aclose(response: Any, settlement: StreamSettlement) -> Callable[[], Awaitable[object]]:
    real_aclose = functools.partial(type(response).aclose, response)

    async def aclose() -> None:
        response.__dict__.pop("aclose", None)
        try:
            await settlement.aon_close()
        finally:
            await real_aclose()

    response.aclose = aclose
    return real_aclose


def _finish_and_close(settlement: StreamSettlement, close: Callable[[], object]) -> None:
    settlement.finish_on_gc()
    try:
        close()
    except Exception:  # the connection may already be gone at interpreter exit
        logger.debug("kavach: closing a dropped stream failed", exc_info=True)


def attach_sync(attr: str) -> Attach:
    """Meter an SDK stream object whose items come from ``stream.<attr>`` (an iterator)."""

    def attach(result: Any, settlement: StreamSettlement) -> Any:
        close = _hook_close(result.response, settlement)
        gen: Iterator[Any] = metered(getattr(result, attr), settlement, close)
        # A stream dropped unread: settle and give the connection back.
        weakref.finalize(gen, _finish_and_close, settlement, close)
        setattr(result, attr, gen)
        return result

    return attach


def attach_async(attr: str) -> Attach:
    """Meter an async SDK stream object whose items come from ``stream.<attr>``."""

    def attach(result: Any, settlement: StreamSettlement) -> Any:
        aclose = _hook_aclose(result.response, settlement)
        gen: AsyncIterator[Any] = ametered(getattr(result, attr), settlement, aclose)
        weakref.finalize(gen, settlement.finish_on_gc)
        setattr(result, attr, gen)
        return result

    return attach


def attach_iterator(result: Iterator[Any], settlement: StreamSettlement) -> Iterator[Any]:
    """Meter a plain generator of items (google-genai streams)."""
    close = getattr(result, "close", None) or (lambda: None)
    gen = metered(result, settlement, close)
    weakref.finalize(gen, settlement.finish_on_gc)
    return gen


def attach_aiterator(
    result: AsyncIterator[Any], settlement: StreamSettlement
) -> AsyncIterator[Any]:
    aclose = getattr(result, "aclose", None)

    async def close() -> None:
        if aclose is not None:
            await aclose()

    gen = ametered(result, settlement, close)
    weakref.finalize(gen, settlement.finish_on_gc)
    return gen


# -- instrumenting clients ----------------------------------------------------------------


def patch(client: Any, owner: Any, name: str, value: Any) -> None:
    """Set ``owner.name`` to ``value`` on this instance (never the class), for ``unwrap``."""
    owner.__dict__[name] = value
    client.__dict__.setdefault(_PATCHES_ATTR, []).append((owner, name))


def _resend(
    original: Callable[..., Any],
    cast_to: Any,
    options: Any,
    stream: bool,
    stream_cls: Any,
    body: Body,
) -> Any:
    """Make the SDK's request with ``body``, which strict mode or a stream may have changed
    and which holds the caller's ``extra_body`` already (see ``_request_body``)."""
    merged = isinstance(options.extra_json, Mapping)
    if body is not options.json_data or merged:
        update = {"json_data": body, "extra_json": None} if merged else {"json_data": body}
        options = options.model_copy(update=update)
    return original(cast_to, options, stream=stream, stream_cls=stream_cls)


def _request_body(options: Any) -> Any:
    """The JSON body the SDK will send: its ``json_data`` with the caller's ``extra_body``
    over it, as the SDK merges them when it builds the request. Read apart, an
    ``extra_body={"max_tokens": ...}`` would undo strict mode's limit and be reserved for
    the default, and an ``extra_body`` ``stream_options`` would drop the usage chunk."""
    body, extra = options.json_data, options.extra_json
    if extra is None or not isinstance(extra, Mapping):
        return body
    if body is None:
        body = {}
    elif not isinstance(body, Mapping):
        return body  # the SDK refuses to merge these itself
    # The SDKs drop ``Omit`` values when they merge (each SDK has its own Omit class).
    merged = {**body, **extra}
    return {k: v for k, v in merged.items() if type(v).__name__ != "Omit"}


def _observe_post_parser(options: Any) -> tuple[Any, Callable[[], Any]]:
    """Keep what a ``parse()`` call's post-parser is given: the provider's response.

    ``chat.completions.parse``, ``responses.parse`` and Anthropic's ``messages.parse`` read
    the reply into the caller's type in a post-parser the SDK runs inside ``request``. When
    it raises (a reply cut at max tokens: ``LengthFinishReasonError``; JSON that does not
    validate), the call was made and billed, but the error left no response to read, and
    the hold was given back as if nothing had been spent. The SDK's own post-parser still
    runs, unchanged, on the same object.
    """
    post_parser = options.post_parser
    seen: list[Any] = []

    def observe(parsed: Any) -> Any:
        seen.append(parsed)
        return post_parser(parsed)

    def answered() -> Any:
        return seen[0] if seen else None

    return options.model_copy(update={"post_parser": observe}), answered


def _lookup_failed(ref: Any, exc: Exception) -> None:
    logger.warning(
        "kavach: could not look up %s, whose earlier turns the provider adds to this request's "
        "input (%s: %s); the request is held for its own input only",
        ref,
        type(exc).__name__,
        str(exc)[:200],
    )


def guard_request_method(
    client: Any,
    guard: AgentKavach,
    endpoint_for: Callable[[str, str], Route],
    *,
    is_async: bool,
) -> None:
    """Guard a Stainless client (OpenAI, Anthropic) at its one ``request`` method.

    That method sits outside the SDK's retry loop, so a refusal is raised once, is never
    retried and never becomes an ``APIConnectionError``.
    """
    original = client.request
    attach = attach_async("_iterator") if is_async else attach_sync("_iterator")

    routes: dict[tuple[str, str], Route] = {}  # a few paths, every call

    def route(options: Any, body: Any) -> Endpoint | Unmetered | None:
        key = (options.method, options.url)
        endpoint = routes.get(key, _NO_ROUTE)
        if endpoint is _NO_ROUTE:
            endpoint = endpoint_for(options.method, options.url.split("?", 1)[0])
            if len(routes) < 256:  # paths with ids in them must not grow it forever
                routes[key] = endpoint
        if type(endpoint) is Endpoint:
            if type(body) is not dict and not isinstance(body, Mapping):
                return None  # not a JSON request: nothing to read
            return endpoint  # type: ignore[return-value]
        if type(endpoint) is PerRequest:  # after the Endpoint test: chat calls never get here
            if isinstance(body, Mapping):
                return endpoint.choose(body, options.files)
            return endpoint.unmetered
        return endpoint  # type: ignore[return-value]

    if is_async:
        # A plain function returning the awaitable the SDK awaits: one coroutine less a call.
        def arequest(
            cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
        ) -> Awaitable[Any]:
            body = options.json_data if options.extra_json is None else _request_body(options)
            endpoint = route(options, body)
            if type(endpoint) is Endpoint:
                answered = None
                if callable(options.post_parser):  # a parse() call
                    options, answered = _observe_post_parser(options)
                send = functools.partial(_resend, original, cast_to, options, stream, stream_cls)
                return aguarded_call(guard, endpoint, body, send, stream, attach, answered, client)
            if isinstance(endpoint, Unmetered):
                send_as_is = functools.partial(
                    original, cast_to, options, stream=stream, stream_cls=stream_cls
                )
                uploads = options.files is not None
                return _aunmetered_call(guard, endpoint, body, uploads, send_as_is)
            return original(cast_to, options, stream=stream, stream_cls=stream_cls)  # type: ignore[no-any-return]

        patch(client, client, "request", arequest)
    else:

        def request(
            cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
        ) -> Any:
            body = options.json_data if options.extra_json is None else _request_body(options)
            endpoint = route(options, body)
            if type(endpoint) is Endpoint:
                answered = None
                if callable(options.post_parser):  # a parse() call
                    options, answered = _observe_post_parser(options)
                send = functools.partial(_resend, original, cast_to, options, stream, stream_cls)
                return guarded_call(guard, endpoint, body, send, stream, attach, answered, client)
            if isinstance(endpoint, Unmetered):
                _admit_unmetered(guard, endpoint, body, options.files is not None)
            return original(cast_to, options, stream=stream, stream_cls=stream_cls)

        patch(client, client, "request", request)

    # with_options()/copy() build a new client: guard it too.
    original_copy = client.copy

    def copy(*args: Any, **kwargs: Any) -> Any:
        return wrap(original_copy(*args, **kwargs), guard)

    patch(client, client, "copy", copy)
    patch(client, client, "with_options", copy)


def guard_method(
    client: Any,
    owner: Any,
    name: str,
    guard: AgentKavach,
    endpoint: Endpoint,
    *,
    streamed: bool | Callable[[Mapping[str, Any]], bool] = False,
    is_async: bool = False,
    attach: Attach = attach_iterator,
) -> None:
    """Guard one keyword-argument SDK method (Google, Mistral) with ``endpoint``.

    ``streamed``: whether the method returns a stream, or, for a method that streams when
    asked (Mistral's ``responses.create(stream=True)``), a function of its arguments that
    tells. A method missing from ``owner`` (an older SDK) is skipped only in that case.
    """
    original = getattr(owner, name, None) if callable(streamed) else getattr(owner, name)
    if original is None:
        return

    def send(body: Body) -> Any:
        return original(**body)

    if is_async:
        if callable(streamed):
            asks = streamed

            async def amethod(**kwargs: Any) -> Any:
                return await aguarded_call(
                    guard, endpoint, kwargs, send, asks(kwargs), attach, client=client
                )

        else:
            always = streamed

            async def amethod(**kwargs: Any) -> Any:
                return await aguarded_call(
                    guard, endpoint, kwargs, send, always, attach, client=client
                )

        patch(client, owner, name, functools.wraps(original)(amethod))
    else:
        if callable(streamed):
            asks = streamed

            def method(**kwargs: Any) -> Any:
                return guarded_call(
                    guard, endpoint, kwargs, send, asks(kwargs), attach, client=client
                )

        else:
            always = streamed

            def method(**kwargs: Any) -> Any:
                return guarded_call(guard, endpoint, kwargs, send, always, attach, client=client)

        patch(client, owner, name, functools.wraps(original)(method))


def guard_unmetered_method(
    client: Any, owner: Any, name: str, guard: AgentKavach, unmetered: Unmetered
) -> None:
    """Route one paid SDK method the guard cannot meter (Google, Mistral) through
    ``admit_unmetered``; absent methods (older SDKs) are skipped."""
    original = getattr(owner, name, None)
    if original is None:
        return
    if asyncio.iscoroutinefunction(original):

        async def amethod(*args: Any, **kwargs: Any) -> Any:
            await _aadmit_unmetered(guard, unmetered, kwargs)
            return await original(*args, **kwargs)

        patch(client, owner, name, functools.wraps(original)(amethod))
    else:

        def method(*args: Any, **kwargs: Any) -> Any:
            _admit_unmetered(guard, unmetered, kwargs)
            return original(*args, **kwargs)

        patch(client, owner, name, functools.wraps(original)(method))


_PROVIDERS = {
    "openai": ("kavach_integrations.openai", "openai"),
    "anthropic": ("kavach_integrations.anthropic", "anthropic"),
    "google": ("kavach_integrations.google", "google"),
    "mistralai": ("kavach_integrations.mistral", "mistral"),
}


def wrap(client: C, guard: AgentKavach) -> C:
    """Guard every billable call made through ``client``; returns the same client.

    Accepts ``OpenAI``/``AsyncOpenAI`` (and Azure), ``Anthropic``/``AsyncAnthropic``,
    google-genai ``Client`` (its ``.aio`` included) and ``Mistral``. Wrapping twice is a
    no-op. ``count_tokens``, model listing and other free endpoints pass untouched.

    >>> client = guard.wrap(OpenAI())                                    # doctest: +SKIP
    >>> client.chat.completions.create(model="gpt-4o", messages=msgs)   # reserved and settled
    """
    if getattr(client, "__dict__", {}).get(_GUARD_ATTR) is not None:
        return client
    # The SDK's own class, or the one an application subclassed (class MyClient(OpenAI)).
    roots = (kind.__module__.split(".", 1)[0] for kind in type(client).__mro__)
    root = next((name for name in roots if name in _PROVIDERS), "")
    if not root:
        raise KavachConfigError(
            f"cannot guard a {type(client).__module__}.{type(client).__name__}: wrap() takes an "
            "OpenAI, Anthropic, google-genai or Mistral client (sync or async)"
        )
    module_name, extra = _PROVIDERS[root]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # pragma: no cover - the client exists, so its SDK does
        raise MissingDependencyError(root, extra) from exc
    module.instrument(client, guard)
    client.__dict__[_GUARD_ATTR] = guard
    return client


def unwrap(client: C) -> C:
    """Undo ``wrap``: the client makes unguarded calls again."""
    for owner, name in reversed(client.__dict__.pop(_PATCHES_ATTR, [])):
        owner.__dict__.pop(name, None)
    client.__dict__.pop(_GUARD_ATTR, None)
    return client
