"""Connecting a guard to the backend: seed spend, report events, obey the control channel."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from kavach.budget import Budget, Period
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


def seed_from_backend(
    guard: AgentKavach,
    api: BackendAPI,
    timeout: float = 3.0,
    budgets: Sequence[Budget] | None = None,
) -> int:
    """Add the backend's record of this period's spend to a fresh in-process ledger.

    A restarted process would otherwise start its daily budget from zero, and a budget added
    in the dashboard would start from zero what the agent already spent. ``budgets``: the
    ones to seed (default: the guard's). Only the agent's own budgets in UTC periods are
    seeded (the backend keeps UTC periods); a shared ledger such as Redis already holds the
    spend and is left alone. Returns how many were seeded.
    """
    if not isinstance(guard.ledger, MemoryLedger):
        return 0
    if budgets is None:
        budgets = guard.budgets
    if not any(_seeded(budget) for budget in budgets):
        return 0  # nothing to ask the backend for
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
    for budget in budgets:
        if not _seeded(budget):
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


def _seeded(budget: Budget) -> bool:
    return budget.scope == "agent" and budget.period in _SEEDED_PERIODS and not budget.tz


def connect_backend(
    guard: AgentKavach,
    config: BackendConfig,
    *,
    spool_dir: Path | None = None,
    transport: httpx.BaseTransport | None = None,
) -> BackendLink:
    """Seed the guard's spend, then report its events and apply control messages to it."""
    api = BackendAPI(config, transport)
    applied: list[tuple[Budget, ...]] = [()]

    def set_remote_budgets(budgets: tuple[Budget, ...]) -> None:
        # A budget set in the dashboard starts from what the agent has spent this period:
        # seeded before it applies (again after a restart, when the stream sends it anew).
        if budgets != applied[0]:
            seed_from_backend(guard, api, 1.0, budgets)  # short: a Stop may queue behind it
            applied[0] = budgets
        guard.set_remote_budgets(budgets)

    applier = ControlApplier(guard.agent_name, guard.kill, guard.resume, set_remote_budgets)
    seed_from_backend(guard, api)
    reporter = Reporter(api, spool_root=spool_dir, on_control=applier.apply_states)
    guard.add_observer(reporter)
    # The stream gets its own connection pool: it holds one connection open for good.
    control = ControlChannel(BackendAPI(config, transport), applier)
    return BackendLink(reporter, control)
