"""Metering of a provider's WebSocket session: OpenAI's Responses over ``responses.connect()``
and Realtime sessions (``realtime.connect()``, ``kavach_integrations._openai_realtime``).

Over a socket a call is an event the client sends (``response.create``) and its answer the
events that come back, ending in the response's usage. What a request holds may depend on
the session too (a Realtime conversation): a ``SocketState`` sees every event to tell. The
guard sits on the socket the SDK opens (a ``websockets`` connection), so every way the SDK
sends and receives passes it:

=================================  ===========================================================
a request event sent               held first (refused: raised, and never sent); strict mode
                                   sets its max output tokens
its events received                metered as a stream's (``StreamSettlement``): settled on the
                                   response's final event, cut (the socket closed,
                                   ``BudgetExceededError`` raised by ``recv``) when its output
                                   passes what was held
an ``error`` event                 a request whose response has not started is released
a response the server starts       held when it starts (a steered response's successor, a
itself                             Realtime reply to speech); when the budget cannot pay for
                                   it, the socket is closed
a call the server makes beside     (``SocketProtocol.aside``: Realtime's transcription of
the responses                      each turn of speech) held as the event that starts it
                                   arrives, settled at the usage of the one that ends it,
                                   released if it fails; refused, the socket is closed
the socket closed or dropped       calls still open are settled for what they consumed
=================================  ===========================================================

The provider answers requests in order on each lane (Responses' ``stream_id``; one lane by
default, and for Realtime).
``SocketCalls`` does the reading and bookkeeping and no I/O; ``MeteredSocket`` and
``AsyncMeteredSocket`` are the thin shells that send, receive and settle.
"""

from __future__ import annotations

import functools
import json
import logging
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from kavach.errors import KavachError, UnknownModelPriceError
from kavach.spec import CallSpec
from kavach.stream import StreamSettlement
from kavach_integrations._provider import (
    Endpoint,
    Unmetered,
    _admit_unmetered,
    _limited,
    _lookup_failed,
    _prepare,
    patch,
)

if TYPE_CHECKING:
    from kavach.client import AgentKavach
    from kavach.reservation import Reservation

logger = logging.getLogger("kavach")

Event = dict[str, Any]


class SocketState(Protocol):
    """What one socket's calls depend on beyond the request event itself: a Realtime
    session's settings and conversation. Sees every event, sent and received, in order."""

    def sent(self, event: Event) -> None: ...

    def received(self, event: Event) -> None: ...

    def request(self, event: Event) -> Event:
        """The request (as ``SocketProtocol.endpoint`` reads it) a request event makes."""
        ...

    def successor(self, response: Mapping[str, Any]) -> Event:
        """The request a response the server started itself amounts to, read from the
        response its ``started`` event carries."""
        ...

    def aside(self, event: Event) -> Event | None:
        """The request (as ``Aside.endpoint`` reads it) of a call the server starts beside
        the responses on receiving ``event``, if it starts one. Called after ``received``."""
        ...


class RequestsAsSent:
    """A socket whose request events carry the whole request (Responses): no state."""

    def __init__(self, successor: Callable[[Mapping[str, Any]], Event]) -> None:
        self._successor = successor

    def sent(self, event: Event) -> None:
        pass

    def received(self, event: Event) -> None:
        pass

    def request(self, event: Event) -> Event:
        return event

    def successor(self, response: Mapping[str, Any]) -> Event:
        return self._successor(response)

    def aside(self, event: Event) -> Event | None:
        return None


