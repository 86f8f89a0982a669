"""A Python callable as a channel: ``fn(alert)``, sync or async, for anything else.

A sync callable runs in a short-lived worker thread; an async one is awaited on the
dispatcher's own event loop (not the caller's), so it must not use objects bound to another
loop. Either is subject to the channel's timeout and retries (an exception is retried).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from kavach.alerts.alert import Alert
from kavach.alerts.secret import Secret

AlertCallable = Callable[[Alert], Any] | Callable[[Alert], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class CallableChannel:
    fn: AlertCallable
    name: str = "callable"
    timeout: float = 10.0
    kind: ClassVar[str] = "callable"

    def secrets(self) -> tuple[Secret | None, ...]:
        return ()

    def target(self) -> str:
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)
