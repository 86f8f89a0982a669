'''A JSON POST to your own endpoint, signed with HMAC-SHA256 over ``{timestamp}.{body}``.

Headers: ``X-AgentKavach-Timestamp`` (Unix seconds) and ``X-AgentKavach-Signature``
(``sha256=<hex>``). Verify on the receiving side with the raw request body, before parsing it,
and refuse old timestamps so a captured request cannot be replayed::

    import hashlib
    import hmac
    import time


    def verify_agentkavach(
        secret: str, body: bytes, timestamp: str, signature: str, tolerance_seconds: int = 300
    ) -> bool:
        """True if the request was signed with ``secret`` within the tolerance."""
        try:
            sent_at = int(timestamp)
        except ValueError:
            return False
        if abs(time.time() - sent_at) > tolerance_seconds:
            return False
        signed = timestamp.encode() + b"." + body
        expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature)

    # e.g. in a Flask view:
    # ok = verify_agentkavach(SECRET, request.get_data(),
    #                         request.headers["X-AgentKavach-Timestamp"],
    #                         request.headers["X-AgentKavach-Signature"])

The body is a JSON object: ``type`` (threshold, guardrail, kill), ``agent``, ``severity``,
``summary``, ``message``, ``at``, ``incident_key``, ``dashboard_url`` and, for thresholds,
``budget`` {label, unit, period, period_id, threshold, spent, limit, remaining, spent_fmt,
limit_fmt, remaining_fmt, resets_at} (cost amounts in nano-dollars), or ``guardrail`` and
``run_id``; ``text`` carries a custom template's output when one is set.
'''

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kavach.alerts.alert import Alert
from kavach.alerts.channels.base import HttpRequest, HttpResponse, check_status
from kavach.alerts.secret import Secret, describe_url
from kavach.alerts.templates import render

SIGNATURE_HEADER = "X-AgentKavach-Signature"
TIMESTAMP_HEADER = "X-AgentKavach-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``{timestamp}.{body}``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def body_for(alert: Alert, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": alert.kind,
        "agent": alert.agent,
        "severity": alert.severity,
        "summary": alert.summary,
        "message": alert.message,
        "at": alert.at.isoformat(),
        "incident_key": alert.incident_key,
        "dashboard_url": alert.dashboard_url,
    }
    if alert.kind == "threshold":
        out["budget"] = {
            "label": alert.budget,
            "key": alert.budget_key,
            "unit": alert.unit,
            "period": alert.period,
            "period_id": alert.period_id,
            "threshold": alert.threshold,
            "spent": alert.spent,
            "limit": alert.limit,
            "remaining": alert.remaining,
            "spent_fmt": alert.fmt(alert.spent),
            "limit_fmt": alert.fmt(alert.limit),
            "remaining_fmt": alert.fmt(alert.remaining),
            "resets_at": alert.resets_at.isoformat() if alert.resets_at else None,
        }
    elif alert.kind == "guardrail":
        out["guardrail"] = alert.guardrail
        out["run_id"] = alert.run_id
    if text is not None:
        out["text"] = text
    return out


@dataclass(frozen=True, slots=True)
class WebhookChannel:
    """POST a signed JSON alert to ``url``. Without a ``secret`` the request is unsigned."""

    url: Secret
    secret: Secret | None = None
    name: str = "webhook"
    template: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Extra request headers; often credentials (``Authorization: Bearer ...``), so never in
    ``repr``."""
    timeout: float = 10.0
    kind: ClassVar[str] = "webhook"

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.url, self.secret)

    def target(self) -> str:
        return describe_url(self.url)

    def request(self, alert: Alert, now: float) -> HttpRequest | None:
        if alert.kind == "resolve":
            return None
        text = render(self.template, alert.placeholders()) if self.template else None
        body = json.dumps(body_for(alert, text), ensure_ascii=False, separators=(",", ":"))
        raw = body.encode()
        timestamp = str(int(now))
        headers = {**self.headers, "content-type": "application/json", TIMESTAMP_HEADER: timestamp}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret.get(), timestamp, raw)
        return HttpRequest(self.url.get(), raw, headers)

    def check(self, response: HttpResponse) -> None:
        check_status(response, "the webhook")