@dataclass(frozen=True, slots=True)
class Aside:
    """Calls the server makes beside the responses, each named by an event field (Realtime:
    transcribing each turn of the user's speech, by its item). They start on an event the
    ``SocketState`` recognises (``SocketState.aside``), and end on one of ``finished``
    (settled at the usage the meter reads from it) or ``failed`` (given back)."""

    endpoint: Endpoint
    key: str
    finished: tuple[str, ...]
    failed: tuple[str, ...]
    asked: Callable[[Event], str | None] | None = None
    """The model of the calls a sent event asks the server to start (a Realtime
    ``session.update`` turning transcription on), if it asks for any: with
    ``unmetered="refuse"``, an event asking for calls the guard cannot price is refused
    before it is sent, since the calls themselves, started by the server, cannot be."""


@dataclass(frozen=True, slots=True)
class SocketProtocol:
    """How a provider's socket carries calls: the event types that start and end one."""

    provider: str
    endpoint: Endpoint
    """Reads a request (``SocketState.request``) and meters its answer; its ``limit`` sets
    the max output tokens of the request event sent."""
    request: str
    started: str
    finished: tuple[str, ...]
    error: str
    state: Callable[[Mapping[str, Any]], SocketState]
    """A socket's state, from the keyword arguments ``connect()`` was called with."""
    lane: str | None = "stream_id"
    """The event field naming the lane a request and its answer are on, if any."""
    aside: Aside | None = None


class _Call:
    """One request held on a socket: its settlement, and whether its response started."""

    __slots__ = ("settlement", "started")

    def __init__(self, settlement: StreamSettlement, started: bool = False) -> None:
        self.settlement = settlement
        self.started = started


class _Answer:
    """What one received event does to the calls: ``kind`` is done, error, cut, started (a
    response the server started) or aside (a call the server started beside them)."""

    __slots__ = ("detail", "kind", "settlement")

    def __init__(self, kind: str, settlement: StreamSettlement | None, detail: Any = None):
        self.kind = kind
        self.settlement = settlement
        self.detail = detail


