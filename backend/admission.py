"""Admission: rate limits and plan limits, checked before a request reaches its handler.

``/v1/ingest``: a burst limit (requests) and a daily cap (events) per API key and per
organization, then the plan's events per month and agents. Auth endpoints: a burst
limit per client address, and per e-mail on log-in. A refusal is a 429 with
``Retry-After`` and a JSON body whose ``detail`` says which limit and what to do
(the SDK logs it once) and whose ``reason`` is a stable code.
"""

from __future__ import annotations

import datetime
import json
import math
import time
import zlib
from typing import Any

import msgspec
from litestar import Request, Response

from backend import billing
from backend.auth import api_key_from
from backend.ingest import PlanLimitExceeded
from backend.ops_settings import OpsSettings
from backend.ratelimit import Bucket, Limiter, Refusal, Window
from backend.security import API_KEY_PREFIXES, hash_api_key
from backend.settings import Settings
from backend.tables import ApiKey

__all__ = ["Admission", "plan_refused"]

# A plan refusal is re-checked at least this often, so an upgrade takes effect soon.
_PLAN_RETRY_MAX = 3600.0
_KEY_CACHE_SECONDS = 10.0


class _Agentname(msgspec.Struct, forbid_unknown_fields=False):
    agent: str = ""
    id: str = ""


class _Shape(msgspec.Struct, forbid_unknown_fields=False):
    events: list[_Agentname] = msgspec.field(default_factory=list)


def _seconds_to_midnight(now: datetime.datetime) -> float:
    tomorrow = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, (tomorrow - now).total_seconds())


def _seconds_to_month_end(now: datetime.datetime) -> float:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + datetime.timedelta(days=32)).replace(day=1)
    return max(1.0, (following - now).total_seconds())


def too_many(reason: str, detail: str, retry_after: float) -> Response[dict[str, Any]]:
    wait = max(1, math.ceil(retry_after))
    return Response(
        {"status_code": 429, "detail": detail, "reason": reason, "retry_after": wait},
        status_code=429,
        headers={"Retry-After": str(wait)},
    )


