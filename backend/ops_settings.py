"""Settings of the operational parts (rate limits, billing, retention, alerts), from the
environment, validated once with every bad value named.

Kept apart from :mod:`backend.settings` so the core settings stay small; both are read
at start. ``0`` turns a rate limit off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from backend.settings import SettingsError

__all__ = ["OpsSettings"]


@dataclass(frozen=True)
class OpsSettings:
    # Burst limits on /v1/ingest, in requests (batches): a token bucket per key and per org.
    # An SDK process sends about four batches a second; a key may be shared by a fleet.
    key_rate: float = 500.0
    key_burst: float = 1000.0
    org_rate: float = 2000.0
    org_burst: float = 4000.0
    # Daily caps on /v1/ingest, in events, per UTC day.
    key_daily_events: int = 50_000_000
    org_daily_events: int = 200_000_000
    # Auth endpoints: a bucket per client address, and one per e-mail for log-ins.
    auth_ip_rate: float = 2.0
    auth_ip_burst: float = 120.0
    login_email_rate: float = 1 / 6
    login_email_burst: float = 10.0
    redis_prefix: str = "agentkavach:"
    # Billing: off (self-hosted, unlimited) unless a Stripe secret key is set.
    stripe_secret_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_price_pro: str | None = None
    stripe_price_max: str | None = None
    stripe_api_base: str | None = None  # tests point it at a loopback stand-in
    public_url: str = "http://localhost:8000"
    # Retention job; self-hosted keeps events forever unless retention_days is set.
    retention_interval: float = 3600.0
    retention_batch: int = 5000
    retention_days: int | None = None
    alert_history_days: int = 30
    # Alert worker: evaluated after every ingest, and on this interval as a fallback.
    alert_interval: float = 30.0
    alert_retry_seconds: float = 60.0  # a delivery that failed retryably is tried again after
    encryption_key: str | None = None

    @property
    def billing_enabled(self) -> bool:
        return bool(self.stripe_secret_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OpsSettings:
        env = os.environ if environ is None else environ
        problems: list[str] = []
        values: dict[str, object] = {}

        def number(name: str, attr: str, kind: type, low: float, high: float) -> None:
            raw = env.get(name, "").strip()
            if not raw:
                return
            try:
                value = kind(raw.replace("_", ""))
            except ValueError:
                problems.append(f"{name} must be a number (got {raw!r})")
                return
            if not low <= value <= high:
                problems.append(f"{name} must be between {low:g} and {high:g} (got {raw})")
                return
            values[attr] = value

        number("AGENTKAVACH_RATE_KEY_PER_SECOND", "key_rate", float, 0, 1e6)
        number("AGENTKAVACH_RATE_KEY_BURST", "key_burst", float, 0, 1e7)
        number("AGENTKAVACH_RATE_ORG_PER_SECOND", "org_rate", float, 0, 1e6)
        number("AGENTKAVACH_RATE_ORG_BURST", "org_burst", float, 0, 1e7)
        number("AGENTKAVACH_DAILY_EVENTS_PER_KEY", "key_daily_events", int, 0, 1e15)
        number("AGENTKAVACH_DAILY_EVENTS_PER_ORG", "org_daily_events", int, 0, 1e15)
        number("AGENTKAVACH_RATE_AUTH_PER_SECOND", "auth_ip_rate", float, 0, 1e6)
        number("AGENTKAVACH_RATE_AUTH_BURST", "auth_ip_burst", float, 0, 1e7)
        number("AGENTKAVACH_RETENTION_INTERVAL_SECONDS", "retention_interval", float, 1, 1e7)
        number("AGENTKAVACH_RETENTION_BATCH", "retention_batch", int, 1, 1e6)
        number("AGENTKAVACH_RETENTION_DAYS", "retention_days", int, 1, 100_000)
        number("AGENTKAVACH_ALERT_HISTORY_DAYS", "alert_history_days", int, 1, 100_000)
        number("AGENTKAVACH_ALERT_INTERVAL_SECONDS", "alert_interval", float, 0.1, 1e6)
        number("AGENTKAVACH_ALERT_RETRY_SECONDS", "alert_retry_seconds", float, 0, 1e6)
        for name, attr in (
            ("AGENTKAVACH_REDIS_PREFIX", "redis_prefix"),
            ("STRIPE_SECRET_KEY", "stripe_secret_key"),
            ("STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret"),
            ("AGENTKAVACH_STRIPE_PRICE_PRO", "stripe_price_pro"),
            ("AGENTKAVACH_STRIPE_PRICE_MAX", "stripe_price_max"),
            ("AGENTKAVACH_STRIPE_API_BASE", "stripe_api_base"),
            ("AGENTKAVACH_PUBLIC_URL", "public_url"),
            ("AGENTKAVACH_ENCRYPTION_KEY", "encryption_key"),
        ):
            raw = env.get(name, "").strip()
            if raw:
                values[attr] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.billing_enabled:
            if not settings.stripe_webhook_secret:
                problems.append(
                    "STRIPE_WEBHOOK_SECRET is required when STRIPE_SECRET_KEY is set "
                    "(the webhook signing secret, whsec_...)"
                )
            if not (settings.stripe_price_pro and settings.stripe_price_max):
                problems.append(
                    "AGENTKAVACH_STRIPE_PRICE_PRO and AGENTKAVACH_STRIPE_PRICE_MAX are required "
                    "when STRIPE_SECRET_KEY is set (the Stripe price ids of the plans)"
                )
        if settings.encryption_key:
            from backend.crypto import check_key

            problem = check_key(settings.encryption_key)
            if problem:
                problems.append(f"AGENTKAVACH_ENCRYPTION_KEY {problem}")
        if problems:
            raise SettingsError(problems)
        return settings
