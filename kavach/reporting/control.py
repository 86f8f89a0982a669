"""The control channel: kill, resume and budget changes from the dashboard, within a second.

A daemon thread holds ``GET /v1/control/stream`` (server-sent events) open and applies each
message to the guard as it arrives: a stop turns the kill switch on (``on_kill`` runs once,
the next call is refused), a resume lifts a stop that came from the backend, and budgets
set in the dashboard are enforced locally next to the ones in code. The same state also
rides on every ingest answer, so a process whose stream is down still hears of a stop.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx

from kavach.budget import Budget, Period
from kavach.reporting.api import BackendAPI, BackendError

logger = logging.getLogger("kavach.reporting")

_PERIODS = {p.value: p for p in (Period.DAILY, Period.WEEKLY, Period.MONTHLY, Period.TOTAL)}
_UNITS = {"usd", "tokens", "calls"}


def budgets_from_backend(items: list[dict[str, Any]]) -> tuple[Budget, ...]:
    """The dashboard's budgets (``{"scope", "kind", "period", "limit"}``) as ``Budget`` values."""
    budgets = []
    for item in items:
        period = _PERIODS.get(str(item.get("period")))
        unit = item.get("kind")
        limit = item.get("limit")
        if period is None or unit not in _UNITS or not isinstance(limit, int) or limit < 0:
            logger.warning("kavach: ignoring a budget from the backend it cannot apply: %r", item)
            continue
        budgets.append(
            Budget(limit=limit, period=period, unit=unit, org=item.get("scope") == "org")
        )
    return tuple(budgets)


class ControlApplier:
    """Applies control messages to one guard; shared by the stream and ingest answers."""

    def __init__(
        self,
        agent: str,
        kill: Callable[[str], object],
        resume: Callable[[], object],
        set_budgets: Callable[[tuple[Budget, ...]], object],
    ) -> None:
        self.agent = agent
        self._kill = kill
        self._resume = resume
        self._set_budgets = set_budgets
        self._lock = threading.Lock()
        self._version = -1
        self._stopped_remotely = False

    def apply_states(self, control: dict[str, Any]) -> None:
        state = control.get(self.agent)
        if isinstance(state, dict):
            self.apply({"type": "state", "agent": self.agent, **state})

    def apply(self, message: dict[str, Any]) -> None:
        if message.get("agent") != self.agent:
            return
        with self._lock:
            version = message.get("version")
            if isinstance(version, int):
                if version < self._version:
                    return  # an older state arriving late (ingest answer after the stream)
                self._version = version
            status = message.get("status")
            if message.get("type") == "resume" and not message.get("initial"):
                # Resume pressed in the dashboard lifts any stop, a local budget stop too.
                self._stopped_remotely = False
                self._resume()
            elif status == "stopped" and not self._stopped_remotely:
                self._stopped_remotely = True
                self._kill(str(message.get("reason") or "stopped from the dashboard"))
            elif status == "running" and self._stopped_remotely:
                self._stopped_remotely = False
                self._resume()
            budgets = message.get("budgets")
            if isinstance(budgets, list):
                self._set_budgets(budgets_from_backend(budgets))


class ControlChannel:
    """Keeps the control stream open in a daemon thread, reconnecting with backoff."""

    def __init__(self, api: BackendAPI, applier: ControlApplier) -> None:
        self.api = api
        self.applier = applier
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kavach-control", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self.api.close()  # closes the open stream's connection, which ends the read
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.25
        warned = False
        while not self._stop.is_set():
            try:
                data: list[str] = []
                for line in self.api.control_lines([self.applier.agent]):
                    if self._stop.is_set():
                        return
                    self.connected.set()
                    backoff = 0.25
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        self._dispatch("\n".join(data))
                        data = []
            except BackendError as exc:
                if exc.status in (401, 403):
                    logger.warning(
                        "kavach: the backend refused the API key on the control "
                        "channel (%s); stops from the dashboard will arrive only with "
                        "ingest answers",
                        exc,
                    )
                    return
                if not warned:
                    logger.warning("kavach: control channel: %s; reconnecting", exc)
                    warned = True
            except httpx.HTTPError as exc:
                if self._stop.is_set():
                    return
                if not warned:
                    logger.warning(
                        "kavach: control channel lost (%s); reconnecting", type(exc).__name__
                    )
                    warned = True
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("kavach: control channel error")
            self.connected.clear()
            self._stop.wait(backoff)
            backoff = min(10.0, backoff * 2)

    def _dispatch(self, data: str) -> None:
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            logger.warning("kavach: ignoring a malformed control message")
            return
        if isinstance(message, dict):
            self.applier.apply(message)
