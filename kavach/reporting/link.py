"""Connecting a guard to the backend: seed spend, report events, obey the control channel."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from kavach.budget import Period
from kavach.ledger.memory import MemoryLedger
from kavach.reporting.api import BackendAPI, BackendConfig, BackendError
from kavach.reporting.control import ControlApplier, ControlChannel
from kavach.reporting.sender import Reporter

if TYPE_CHECKING:
    from kavach.client import AgentKavach

logger = logging.getLogger("kavach.reporting")

_SEEDED_PERIODS = {Period.DAILY, Period.WEEKLY, Period.MONTHLY, Period.TOTAL}
_FIELD = {"usd": "cost_nanos", "tokens": "tokens", "calls": "calls"}


@dataclass
class BackendLink:
    """What a guard runs to talk to the backend; ``close()`` flushes and stops it."""

    reporter: Reporter
    control: ControlChannel

    def close(self, timeout: float = 5.0) -> None:
        self.control.close()
        self.reporter.close(timeout)


def seed_from_backend(guard: AgentKavach, api: BackendAPI, timeout: float = 3.0) -> int:
    """Add the backend's record of this period's spend to a fresh in-process ledger.

    A restarted process would otherwise start its daily budget from zero. Only the agent's
    own budgets in UTC periods are seeded (the backend keeps UTC periods); a shared ledger
    such as Redis already holds the spend and is left alone. Returns how many were seeded.
    """
    if not isinstance(guard.ledger, MemoryLedger):
        return 0
    try:
        spend = api.spend(guard.agent_name, timeout)
    except (httpx.HTTPError, BackendError) as exc:
        logger.warning(
            "kavach: could not read this agent's spend from the backend (%s); budgets start "
            "from what this process spends",
            exc,
        )
        return 0
    now = guard._clock()
    spent_by_key: dict[str, int] = {}
    for budget in guard.budgets:
        if budget.scope != "agent" or budget.period not in _SEEDED_PERIODS or budget.tz:
            continue
        entry = spend.get(budget.period.value)
        if not isinstance(entry, dict):
            continue
        key, _ = budget.key(guard.agent_name, now)
        if str(entry.get("period_id")) != key.rsplit(":", 1)[1]:
            continue  # the backend's period is not ours (a reset in between)
        recorded = entry.get(_FIELD[budget.unit])
        if isinstance(recorded, int):
            spent_by_key[key] = recorded
    guard.seed(spent_by_key)
    return len(spent_by_key)


def connect_backend(
    guard: AgentKavach,
    config: BackendConfig,
    *,
    spool_dir: Path | None = None,
    transport: httpx.BaseTransport | None = None,
) -> BackendLink:
    """Seed the guard's spend, then report its events and apply control messages to it."""
    applier = ControlApplier(guard.agent_name, guard.kill, guard.resume, guard.set_remote_budgets)
    api = BackendAPI(config, transport)
    seed_from_backend(guard, api)
    reporter = Reporter(api, spool_root=spool_dir, on_control=applier.apply_states)
    guard.add_observer(reporter)
    # The stream gets its own connection pool: it holds one connection open for good.
    control = ControlChannel(BackendAPI(config, transport), applier)
    return BackendLink(reporter, control)
