"""Alert channel settings as stored: non-secret ``config`` (JSON) and encrypted secrets,
turned into the SDK's channel objects (``kavach.alerts``), checked the same way.

Per kind, the secret fields (stored encrypted, shown masked) and the plain ones:

- slack: secret ``webhook_url``; plain ``template``
- pagerduty: secret ``routing_key``; plain ``api_url`` (default: PagerDuty's Events API)
- webhook: secret ``url`` and optional ``signing_secret``; plain ``template``
- email: plain ``to`` (list), ``from_addr``, ``smtp_host``, ``smtp_port``, ``security``,
  ``username``; secret ``password`` (optional)

Every kind also takes ``thresholds`` (fractions of a budget, default 0.5, 0.9, 1.0).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from backend.crypto import SecretBox, mask
from kavach.alerts.channels import EmailChannel, PagerDutyChannel, SlackChannel, WebhookChannel
from kavach.alerts.channels.base import check_url
from kavach.alerts.channels.email import check_address
from kavach.alerts.channels.pagerduty import EVENTS_URL, check_routing_key
from kavach.alerts.secret import Secret
from kavach.errors import KavachConfigError

__all__ = [
    "SECRET_FIELDS",
    "PLAIN_FIELDS",
    "build_channel",
    "check_channel",
    "masked",
    "masked_target",
]

SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "slack": ("webhook_url",),
    "pagerduty": ("routing_key",),
    "webhook": ("url", "signing_secret"),
    "email": ("password",),
}
PLAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "slack": ("template", "thresholds"),
    "pagerduty": ("api_url", "thresholds"),
    "webhook": ("template", "thresholds"),
    "email": (
        "to",
        "from_addr",
        "smtp_host",
        "smtp_port",
        "security",
        "username",
        "template",
        "thresholds",
    ),
}
_DEFAULT_FROM = "AgentKavach <alerts@agentkavach.localhost>"
_REQUIRED_SECRET = {"slack": "webhook_url", "pagerduty": "routing_key", "webhook": "url"}


def _load(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value or "{}")
    return dict(value or {})


def make_channel(kind: str, config: dict[str, Any], secrets: dict[str, str], name: str) -> Any:
    """The SDK channel for these settings; ``KavachConfigError`` says what is wrong."""
    if kind == "slack":
        url = check_url(secrets["webhook_url"], "webhook_url")
        return SlackChannel(Secret(url), name=name, template=config.get("template"))
    if kind == "pagerduty":
        key = check_routing_key(secrets["routing_key"])
        api_url = check_url(config.get("api_url") or EVENTS_URL, "api_url")
        return PagerDutyChannel(Secret(key), name=name, api_url=api_url)
    if kind == "webhook":
        url = check_url(secrets["url"], "url")
        signing = secrets.get("signing_secret")
        return WebhookChannel(
            Secret(url),
            secret=Secret(signing) if signing else None,
            name=name,
            template=config.get("template"),
        )
    if kind == "email":
        to = config.get("to") or []
        if isinstance(to, str):
            to = [to]
        if not to:
            raise KavachConfigError("an email channel needs 'to' (one address or a list)")
        password = secrets.get("password")
        return EmailChannel(
            tuple(check_address(str(a), "to") for a in to),
            from_addr=str(config.get("from_addr") or _DEFAULT_FROM),
            name=name,
            smtp_host=str(config.get("smtp_host") or "localhost"),
            smtp_port=int(config.get("smtp_port") or 587),
            security=config.get("security") or "starttls",
            username=config.get("username"),
            password=Secret(password) if password else None,
            template=config.get("template"),
        )
    raise KavachConfigError(
        f"unknown channel kind {kind!r}: use slack, pagerduty, webhook or email"
    )


def check_channel(kind: str, config: dict[str, Any], secrets: dict[str, str]) -> None:
    unknown = set(config) - set(PLAIN_FIELDS.get(kind, ()))
    unknown_secrets = set(secrets) - set(SECRET_FIELDS.get(kind, ()))
    if unknown or unknown_secrets:
        raise KavachConfigError(
            f"unknown {kind} channel field(s): {', '.join(sorted(unknown | unknown_secrets))}; "
            f"settings: {', '.join(PLAIN_FIELDS.get(kind, ()))}; "
            f"secrets: {', '.join(SECRET_FIELDS.get(kind, ()))}"
        )
    required = _REQUIRED_SECRET.get(kind)
    if required and not secrets.get(required):
        raise KavachConfigError(f"a {kind} channel needs the secret {required!r}")
    thresholds = config.get("thresholds")
    if thresholds is not None and (
        not isinstance(thresholds, list)
        or not thresholds
        or not all(isinstance(t, int | float) and 0 < t <= 10 for t in thresholds)
    ):
        raise KavachConfigError("thresholds must be a list of fractions such as [0.5, 0.9, 1.0]")
    make_channel(kind, config, secrets, "check")


def build_channel(box: SecretBox, row: dict[str, Any]) -> Any:
    """The channel for a stored row (or an alert rule's direct target)."""
    kind = str(row["kind"])
    config = _load(row.get("config"))
    if row.get("direct_target"):
        target = str(row["direct_target"])
        if kind == "email":
            return make_channel(kind, {"to": [target]}, {}, kind)
        field = {"slack": "webhook_url", "webhook": "url"}.get(kind, "url")
        return make_channel(kind, config, {field: target}, kind)
    secrets = json.loads(box.decrypt(row["secret"])) if row.get("secret") else {}
    return make_channel(kind, config, secrets, str(row.get("name", kind)))


def masked(box: SecretBox, row: dict[str, Any]) -> dict[str, str]:
    if not row.get("secret"):
        return {}
    try:
        secrets = json.loads(box.decrypt(row["secret"]))
    except Exception:  # noqa: BLE001 - a rotated key: still never show anything
        return {name: "********" for name in SECRET_FIELDS.get(str(row["kind"]), ())}
    return {name: mask(str(value)) for name, value in secrets.items()}


def masked_target(target: str) -> str:
    """An alert rule's target as the API shows it: a URL as channel secrets are (its scheme
    and host; the path and query, where Slack and webhook tokens live, masked); a channel
    name or an e-mail address as it is.

    >>> masked_target("https://hooks.slack.com/services/T000/B000/SECRETTOKEN123")
    'https://hooks.slack.com/********'
    >>> masked_target("ops-slack")
    'ops-slack'
    """
    parts = urlsplit(target)
    if not parts.scheme or not parts.netloc:
        return target
    return mask(target)