class Admission:
    def __init__(self, settings: Settings, ops: OpsSettings, limiter: Limiter) -> None:
        self.settings = settings
        self.ops = ops
        self.limiter = limiter
        self._keys: dict[str, tuple[float, int, int, str] | None] = {}

    async def _key(self, request: Request[Any, Any, Any]) -> tuple[int, int, str] | None:
        # The key ingest will authenticate with: checking another would let a batch in
        # unchecked (a bearer that is not an API key, beside X-API-Key).
        key = api_key_from(request)
        if key is None or not key.startswith(API_KEY_PREFIXES):
            return None
        digest = hash_api_key(key)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and now - cached[0] < _KEY_CACHE_SECONDS:
            return cached[1], cached[2], cached[3]
        row = (
            await ApiKey.select(ApiKey.id, ApiKey.org, ApiKey.prefix, ApiKey.revoked_at)
            .where(ApiKey.key_hash == digest)
            .first()
        )
        if row is None or row["revoked_at"] is not None:
            return None  # the handler answers 401
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (now, row["id"], row["org"], row["prefix"])
        return row["id"], row["org"], row["prefix"]

    def _shape(self, body: bytes, encoding: str) -> _Shape | None:
        if encoding.strip().lower() in ("gzip", "x-gzip"):
            limit = self.settings.max_body_bytes * 8
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error:
                return None
        try:
            return msgspec.json.decode(body, type=_Shape)
        except (msgspec.MsgspecError, RecursionError):
            return None  # the handler explains what is wrong with it

    async def check_ingest(self, request: Request[Any, Any, Any]) -> Response[Any] | None:
        found = await self._key(request)
        if found is None:
            return None
        key_id, org_id, prefix = found
        shape = self._shape(await request.body(), request.headers.get("content-encoding", ""))
        if shape is None:
            return None
        count = len(shape.events)
        now = datetime.datetime.now(datetime.UTC)
        if self.ops.billing_enabled:
            plan = await billing.plan_for(self.ops, org_id)
            # Ingest checks the plan again where concurrent batches take turns.
            request.state.ingest_plan = plan
            refusal = await self._plan(plan, org_id, shape, count, now)
            if refusal is not None:
                return refusal
        limits: list[Bucket | Window] = []
        ops = self.ops
        day = now.date().isoformat()
        midnight = _seconds_to_midnight(now)
        if ops.key_rate > 0:
            limits.append(
                Bucket(
                    f"burst:key:{key_id}",
                    ops.key_rate,
                    max(1.0, ops.key_burst),
                    1,
                    f"rate_limit_key|API key {prefix}… sent more than {ops.key_burst:g} batches "
                    f"in a burst (sustained limit {ops.key_rate:g} per second)",
                )
            )
        if ops.org_rate > 0:
            limits.append(
                Bucket(
                    f"burst:org:{org_id}",
                    ops.org_rate,
                    max(1.0, ops.org_burst),
                    1,
                    f"rate_limit_org|the organization sent more than {ops.org_burst:g} batches "
                    f"in a burst across its keys (sustained limit {ops.org_rate:g} per second)",
                )
            )
        if ops.key_daily_events > 0 and count:
            limits.append(
                Window(
                    f"day:key:{key_id}:{day}",
                    ops.key_daily_events,
                    count,
                    midnight,
                    f"daily_cap_key|API key {prefix}… reached its daily cap of "
                    f"{ops.key_daily_events:,} events (resets at 00:00 UTC)",
                )
            )
        if ops.org_daily_events > 0 and count:
            limits.append(
                Window(
                    f"day:org:{org_id}:{day}",
                    ops.org_daily_events,
                    count,
                    midnight,
                    f"daily_cap_org|the organization reached its daily cap of "
                    f"{ops.org_daily_events:,} events (resets at 00:00 UTC)",
                )
            )
        refused = await self.limiter.acquire(limits)
        if refused is not None:
            return self._refuse(refused)
        request.state.ingest_org = org_id
        request.state.ingest_events = count
        return None

    def _refuse(self, refusal: Refusal) -> Response[Any]:
        code, _, text = refusal.reason.partition("|")
        wait = max(1, math.ceil(refusal.retry_after))
        return too_many(code, f"rate limited: {text}; retry in {wait} s", refusal.retry_after)

    async def _plan(
        self, plan: billing.Plan, org_id: int, shape: _Shape, count: int, now: datetime.datetime
    ) -> Response[Any] | None:
        """A quick refusal of a batch that is over the plan as things stand, before it is
        decoded. Concurrent batches can all pass it: ingest checks again."""
        if plan.events_per_month is not None and count:
            used = await billing.events_this_month(org_id, now.date())
            if used + count > plan.events_per_month:
                # Near the limit, count only what the batch would add: a batch the SDK
                # sends again because the reply was lost holds events already stored.
                ids = sorted({e.id for e in shape.events if e.id})
                adding = len(ids) + sum(1 for e in shape.events if not e.id)
                adding -= await billing.stored_events(org_id, ids)
                if used + adding > plan.events_per_month:
                    return self.plan_refusal(PlanLimitExceeded(plan, "events", used, adding))
        if plan.agents is not None:
            names = sorted({e.agent for e in shape.events if e.agent})
            total, known = await billing.known_agents(org_id, names)
            new = len(names) - known
            if new and total + new > plan.agents:
                return self.plan_refusal(PlanLimitExceeded(plan, "agents", total, new))
        return None

    def plan_refusal(self, exc: PlanLimitExceeded) -> Response[Any]:
        plan = exc.plan
        upgrade = f"upgrade the plan at {self.ops.public_url.rstrip('/')}/billing"
        if exc.limit == "events":
            now = datetime.datetime.now(datetime.UTC)
            return too_many(
                "plan_events",
                f"plan limit: the {plan.title} plan includes {plan.events_per_month:,} "
                f"events per month and {exc.used:,} were received this month; events are kept "
                f"by the SDK and sent when the month resets, or {upgrade}",
                min(_PLAN_RETRY_MAX, _seconds_to_month_end(now)),
            )
        return too_many(
            "plan_agents",
            f"plan limit: the {plan.title} plan includes {plan.agents} agents and the "
            f"organization has {exc.used}; this batch adds {exc.adding} more; {upgrade}",
            _PLAN_RETRY_MAX,
        )

    async def check_auth(self, request: Request[Any, Any, Any]) -> Response[Any] | None:
        ops = self.ops
        limits: list[Bucket | Window] = []
        client = request.client.host if request.client else "unknown"
        if ops.auth_ip_rate > 0:
            limits.append(
                Bucket(
                    f"auth:ip:{client}",
                    ops.auth_ip_rate,
                    max(1.0, ops.auth_ip_burst),
                    1,
                    "rate_limit_auth|too many sign-in or sign-up attempts from this address",
                )
            )
        if request.url.path == "/v1/auth/login" and ops.login_email_rate > 0:
            try:
                email = str(json.loads(await request.body()).get("email", "")).strip().lower()
            except (ValueError, AttributeError):
                email = ""
            if email:
                limits.append(
                    Bucket(
                        f"auth:email:{hash_api_key(email)[:32]}",
                        ops.login_email_rate,
                        max(1.0, ops.login_email_burst),
                        1,
                        "rate_limit_login|too many log-in attempts for this account",
                    )
                )
        refused = await self.limiter.acquire(limits)
        return None if refused is None else self._refuse(refused)


def plan_refused(request: Request[Any, Any, Any], exc: PlanLimitExceeded) -> Response[Any]:
    """Ingest's answer to a batch that took the organization past its plan: the 429 the
    admission check gives, which concurrent batches can all pass."""
    ops = request.app.state.ops
    answer: Response[Any] = ops.admission.plan_refusal(exc)
    ops.metrics.inc("agentkavach_rate_limited_total", reason=answer.content["reason"])
    return answer
