"""Plans (Free, Pro, Max), what each allows, and the Stripe side of keeping them current.

With no Stripe key configured (self-hosting) billing is off: every organization is on
the ``self-hosted`` plan, which has no limits. With Stripe, an organization's plan is
its ``subscriptions`` row, kept current by the webhook (:func:`apply_event`).
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any

from backend import db
from backend.ops_settings import OpsSettings
from backend.tables import MAX_ID, Agent, Event, StripeEvent, Subscription, UsageMonthly

__all__ = [
    "Plan",
    "PLANS",
    "SELF_HOSTED",
    "plan_for",
    "events_this_month",
    "stored_events",
    "apply_event",
    "stripe_client",
]

logger = logging.getLogger("agentkavach.backend.billing")


@dataclass(frozen=True)
class Plan:
    name: str
    title: str
    agents: int | None  # None: unlimited
    events_per_month: int | None
    retention_days: int | None

    def limits(self) -> dict[str, int | None]:
        return {
            "agents": self.agents,
            "events_per_month": self.events_per_month,
            "retention_days": self.retention_days,
        }


PLANS: dict[str, Plan] = {
    "free": Plan("free", "Free", agents=3, events_per_month=100_000, retention_days=7),
    "pro": Plan("pro", "Pro", agents=25, events_per_month=5_000_000, retention_days=90),
    "max": Plan("max", "Max", agents=None, events_per_month=50_000_000, retention_days=365),
}
SELF_HOSTED = Plan("self-hosted", "Self-hosted", None, None, None)
# A subscription in these states keeps its plan; anything else falls back to Free.
_LIVE = frozenset({"active", "trialing", "past_due"})


async def plan_for(settings: OpsSettings, org_id: int) -> Plan:
    if not settings.billing_enabled:
        if settings.retention_days is None:
            return SELF_HOSTED
        return Plan("self-hosted", "Self-hosted", None, None, settings.retention_days)
    row = (
        await Subscription.select(Subscription.plan, Subscription.status)
        .where(Subscription.org == org_id)
        .first()
    )
    if row is None or row["status"] not in _LIVE:
        return PLANS["free"]
    return PLANS.get(row["plan"], PLANS["free"])


async def events_this_month(org_id: int, today: datetime.date) -> int:
    """Events received this UTC month (calls and refusals), counted as they arrive.

    Not by the day they say they started: events backdated to an earlier month would
    otherwise never count against the limit."""
    row = (
        await UsageMonthly.select(UsageMonthly.events)
        .where((UsageMonthly.org == org_id) & (UsageMonthly.month == today.replace(day=1)))
        .first()
    )
    return int(row["events"]) if row else 0


async def stored_events(org_id: int, ids: list[str]) -> int:
    """How many of ``ids`` (distinct) the organization's events already have: a batch the
    SDK sends again, its reply lost, adds none of them."""
    stored = 0
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        stored += await Event.count().where(
            (Event.org == org_id) & Event.idempotency_key.is_in(chunk)
        )
    return stored


async def known_agents(org_id: int, names: list[str]) -> tuple[int, int]:
    """``(agents the org has, how many of names are among them)``."""
    total = await Agent.count().where(Agent.org == org_id)
    known = 0
    if names:
        known = await Agent.count().where((Agent.org == org_id) & Agent.name.is_in(names))
    return total, known


def stripe_client(settings: OpsSettings) -> Any:
    import stripe

    assert settings.stripe_secret_key
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses=base,  # type: ignore[arg-type]
        http_client=stripe.HTTPXClient(timeout=20),
        max_network_retries=1,
    )


def _plan_of_price(settings: OpsSettings, price_id: str | None) -> str | None:
    if price_id and price_id == settings.stripe_price_pro:
        return "pro"
    if price_id and price_id == settings.stripe_price_max:
        return "max"
    return None


def _period_end(sub: dict[str, Any]) -> datetime.datetime | None:
    end = sub.get("current_period_end")
    if end is None:
        items = (sub.get("items") or {}).get("data") or []
        end = items[0].get("current_period_end") if items else None
    if not isinstance(end, int):
        return None
    return datetime.datetime.fromtimestamp(end, datetime.UTC)


async def _ensure_row(org_id: int) -> None:
    if not await Subscription.exists().where(Subscription.org == org_id):
        await Subscription.insert(Subscription(org=org_id, plan="free"))


def _org_id(value: Any) -> int | None:
    """An organization id from a Stripe object's metadata, if it can be one."""
    text = str(value or "")
    if text.isdigit() and 1 <= int(text) <= MAX_ID:
        return int(text)
    return None