class SocketCalls:
    """The calls of one socket, in the order the provider answers them, lane by lane."""

    __slots__ = ("asides", "client", "guard", "lanes", "protocol", "refused", "state")

    def __init__(
        self,
        guard: AgentKavach,
        protocol: SocketProtocol,
        client: Any,
        refused: deque[str | bytes],
        state: SocketState,
    ) -> None:
        self.guard = guard
        self.protocol = protocol
        self.state = state
        self.client = client  # looks up stored context a request continues
        self.lanes: dict[Any, deque[_Call]] = {}
        self.asides: dict[Any, StreamSettlement] = {}
        self.refused = refused
        """Request messages refused: the SDK queues a message whose send raised and sends
        it again after a reconnect; a refused request must never go out."""

    def request(self, message: Any) -> Event | None:
        """The request event ``message`` is, or None for any other message."""
        if self.refused and any(message is m for m in self.refused):
            raise _Dropped
        if not isinstance(message, str | bytes):
            return None
        try:
            event = json.loads(message)
        except ValueError:
            return None
        if type(event) is not dict:
            return None
        aside = self.protocol.aside
        if aside is not None and aside.asked is not None and self.guard.unmetered == "refuse":
            self._refuse_unpriced(aside, aside.asked(event), message)
        self.state.sent(event)
        if event.get("type") != self.protocol.request:
            return None
        return event

    def _refuse_unpriced(self, aside: Aside, model: str | None, message: str | bytes) -> None:
        """Refuse ``message``, which asks the server to start calls of ``model`` that the
        guard cannot price (``unmetered="refuse"``): raised before it is sent."""
        if model is None or not self.guard.enabled:
            return
        provider = self.protocol.provider
        if self._priced(provider, model):
            return
        try:
            _admit_unmetered(
                self.guard, Unmetered(provider, aside.endpoint.operation), {"model": model}
            )
        except KavachError:
            self.refuse(message)
            raise

    def _priced(self, provider: str, model: str) -> bool:
        """Whether the guard has a price for ``model`` (else its calls are unmetered)."""
        try:
            self.guard.pricing.resolve(provider, model)
        except UnknownModelPriceError:
            return False
        return True

    def body(self, event: Event) -> Event:
        """The request a request event makes, as the endpoint reads it."""
        return self.state.request(event)

    def spec(self, body: Event) -> CallSpec:
        return self.protocol.endpoint.read(body)

    def unknown_context(self, body: Event) -> Any:
        context = self.protocol.endpoint.context
        return None if context is None else context.unknown(body)

    def fetch(self, ref: Any) -> None:
        context = self.protocol.endpoint.context
        assert context is not None
        try:
            context.fetch(self.client, ref)
        except Exception as exc:
            _lookup_failed(ref, exc)

    async def afetch(self, ref: Any) -> None:
        context = self.protocol.endpoint.context
        assert context is not None
        try:
            await context.afetch(self.client, ref)
        except Exception as exc:
            _lookup_failed(ref, exc)

    def _lane(self, event: Mapping[str, Any]) -> Any:
        lane = self.protocol.lane
        return None if lane is None else event.get(lane)

    def held(self, event: Event, body: Event, r: Reservation, message: str | bytes) -> str | bytes:
        """Track the held request ``event``; the message to send (strict mode's limit set)."""
        endpoint = self.protocol.endpoint
        sent = _prepare(self.guard, endpoint, event, r, streamed=False)
        meter = endpoint.meter(body)  # type: ignore[misc]  # a socket endpoint has one
        settlement = StreamSettlement(r, meter, _limited(self.guard, endpoint, r.spec))
        self.lanes.setdefault(self._lane(event), deque()).append(_Call(settlement))
        return message if sent is event else json.dumps(sent)

    def unsent(self, event: Event) -> StreamSettlement:
        """The settlement of ``event``, whose message could not be sent: to release."""
        return self.lanes[self._lane(event)].pop().settlement

    def refuse(self, message: str | bytes) -> None:
        self.refused.append(message)

    def answer(self, message: Any) -> _Answer | None:
        """Meter one received message: what it does to the calls, if anything."""
        try:
            event = json.loads(message)
        except (TypeError, ValueError):
            return None
        if type(event) is not dict:
            return None
        self.state.received(event)
        protocol = self.protocol
        kind = event.get("type")
        if protocol.aside is not None and (aside := self._aside(event, kind)) is not None:
            return aside
        queue = self.lanes.get(self._lane(event))
        call = queue[0] if queue else None
        if kind == protocol.error:
            # An error before the request's response started refused it: nothing billed. One
            # after may concern another event (Realtime); a response that stops unfinished
            # is settled for what it consumed when the socket closes.
            if call is None or queue is None or call.started:
                return None
            queue.popleft()
            return _Answer("error", call.settlement, _error_text(event))
        if kind == protocol.started:
            if call is None or call.started:  # no request of ours is waiting for it
                return _Answer("started", None, event)
            call.started = True
        if call is None or queue is None or not call.started:
            return None  # nothing of ours, or not running yet (queued): nothing billed
        settlement = call.settlement
        meter = settlement.meter
        try:
            meter.feed(SimpleNamespace(**event))
        except Exception:  # the call stays held, and is settled when the socket closes
            logger.exception("kavach: could not read a %s event", protocol.provider)
            return None
        limit = settlement.limit
        if limit is not None and meter.output_tokens > limit:
            queue.popleft()
            return _Answer("cut", settlement)
        if kind in protocol.finished:
            queue.popleft()
            return _Answer("done", settlement)
        return None

    def _aside(self, event: Event, kind: Any) -> _Answer | None:
        aside = self.protocol.aside
        assert aside is not None
        if kind in aside.finished or kind in aside.failed:
            settlement = self.asides.pop(event.get(aside.key), None)
            if settlement is None:
                return None
            if kind in aside.failed:  # nothing billed
                settlement.meter.received = False
                return _Answer("error", settlement, _error_text(event))
            try:
                settlement.meter.feed(SimpleNamespace(**event))
            except Exception:  # settled at what was held
                logger.exception("kavach: could not read a %s event", self.protocol.provider)
            return _Answer("done", settlement)
        body = self.state.aside(event)
        return None if body is None else _Answer("aside", None, body)

    def server_call(self, answer: _Answer) -> tuple[CallSpec, Callable[[Reservation], None]] | None:
        """A call the server started (``answer.kind`` started or aside): what to hold, and
        what tracks it once held. None for an aside whose model has no price by the token:
        let through, stopped with the agent and said not to be counted."""
        if answer.kind == "aside":
            aside = self.protocol.aside
            assert aside is not None
            body = answer.detail
            spec = aside.endpoint.read(body)
            if not self._priced(spec.provider, spec.model):
                _admit_unmetered(
                    self.guard, Unmetered(spec.provider, spec.operation), body, refusable=False
                )
                return None
            return spec, functools.partial(self._adopt_aside, aside, body)
        event = answer.detail
        body = self.state.successor(event.get("response") or {})
        return self.spec(body), functools.partial(self._adopt, event, body)

    def _adopt_aside(self, aside: Aside, body: Event, r: Reservation) -> None:
        meter = aside.endpoint.meter(body)  # type: ignore[misc]  # an aside endpoint has one
        self.asides[body.get(aside.key)] = StreamSettlement(r, meter, limited=False)

    def _adopt(self, event: Event, body: Event, r: Reservation) -> None:
        """Track a response the server started, held as ``r``, from its ``started`` event."""
        endpoint = self.protocol.endpoint
        meter = endpoint.meter(body)  # type: ignore[misc]
        settlement = StreamSettlement(r, meter, _limited(self.guard, endpoint, r.spec))
        lane = self.lanes.setdefault(self._lane(event), deque())
        lane.appendleft(_Call(settlement, started=True))
        meter.feed(SimpleNamespace(**event))

    def open_calls(self) -> list[StreamSettlement]:
        """Every call not yet settled, which the socket closing ends: forgotten here."""
        calls = [call.settlement for queue in self.lanes.values() for call in queue]
        calls += self.asides.values()
        self.lanes.clear()
        self.asides.clear()
        return calls

    def settle_open(self) -> None:
        """Settle every call still open: the socket closed, dropped, or was freed unclosed
        (``weakref.finalize``)."""
        for settlement in self.open_calls():
            settlement.finish(*_closed_status(settlement))


