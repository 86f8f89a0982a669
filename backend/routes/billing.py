"""Billing endpoints: the org's plan, Stripe checkout and portal sessions, Stripe's webhook.

With no Stripe key configured, ``GET /v1/billing/plan`` says billing is disabled and the
checkout and portal endpoints answer 404 with a message saying so.
"""

from __future__ import annotations

import datetime
import logging
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotAuthorizedException, NotFoundException
from litestar.params import JSONBody

from backend import billing
from backend.auth import UserPrincipal, require_admin
from backend.deps import USER
from backend.ops_settings import OpsSettings
from backend.tables import Subscription

logger = logging.getLogger("agentkavach.backend.billing")

_DISABLED = (
    "billing is disabled on this server (no STRIPE_SECRET_KEY is configured): "
    "it is self-hosted and has no plan limits"
)


def _ops(request: Request[Any, Any, Any]) -> OpsSettings:
    ops: OpsSettings = request.app.state.ops.settings
    return ops


class CheckoutBody(msgspec.Struct, forbid_unknown_fields=True):
    plan: Literal["pro", "max"] = "pro"
    success_url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    cancel_url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class PortalBody(msgspec.Struct, forbid_unknown_fields=True):
    return_url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


@get("/v1/billing/plan", dependencies=USER, tags=["billing"])
async def get_plan(
    request: Request[Any, Any, Any], user: NamedDependency[UserPrincipal]
) -> dict[str, Any]:
    """The organization's plan, its limits and what it has used this month."""
    ops = _ops(request)
    if not ops.billing_enabled:
        return {"billing": "disabled", "plan": "self-hosted", "limits": None, "message": _DISABLED}
    plan = await billing.plan_for(ops, user.org_id)
    row = await Subscription.select().where(Subscription.org == user.org_id).first()
    today = datetime.datetime.now(datetime.UTC).date()
    total, _ = await billing.known_agents(user.org_id, [])
    return {
        "billing": "enabled",
        "plan": plan.name,
        "title": plan.title,
        "status": row["status"] if row else "active",
        "current_period_end": row["current_period_end"] if row else None,
        "limits": plan.limits(),
        "usage": {
            "agents": total,
            "events_this_month": await billing.events_this_month(user.org_id, today),
        },
        "plans": {name: p.limits() for name, p in billing.PLANS.items()},
    }


@get("/v1/billing", tags=["billing"])
async def billing_summary(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """What the dashboard's Billing page reads: 404 when billing is off (the page is hidden),
    otherwise the plan with ``usage`` keyed like ``limits``, for the limits that have a
    usage (retention days has none)."""
    ops = _ops(request)
    if not ops.billing_enabled:
        raise NotFoundException(_DISABLED)
    from backend.auth import user_principal

    try:
        user = await user_principal(request)
    except NotAuthorizedException:
        return {"billing": "enabled", "self_hosted": False, "stripe_configured": True}
    plan = await get_plan.fn(request=request, user=user)
    usage = plan["usage"]
    return {
        **plan,
        "self_hosted": False,
        "stripe_configured": True,
        "usage": {
            "agents": usage["agents"],
            "events_per_month": usage["events_this_month"],
        },
    }


def _stripe_failed(exc: Exception) -> ClientException:
    logger.warning("billing: Stripe call failed: %s", type(exc).__name__)
    return ClientException(
        detail="Stripe could not be reached or refused the request; try again", status_code=502
    )


@post("/v1/billing/checkout", status_code=201, dependencies=USER, tags=["billing"])
async def checkout(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    data: JSONBody[CheckoutBody],
) -> dict[str, Any]:
    """A Stripe Checkout session for the Pro or Max plan; open ``url`` to pay."""
    ops = _ops(request)
    if not ops.billing_enabled:
        raise NotFoundException(_DISABLED)
    require_admin(user)
    import stripe

    price = ops.stripe_price_pro if data.plan == "pro" else ops.stripe_price_max
    row = await Subscription.select().where(Subscription.org == user.org_id).first()
    base = ops.public_url.rstrip("/")
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": price, "quantity": 1}],
        "client_reference_id": str(user.org_id),
        "metadata": {"org_id": str(user.org_id), "plan": data.plan},
        "subscription_data": {"metadata": {"org_id": str(user.org_id), "plan": data.plan}},
        "success_url": data.success_url or f"{base}/billing?checkout=success",
        "cancel_url": data.cancel_url or f"{base}/billing?checkout=cancel",
    }
    if row and row["stripe_customer_id"]:
        params["customer"] = row["stripe_customer_id"]
    else:
        params["customer_email"] = user.email
    try:
        session = await billing.stripe_client(ops).v1.checkout.sessions.create_async(params)
    except stripe.StripeError as exc:
        raise _stripe_failed(exc) from None
    return {"id": session.id, "url": session.url}


@post("/v1/billing/portal", status_code=201, dependencies=USER, tags=["billing"])
async def portal(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    data: JSONBody[PortalBody | None] = None,
) -> dict[str, Any]:
    """A Stripe customer-portal session (change plan, card, invoices, cancel)."""
    ops = _ops(request)
    if not ops.billing_enabled:
        raise NotFoundException(_DISABLED)
    require_admin(user)
    import stripe

    row = await Subscription.select().where(Subscription.org == user.org_id).first()
    if row is None or not row["stripe_customer_id"]:
        raise ClientException(
            detail="this organization has no Stripe customer yet: subscribe through "
            "POST /v1/billing/checkout first",
            status_code=409,
        )
    return_url = (data.return_url if data else None) or f"{ops.public_url.rstrip('/')}/billing"
    try:
        session = await billing.stripe_client(ops).v1.billing_portal.sessions.create_async(
            {"customer": row["stripe_customer_id"], "return_url": return_url}
        )
    except stripe.StripeError as exc:
        raise _stripe_failed(exc) from None
    return {"id": session.id, "url": session.url}


@post("/v1/billing/webhook", status_code=200, tags=["billing"], include_in_schema=False)
async def webhook(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Stripe's webhook: the signature is verified, each event id is applied once."""
    ops = _ops(request)
    if not ops.billing_enabled:
        raise NotFoundException(_DISABLED)
    import stripe

    payload = await request.body()
    try:
        stripe.WebhookSignature.verify_header(
            payload,
            request.headers.get("stripe-signature"),
            ops.stripe_webhook_secret,
            tolerance=300,
        )
        event = billing.event_json(payload)
    except (stripe.SignatureVerificationError, ValueError):
        return Response({"status_code": 400, "detail": "invalid Stripe signature"}, status_code=400)
    outcome = await billing.apply_event(ops, event)
    return Response({"received": True, "outcome": outcome}, status_code=200)


ROUTES = [billing_summary, get_plan, checkout, portal, webhook]
