"""An agent's control state (status, kill reason, version, budgets) and its changes.

Every change is a version above any an SDK has heard for the agent, seen or not. An agent
the backend has not seen yet has the organization's version, which every org-wide budget
change bumps. Ingest creates an agent at 0 (and answers with its own row's version), so
every later change raises the agent's version above the organization's: an SDK that heard
version N before its agent's first event ignores the same state at 0, and hears the next
change, at N + 1 or more.
"""

from __future__ import annotations

from typing import Any

from litestar.exceptions import NotFoundException

from backend.control import ControlHub
from backend.tables import Agent, Budget, Organization
from kavach._money import fmt_usd

__all__ = [
    "find_agent",
    "budget_json",
    "control_states",
    "control_entries",
    "bump_versions",
    "raise_to_org_version",
    "publish_change",
    "ORG_WIDE",
]

# A hub message of this scope (``{"type": ..., "scope": ORG_WIDE}``) concerns every agent of
# the org, seen or not: each subscriber reads the state of the agents it watches.
ORG_WIDE = "org"


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
    return control_entries(agents, budgets, names, await _org_version(org_id))


async def _org_version(org_id: int) -> int:
    row = (
        await Organization.select(Organization.control_version)
        .where(Organization.id == org_id)
        .first()
    )
    return 0 if row is None else int(row["control_version"])


async def raise_to_org_version(org_id: int, agent_ids: list[int] | None, above: int = 1) -> None:
    """Raise the agents' versions (all of the org's for None) to the organization's plus
    ``above``, where lower: call it after bumping them, so the new version is above any
    the agents had, seen or not."""
    floor = await _org_version(org_id) + above
    query = Agent.update({Agent.control_version: floor}).where(
        (Agent.org == org_id) & (Agent.control_version < floor)
    )
    if agent_ids is not None:
        if not agent_ids:
            return
        query = query.where(Agent.id.is_in(agent_ids))
    await query


async def bump_versions(org_id: int, agent_id: int | None) -> None:
    """A new control version for one agent, or (None) for every agent of the org, those not
    seen yet included."""
    if agent_id is None:
        await Organization.update(
            {Organization.control_version: Organization.control_version + 1}
        ).where(Organization.id == org_id)
    query = Agent.update({Agent.control_version: Agent.control_version + 1}).where(
        Agent.org == org_id
    )
    if agent_id is not None:
        query = query.where(Agent.id == agent_id)
    await query
    if agent_id is None:
        await raise_to_org_version(org_id, None, above=0)
    else:
        await raise_to_org_version(org_id, [agent_id])


def control_entries(
    agents: list[dict[str, Any]],
    budgets: list[dict[str, Any]],
    names: list[str] | None,
    org_version: int = 0,
) -> dict[str, dict[str, Any]]:
    """:func:`control_states` from rows already read: ``agents`` with id, name, status,
    kill_reason and control_version; ``budgets``, the org's, in id order; ``org_version``,
    the organization's control version."""
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
            name,
            {"status": "running", "reason": None, "version": org_version, "budgets": org_budgets},
        )
    return states


async def publish_change(
    hub: ControlHub, org_id: int, kind: str, agent_names: list[str] | None
) -> None:
    """Tell every subscriber of the org what changed, with the agents' new state. A change
    to all agents (``agent_names`` None) reaches agents not seen yet too: each subscriber
    reads the state of the agents it watches."""
    if agent_names is None:
        await hub.publish(org_id, {"type": kind, "scope": ORG_WIDE})
        return
    states = await control_states(org_id, agent_names)
    for name, state in states.items():
        await hub.publish(org_id, {"type": kind, "agent": name, **state})