class _Dropped(Exception):
    """A refused request the SDK tried to send again: not sent."""


def _error_text(event: Event) -> str:
    error = event.get("error")
    if isinstance(error, Mapping):
        error = f"{error.get('code') or error.get('type') or 'error'}: {error.get('message', '')}"
    return str(error)[:500]


def _closed_status(settlement: StreamSettlement) -> tuple[Any, str]:
    # Answered in part: billed for what arrived. Not answered at all: given back.
    return ("cancelled" if settlement.meter.received else "error"), "the socket closed"


def _closed_errors() -> tuple[type[BaseException], ...]:
    from websockets.exceptions import ConnectionClosed

    return (ConnectionClosed,)


class MeteredSocket:
    """A ``websockets`` client connection whose calls are held and settled (see above);
    anything else passes to the connection itself."""

    def __init__(self, ws: Any, calls: SocketCalls) -> None:
        self._ws = ws
        self._calls = calls
        weakref.finalize(self, calls.settle_open)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def send(self, message: Any, *args: Any, **kwargs: Any) -> None:
        calls = self._calls
        try:
            event = calls.request(message)
        except _Dropped:
            return
        if event is None:
            self._ws.send(message, *args, **kwargs)
            return
        body = calls.body(event)
        if (ref := calls.unknown_context(body)) is not None:
            calls.fetch(ref)
        try:
            r = calls.guard.reserve(calls.spec(body))
        except KavachError:
            calls.refuse(message)
            raise
        sent = calls.held(event, body, r, message)
        try:
            self._ws.send(sent, *args, **kwargs)
        except BaseException as exc:
            calls.unsent(event).finish("error", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def recv(self, *args: Any, **kwargs: Any) -> Any:
        try:
            message = self._ws.recv(*args, **kwargs)
        except _closed_errors():
            self._calls.settle_open()
            raise
        answer = self._calls.answer(message)
        if answer is not None:
            self._apply(answer)
        return message

    def _apply(self, answer: _Answer) -> None:
        settlement = answer.settlement
        if answer.kind == "done":
            assert settlement is not None
            settlement.finish()
        elif answer.kind == "error":
            assert settlement is not None
            settlement.finish("error", answer.detail)
        elif answer.kind == "cut":
            assert settlement is not None
            settlement.finish("cut", "output passed the reservation")
            self.close()
            raise settlement.cut_error()
        else:  # a call the server started
            calls = self._calls
            try:
                if (started := calls.server_call(answer)) is None:
                    return
                spec, track = started
                r = calls.guard.reserve(spec)
            except KavachError:
                self.close()  # the provider goes on only while the socket is open
                raise
            track(r)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        self._calls.settle_open()
        return self._ws.close(*args, **kwargs)


class AsyncMeteredSocket:
    """``MeteredSocket`` for the ``websockets`` asyncio client."""

    def __init__(self, ws: Any, calls: SocketCalls) -> None:
        self._ws = ws
        self._calls = calls
        weakref.finalize(self, calls.settle_open)
        # An in-process ledger does no I/O: its sync methods spare a coroutine a call.
        self._in_process = getattr(calls.guard.ledger, "in_process", False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def _reserve(self, spec: CallSpec) -> Reservation:
        guard = self._calls.guard
        return guard.reserve(spec) if self._in_process else await guard.areserve(spec)

    async def send(self, message: Any, *args: Any, **kwargs: Any) -> None:
        calls = self._calls
        try:
            event = calls.request(message)
        except _Dropped:
            return
        if event is None:
            await self._ws.send(message, *args, **kwargs)
            return
        body = calls.body(event)
        if (ref := calls.unknown_context(body)) is not None:
            await calls.afetch(ref)
        try:
            r = await self._reserve(calls.spec(body))
        except KavachError:
            calls.refuse(message)
            raise
        sent = calls.held(event, body, r, message)
        try:
            await self._ws.send(sent, *args, **kwargs)
        except BaseException as exc:
            await calls.unsent(event).afinish("error", f"{type(exc).__name__}: {exc}"[:500])
            raise

    async def recv(self, *args: Any, **kwargs: Any) -> Any:
        try:
            message = await self._ws.recv(*args, **kwargs)
        except _closed_errors():
            await self._settle_open()
            raise
        answer = self._calls.answer(message)
        if answer is not None:
            await self._apply(answer)
        return message

    async def _apply(self, answer: _Answer) -> None:
        settlement = answer.settlement
        if answer.kind == "done":
            assert settlement is not None
            await settlement.afinish()
        elif answer.kind == "error":
            assert settlement is not None
            await settlement.afinish("error", answer.detail)
        elif answer.kind == "cut":
            assert settlement is not None
            await settlement.afinish("cut", "output passed the reservation")
            await self.close()
            raise settlement.cut_error()
        else:  # a call the server started
            calls = self._calls
            try:
                if (started := calls.server_call(answer)) is None:
                    return
                spec, track = started
                r = await self._reserve(spec)
            except KavachError:
                await self.close()
                raise
            track(r)

    async def _settle_open(self) -> None:
        for settlement in self._calls.open_calls():
            await settlement.afinish(*_closed_status(settlement))

    async def close(self, *args: Any, **kwargs: Any) -> Any:
        await self._settle_open()
        return await self._ws.close(*args, **kwargs)


def guard_socket(
    client: Any,
    owner: Any,
    guard: AgentKavach,
    protocol: SocketProtocol,
    *,
    is_async: bool,
) -> None:
    """Meter the calls of every socket ``owner.connect()`` opens (OpenAI's Stainless
    connection managers, which open it in ``_connect_ws``: on entering, and again on each
    reconnect; before openai 2.0, in ``__enter__`` itself, see ``_EnteringManager``). A
    stopped agent opens none."""
    original = owner.connect
    operation = protocol.endpoint.operation

    def connect(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)  # builds the manager: nothing is sent yet
        if not guard.enabled:
            return manager
        unmetered = Unmetered(protocol.provider, operation)
        open_ws = getattr(manager, "_connect_ws", None)
        if open_ws is None and not hasattr(manager, "__aenter__" if is_async else "__enter__"):
            _admit_unmetered(guard, unmetered, kwargs)  # opens its socket elsewhere
            return manager
        guard.check_stopped(CallSpec(provider=protocol.provider, model="", operation=operation))
        refused: deque[str | bytes] = deque(maxlen=32)  # per manager: its send queue's

        def calls() -> SocketCalls:  # a socket's own (a reconnect opens a new one)
            return SocketCalls(guard, protocol, client, refused, protocol.state(kwargs))

        if open_ws is None:
            manager.__class__ = _entering_manager(manager.__class__, is_async)
            manager._kavach_meter = _EnteringManager(calls, guard, unmetered, kwargs)
        elif is_async:

            async def aconnect_ws(*a: Any, **kw: Any) -> Any:
                return AsyncMeteredSocket(await open_ws(*a, **kw), calls())

            manager._connect_ws = aconnect_ws
        else:

            def connect_ws(*a: Any, **kw: Any) -> Any:
                return MeteredSocket(open_ws(*a, **kw), calls())

            manager._connect_ws = connect_ws
        return manager

    patch(client, owner, "connect", functools.wraps(original)(connect))


@dataclass
class _EnteringManager:
    """What a connection manager that opens its socket as it is entered (openai before 2.0,
    whose ``realtime.connect()`` has no ``_connect_ws``) needs to meter it: the socket is the
    entered connection's ``_connection``, which is swapped for a metered one before anything
    is sent. A connection without one is let through, stopped with the agent and said not to
    be counted."""

    calls: Callable[[], SocketCalls]
    guard: AgentKavach
    unmetered: Unmetered
    connect_kwargs: Any

    def meter(self, connection: Any, is_async: bool) -> None:
        """Meter an entered ``connection``; raises (the caller closes it) when the agent may
        not make the call."""
        ws = getattr(connection, "_connection", None)
        if ws is None:
            _admit_unmetered(self.guard, self.unmetered, self.connect_kwargs)
        else:
            socket = AsyncMeteredSocket if is_async else MeteredSocket
            connection._connection = socket(ws, self.calls())


@functools.cache
def _entering_manager(cls: Any, is_async: bool) -> type:
    """A subclass of connection manager ``cls`` whose ``__enter__`` (``__aenter__``, and the
    ``enter`` alias) meters the socket it opens; the manager stays an instance of ``cls``."""
    enter: Callable[[Any], Any]
    if is_async:

        async def enter(self: Any) -> Any:
            connection = await cls.__aenter__(self)
            try:
                self._kavach_meter.meter(connection, True)
            except KavachError:
                await connection.close()  # refused: the socket is open
                raise
            return connection

    else:

        def enter(self: Any) -> Any:
            connection = cls.__enter__(self)
            try:
                self._kavach_meter.meter(connection, False)
            except KavachError:
                connection.close()  # refused: the socket is open
                raise
            return connection

    namespace = {"__aenter__" if is_async else "__enter__": enter, "__module__": cls.__module__}
    if hasattr(cls, "enter"):
        namespace["enter"] = enter
    return type(cls.__name__, (cls,), namespace)
