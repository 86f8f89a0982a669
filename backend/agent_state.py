"""An agent's control state (status, kill reason, version, budgets) and its changes."""

from __future__ import annotations

from typing import Any

from litestar.exceptions import NotFoundException

from backend.control import ControlHub
from backend.tables import Agent, Budget
from kavach._money import fmt_usd

__all__ = ["find_agent", "budget_json", "control_states", "control_entries", "publish_change"]


async def find_agent(org_id: int, name: str) -> dict[str, Any]:
    row = await Agent.select().where((Agent.org == org_id) & (Agent.name == name)).first()
    if row is None:
        raise NotFoundException(f"no agent named {name!r}")
    return row


def budget_json(row: dict[str, Any], agent_names: dict[int, str]) -> dict[str, Any]:
    agent_id = row["agent"]
    body = {
        "id": row["id"],
        "scope": "org" if agent_id is None else "agent",
        "agent": None if agent_id is None else agent_names.get(agent_id),
        "kind": row["kind"],
        "period": row["period"],
        "limit": row["limit_value"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if row["kind"] == "usd":
        body["limit_usd"] = fmt_usd(row["limit_value"])
    return body


async def control_states(org_id: int, names: list[str] | None) -> dict[str, dict[str, Any]]:
    """The control entry of each named agent (all of the org's when ``names`` is None).

    An agent the backend has not seen yet is running at version 0 with the org's budgets.
    """
    query = Agent.select(Agent.id, Agent.name, Agent.status, Agent.kill_reason).where(
        Agent.org == org_id
    )
    query = query.columns(Agent.control_version)
    if names is not None:
        if not names:
            return {}
        query = query.where(Agent.name.is_in(names))
    agents = await query
    budgets = await Budget.select().where(Budget.org == org_id).order_by(Budget.id)
    return control_entries(agents, budgets, names)


def control_entries(
    agents: list[dict[str, Any]], budgets: list[dict[str, Any]], names: list[str] | None
) -> dict[str, dict[str, Any]]:
    """:func:`control_states` from rows already read: ``agents`` with id, name, status,
    kill_reason and control_version; ``budgets``, the org's, in id order."""
    names_by_id = {a["id"]: a["name"] for a in agents}
    org_budgets = [budget_json(b, names_by_id) for b in budgets if b["agent"] is None]
    states: dict[str, dict[str, Any]] = {}
    for agent in agents:
        own = [budget_json(b, names_by_id) for b in budgets if b["agent"] == agent["id"]]
        states[agent["name"]] = {
            "status": agent["status"],
            "reason": agent["kill_reason"],
            "version": agent["control_version"],
            "budgets": own + org_budgets,
        }
    for name in names or ():
        states.setdefault(
            name, {"status": "running", "reason": None, "version": 0, "budgets": org_budgets}
        )
    return states


async def publish_change(
    hub: ControlHub, org_id: int, kind: str, agent_names: list[str] | None
) -> None:
    """Tell every subscriber of the org what changed, with the agents' new state."""
    states = await control_states(org_id, agent_names)
    for name, state in states.items():
        await hub.publish(org_id, {"type": kind, "agent": name, **state})
