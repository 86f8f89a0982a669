"""The kill switch: once on, every call is refused until resume or the period resets."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from kavach.errors import AgentKilledError

logger = logging.getLogger("kavach")

OnKill = Callable[[str], Any] | Callable[[str], Awaitable[Any]]


class KillSwitch:
    """Holds whether an agent is stopped, and runs ``on_kill(reason)`` once per stop."""

    def __init__(self, agent: str, on_kill: OnKill | None = None) -> None:
        self.agent = agent
        self._on_kill = on_kill
        self._lock = threading.Lock()
        self.reason: str | None = None
        """Why the agent is stopped; None while it runs. Read on every call, so a plain
        attribute (set only under the lock)."""
        self._until: datetime | None = None
        self._tasks: set[Any] = set()  # running async on_kill tasks, kept alive

    @property
    def killed(self) -> bool:
        return self.reason is not None

    def check(self, now: datetime | None = None) -> bool:
        """Raise AgentKilledError while stopped; lift a budget stop once its period resets.

        Returns True if this call lifted it (the caller reports the resume; exactly one
        caller sees True for each stop). ``now`` defaults to the current time (UTC).
        """
        reason = self.reason
        if reason is None:
            return False
        if self.lift_if_reset(now):
            return True
        raise AgentKilledError(self.agent, reason)

    def lift_if_reset(self, now: datetime | None = None) -> bool:
        """Lift a stop whose ``until`` has passed. True if this call lifted it."""
        until = self._until
        if until is None:
            return False
        if now is None:
            now = datetime.now(UTC)
        if now < until:
            return False
        with self._lock:
            if self._until is None or now < self._until:
                return False
            self.reason = None
            self._until = None
        return True

    def kill(self, reason: str, until: datetime | None = None) -> bool:
        """Stop the agent until ``until`` (``None``: until ``resume``). Returns True if this
        stopped it, or made a stop already on last longer.

        ``on_kill`` runs only when the agent was running. A stop that would end sooner than
        the one on does not shorten it: a Stop pressed while a daily budget holds the agent
        keeps it stopped past midnight, and a monthly limit reached with the daily one keeps
        it stopped until the month resets. The longer stop's reason is the one shown.
        """
        with self._lock:
            if self.reason is not None:
                current = self._until
                if current is None or (until is not None and until <= current):
                    return False  # the stop on already lasts at least as long
                self.reason = reason
                self._until = until
                return True
            self.reason = reason
            self._until = until
        self._run_callback(reason)
        return True

    def resume(self) -> bool:
        """Let calls through again. Returns True if the agent was stopped."""
        with self._lock:
            was = self.reason is not None
            self.reason = None
            self._until = None
        return was

    def _run_callback(self, reason: str) -> None:
        callback = self._on_kill
        if callback is None:
            return
        try:
            result = callback(reason)
            if inspect.isawaitable(result):
                self._await(result)
        except Exception:
            logger.exception("on_kill callback for agent %r raised", self.agent)

    def _await(self, awaitable: Awaitable[Any]) -> None:
        import asyncio  # here, not at module level: it costs ~30 ms of `import kavach`

        async def run() -> None:
            try:
                await awaitable
            except Exception:
                logger.exception("async on_kill callback for agent %r raised", self.agent)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # A sync program: no loop to schedule on. Killing is rare, so one short-lived
            # loop here does not break the rule against a loop per call.
            asyncio.run(run())
            return
        task = loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def utcnow() -> datetime:
    return datetime.now(UTC)
