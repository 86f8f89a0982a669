"""Piccolo tables. Money columns are BIGINT nano-dollars (1e-9 USD).

Composite unique constraints (agent name per org, idempotency key per org, one
rollup row per bucket) are unique indexes created by the migrations, since the
ingest path relies on them for ``INSERT ... ON CONFLICT``.
"""

from __future__ import annotations

from piccolo.columns import (
    JSON,
    BigInt,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Integer,
    Serial,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

__all__ = [
    "Organization",
    "User",
    "Membership",
    "ApiKey",
    "Agent",
    "Run",
    "Event",
    "SpendHourly",
    "SpendDaily",
    "Budget",
    "AlertRule",
    "AlertEvent",
    "Subscription",
    "AlertChannel",
    "AlertDelivery",
    "StripeEvent",
    "PagerDutyIncident",
    "RevokedSession",
    "UsageMonthly",
    "ALL_TABLES",
    "MAX_ID",
]

# Ids are Serial: int32 on PostgreSQL. An id from a client above this is refused before a
# query, which PostgreSQL would fail with a 500 (and SQLite above 2**63 - 1 with another).
MAX_ID = 2**31 - 1


class Organization(Table, tablename="organizations"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    name = Varchar(length=200)
    created_at = Timestamptz(default=TimestamptzNow())
    # Bumped on every org-wide budget change: the version of an agent not seen yet, and the
    # least version of every agent of the org (see backend.agent_state).
    control_version = Integer(default=0)


class User(Table, tablename="users"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    email = Varchar(length=320, unique=True)
    password_hash = Varchar(length=255)
    # Bumped on password change: tokens issued before carry the old value and stop working.
    token_version = Integer(default=0)
    must_change_password = Boolean(default=False)
    created_at = Timestamptz(default=TimestamptzNow())


class Membership(Table, tablename="memberships"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    user = ForeignKey(references=User)
    org = ForeignKey(references=Organization)
    role = Varchar(length=16)  # owner | admin | viewer
    created_at = Timestamptz(default=TimestamptzNow())


class ApiKey(Table, tablename="api_keys"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    name = Varchar(length=200)
    prefix = Varchar(length=32)  # shown in lists: "ak_live_" plus the first characters
    key_hash = Varchar(length=64, unique=True)  # sha256 hex of the full key
    environment = Varchar(length=8)  # live | test
    created_by = ForeignKey(references=User, null=True)
    created_at = Timestamptz(default=TimestamptzNow())
    last_used_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)


class Agent(Table, tablename="agents"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    name = Varchar(length=200)
    status = Varchar(length=16, default="running")  # running | stopped
    kill_reason = Text(null=True, default=None)
    # Incremented on every kill, resume and budget change; SDKs poll "since" it.
    control_version = Integer(default=0)
    created_at = Timestamptz(default=TimestamptzNow())
    last_seen_at = Timestamptz(null=True, default=None)


class Run(Table, tablename="runs"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    agent = ForeignKey(references=Agent)
    run_key = Varchar(length=200)  # the SDK's run id
    started_at = Timestamptz(default=TimestamptzNow())
    last_event_at = Timestamptz(default=TimestamptzNow())
    calls = Integer(default=0)
    cost_nanos = BigInt(default=0)


class Event(Table, tablename="events"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    agent = ForeignKey(references=Agent)
    run = ForeignKey(references=Run, null=True)
    idempotency_key = Varchar(length=64)
    provider = Varchar(length=64)
    model = Varchar(length=200)
    operation = Varchar(length=32)
    status = Varchar(length=16)  # ok | error | refused | cut | cancelled
    refusal_reason = Varchar(length=200, null=True, default=None)
    error = Text(null=True, default=None)
    started_at = Timestamptz()
    duration_ms = Float(default=0.0)
    cost_nanos = BigInt(default=0)
    reserved_nanos = BigInt(default=0)
    input_tokens = BigInt(default=0)
    output_tokens = BigInt(default=0)
    cache_read_tokens = BigInt(default=0)
    cache_write_tokens = BigInt(default=0)
    reasoning_tokens = BigInt(default=0)
    prompt = Text(null=True, default=None)  # only when the SDK opted in
    details = JSON(default="{}")  # usage extras, response model, finish reasons, tags ...
    received_at = Timestamptz(default=TimestamptzNow())


class SpendHourly(Table, tablename="spend_hourly"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    agent = ForeignKey(references=Agent)
    model = Varchar(length=200)
    bucket = Timestamptz()  # start of the UTC hour
    cost_nanos = BigInt(default=0)
    calls = BigInt(default=0)
    tokens = BigInt(default=0)
    input_tokens = BigInt(default=0)
    output_tokens = BigInt(default=0)
    refusals = BigInt(default=0)
    errors = BigInt(default=0)


class SpendDaily(Table, tablename="spend_daily"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    agent = ForeignKey(references=Agent)
    model = Varchar(length=200)
    day = Date()  # UTC day
    cost_nanos = BigInt(default=0)
    calls = BigInt(default=0)
    tokens = BigInt(default=0)
    input_tokens = BigInt(default=0)
    output_tokens = BigInt(default=0)
    refusals = BigInt(default=0)
    errors = BigInt(default=0)


class Budget(Table, tablename="budgets"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    agent = ForeignKey(references=Agent, null=True)  # null: the whole organization
    kind = Varchar(length=8)  # usd | tokens | calls
    period = Varchar(length=8)  # daily | weekly | monthly | total
    limit_value = BigInt()  # nano-dollars for usd, a count otherwise
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class AlertRule(Table, tablename="alert_rules"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    agent = ForeignKey(references=Agent, null=True)
    name = Varchar(length=200)
    kind = Varchar(length=8)  # usd | tokens | calls
    period = Varchar(length=8)
    threshold = BigInt()  # nano-dollars for usd, a count otherwise
    channel = Varchar(length=16)  # email | slack | webhook
    target = Varchar(length=500)
    enabled = Boolean(default=True)
    created_at = Timestamptz(default=TimestamptzNow())


class AlertEvent(Table, tablename="alert_events"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    agent = ForeignKey(references=Agent, null=True)
    kind = Varchar(length=32)  # kill | resume | budget | threshold
    message = Text()
    actor = ForeignKey(references=User, null=True)
    details = JSON(default="{}")
    created_at = Timestamptz(default=TimestamptzNow())


class Subscription(Table, tablename="subscriptions"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization, unique=True)
    plan = Varchar(length=8, default="free")  # free | pro | max
    status = Varchar(length=16, default="active")
    stripe_customer_id = Varchar(length=100, null=True, default=None)
    stripe_subscription_id = Varchar(length=100, null=True, default=None)
    current_period_end = Timestamptz(null=True, default=None)
    stripe_event_at = Timestamptz(null=True, default=None)
    """When the Stripe event last applied here was created: older ones arrive late."""
    created_at = Timestamptz(default=TimestamptzNow())


ALL_TABLES: tuple[type[Table], ...] = (
    Organization,
    User,
    Membership,
    ApiKey,
    Agent,
    Run,
    Event,
    SpendHourly,
    SpendDaily,
    Budget,
    AlertRule,
    AlertEvent,
    Subscription,
)


# ---- operations (alert channels and deliveries, Stripe events); migration ..._ops


class AlertChannel(Table, tablename="alert_channels"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    name = Varchar(length=100)
    kind = Varchar(length=16)  # slack | pagerduty | email | webhook
    config = JSON(default="{}")  # non-secret settings: api_url, thresholds, template, ...
    secret = Text(null=True, default=None)  # Fernet token: webhook URL, routing key, ...
    enabled = Boolean(default=True)
    created_at = Timestamptz(default=TimestamptzNow())


class AlertDelivery(Table, tablename="alert_deliveries"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    # One row per org, budget, period, threshold and channel: inserting it decides who sends.
    org = ForeignKey(references=Organization)
    dedup_key = Varchar(length=400)
    status = Varchar(length=16, default="claimed")  # claimed | sent | failed
    error = Text(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())


class StripeEvent(Table, tablename="stripe_events"):
    id: Serial  # declared for type checkers; Piccolo adds the column itself
    event_id = Varchar(length=255, unique=True)
    type = Varchar(length=100)
    created_at = Timestamptz(default=TimestamptzNow())


class PagerDutyIncident(Table, tablename="pagerduty_incidents"):
    """A PagerDuty incident the alert worker triggered, kept until it sends the resolve.

    ``channel``, ``budget`` and ``agent`` are plain ids, not foreign keys: deleting the
    budget is one of the reasons to resolve, so the row must outlive it. At most one open
    row per org, channel and dedup key (a partial unique index, see the migrations).
    """

    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    channel = Integer()
    dedup_key = Varchar(length=255)  # as sent to PagerDuty in the trigger
    budget = Integer()
    agent = Integer(null=True, default=None)  # null: an org-wide budget
    period_id = Varchar(length=16)
    subject = Varchar(length=200)  # the agent's or org's name, for the resolve's summary
    opened_at = Timestamptz(default=TimestamptzNow())
    resolved_at = Timestamptz(null=True, default=None)  # set when a replica claims the resolve
    resolve_reason = Varchar(length=200, null=True, default=None)


ALL_TABLES = (*ALL_TABLES, AlertChannel, AlertDelivery, StripeEvent, PagerDutyIncident)


# ---- sessions ended by logout, events received per month; migration ..._sessions_usage


class RevokedSession(Table, tablename="revoked_sessions"):
    """A session token ended before it expired (log-out), by its ``jti``; unique index in
    the migrations. Kept until the token would have expired, then pruned by retention."""

    id: Serial  # declared for type checkers; Piccolo adds the column itself
    jti = Varchar(length=64)
    expires_at = Timestamptz()


class UsageMonthly(Table, tablename="usage_monthly"):
    """Events an organization sent in a UTC month, counted when they arrive (not by the
    time they claim to have started): the plan's monthly event limit reads this. One row
    per org and month (a unique index in the migrations), added to by every ingest batch."""

    id: Serial  # declared for type checkers; Piccolo adds the column itself
    org = ForeignKey(references=Organization)
    month = Date()  # the first day of the UTC month
    events = BigInt(default=0)


ALL_TABLES = (*ALL_TABLES, RevokedSession, UsageMonthly)