async def _org_of(obj: dict[str, Any]) -> int | None:
    sub_id, customer = obj.get("id"), obj.get("customer")
    meta_org = _org_id((obj.get("metadata") or {}).get("org_id"))
    if meta_org is not None:
        return meta_org
    for column, value in (
        (Subscription.stripe_subscription_id, sub_id),
        (Subscription.stripe_customer_id, customer),
    ):
        if value:
            row = await Subscription.select(Subscription.org).where(column == value).first()
            if row is not None:
                return int(row["org"])
    return None


def _event_time(event: dict[str, Any]) -> datetime.datetime:
    created = event.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        return datetime.datetime.fromtimestamp(created, datetime.UTC)
    return datetime.datetime.now(datetime.UTC)  # Stripe always sends it; be safe


async def _update_if_newer(
    org_id: int, created: datetime.datetime, changes: dict[Any, Any]
) -> bool:
    """Apply ``changes`` unless a newer event already has; True if applied.

    Stripe does not deliver in order. One conditional UPDATE, so two webhooks racing on
    PostgreSQL cannot both pass the check: the second re-reads the row after the first.
    """
    rows = (
        await Subscription.update({**changes, Subscription.stripe_event_at: created})
        .where(
            (Subscription.org == org_id)
            & (Subscription.stripe_event_at.is_null() | (Subscription.stripe_event_at <= created))
        )
        .returning(Subscription.id)
    )
    return bool(rows)


async def apply_event(settings: OpsSettings, event: dict[str, Any]) -> str:
    """Apply a verified Stripe event once; answer what happened (for the response and logs).

    The event id is recorded in the same transaction as the change, so a replay (Stripe
    retries, or an attacker replaying a captured body) changes nothing.
    """
    event_id, kind = str(event.get("id", "")), str(event.get("type", ""))
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    created = _event_time(event)
    async with db.transaction():
        fresh = await StripeEvent.raw(
            "INSERT INTO stripe_events (event_id, type, created_at) VALUES ({}, {}, {}) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING id",
            event_id,
            kind[:100],
            datetime.datetime.now(datetime.UTC),
        )
        if not fresh:
            return "duplicate"
        if kind == "checkout.session.completed":
            ref = _org_id(
                obj.get("client_reference_id") or (obj.get("metadata") or {}).get("org_id")
            )
            plan = (obj.get("metadata") or {}).get("plan")
            if ref is None or plan not in PLANS:
                return "ignored"
            org_id = ref
            await _ensure_row(org_id)
            applied = await _update_if_newer(
                org_id,
                created,
                {
                    Subscription.plan: plan,
                    Subscription.status: "active",
                    Subscription.stripe_customer_id: obj.get("customer"),
                    Subscription.stripe_subscription_id: obj.get("subscription"),
                },
            )
            if not applied:
                return "stale"
            logger.info("billing: org %s upgraded to %s", org_id, plan)
            return f"org {org_id} on {plan}"
        if kind in ("customer.subscription.updated", "customer.subscription.deleted"):
            found = await _org_of(obj)
            if found is None:
                return "ignored"
            org_id = found
            await _ensure_row(org_id)
            if kind == "customer.subscription.deleted":
                changes: dict[Any, Any] = {
                    Subscription.plan: "free",
                    Subscription.status: "canceled",
                    Subscription.stripe_subscription_id: None,
                }
            else:
                items = (obj.get("items") or {}).get("data") or []
                price = (items[0].get("price") or {}).get("id") if items else None
                changes = {
                    Subscription.status: str(obj.get("status", "active"))[:16],
                    Subscription.stripe_subscription_id: obj.get("id"),
                    Subscription.current_period_end: _period_end(obj),
                }
                plan = _plan_of_price(settings, price)
                if plan is not None:
                    changes[Subscription.plan] = plan
                if obj.get("customer"):
                    changes[Subscription.stripe_customer_id] = obj["customer"]
            if not await _update_if_newer(org_id, created, changes):
                return "stale"
            return f"org {org_id} subscription {kind.rsplit('.', 1)[1]}"
    return "ignored"


def event_json(payload: bytes) -> dict[str, Any]:
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("not an event object")
    return data
