"""PagerDuty Events API v2: trigger, update and resolve one incident per agent, budget and period.

Severity follows the threshold: below 90% ``warning``, 90 to 99% ``error``, 100% ``critical``.
The ``dedup_key`` is the alert's incident key (agent, budget, period), so a later threshold in
the same period updates the same incident; the dispatcher sends ``resolve`` when the period
ends or the agent is resumed.

A custom template is a JSON object (a mapping or a JSON string) shaped like the event, with
placeholders in its strings; ``routing_key`` is injected and must not be written in it::

    {"payload": {"summary": "{agent_name} at {pct}% of {budget_fmt} ({budget_type})",
                 "severity": "{severity}", "source": "billing-bot",
                 "custom_details": {"spent": "{spent_fmt}", "resets": "{resets_at}"}}}

It is checked when loaded: ``payload.summary`` is required, ``payload.severity`` (default
``{severity}``) must be a placeholder or one of critical/error/warning/info, ``payload.source``
defaults to ``agentkavach/<agent>``, ``event_action`` may only be ``trigger``, and every
placeholder must be known.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from kavach.alerts.alert import Alert
from kavach.alerts.channels.base import HttpRequest, HttpResponse, check_status
from kavach.alerts.secret import Secret
from kavach.alerts.templates import check_structure, render_structure
from kavach.errors import KavachConfigError

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ROUTING_KEY = re.compile(r"^[A-Za-z0-9]{32}$")
_SEVERITIES = frozenset({"critical", "error", "warning", "info"})


def check_routing_key(key: str) -> str:
    if not ROUTING_KEY.match(key):
        # Never echo the key: a near-miss is still a secret.
        raise KavachConfigError(
            f"a PagerDuty routing key is 32 letters and digits (the Events API v2 integration "
            f"key of a service); the one given has {len(key)} characters or other symbols"
        )
    return key


def load_template(
    template: Mapping[str, Any] | str, where: str = "pagerduty template"
) -> dict[str, Any]:
    """Parse and check a custom event template (see the module docstring)."""
    if isinstance(template, str):
        try:
            template = json.loads(template)
        except json.JSONDecodeError as exc:
            raise KavachConfigError(f"{where}: not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(template, Mapping):
        raise KavachConfigError(f"{where}: must be a JSON object")
    check_structure(template, where)
    out = dict(template)
    if "routing_key" in out:
        raise KavachConfigError(
            f"{where}: leave routing_key out of the template; it is injected from the channel"
        )
    action = out.setdefault("event_action", "trigger")
    if action != "trigger":
        raise KavachConfigError(f"{where}: event_action must be 'trigger' (resolves are automatic)")
    payload = out.get("payload")
    if not isinstance(payload, Mapping):
        raise KavachConfigError(f"{where}: a 'payload' object is required")
    payload = dict(payload)
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise KavachConfigError(f"{where}: payload.summary (a non-empty string) is required")
    severity = payload.setdefault("severity", "{severity}")
    if not isinstance(severity, str) or ("{" not in severity and severity not in _SEVERITIES):
        raise KavachConfigError(
            f"{where}: payload.severity must be '{{severity}}' or one of critical, error, warning, info"
        )
    payload.setdefault("source", "agentkavach/{agent_name}")
    out["payload"] = payload
    out.setdefault("dedup_key", "{incident_key}")
    return out


@dataclass(frozen=True, slots=True)
class PagerDutyChannel:
    """Trigger and resolve PagerDuty incidents through the Events API v2."""

    routing_key: Secret
    name: str = "pagerduty"
    template: Mapping[str, Any] | None = None
    """Already checked with ``load_template``."""
    api_url: str = EVENTS_URL
    timeout: float = 10.0
    kind: ClassVar[str] = "pagerduty"

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.routing_key,)

    def target(self) -> str:
        return self.api_url

    def event(self, alert: Alert) -> dict[str, Any]:
        if alert.kind == "resolve":
            return {
                "routing_key": self.routing_key.get(),
                "event_action": "resolve",
                "dedup_key": alert.incident_key,
            }
        if self.template is not None:
            event: dict[str, Any] = render_structure(self.template, alert.placeholders())
        else:
            details: dict[str, Any] = {"message": alert.message, "kind": alert.kind}
            if alert.kind == "threshold":
                details.update(
                    budget=alert.budget,
                    unit=alert.unit,
                    spent=alert.fmt(alert.spent),
                    limit=alert.fmt(alert.limit),
                    remaining=alert.fmt(alert.remaining),
                    threshold=f"{(alert.threshold or 0) * 100:g}%",
                    period=alert.period_id,
                    resets_at=alert.resets_at.isoformat() if alert.resets_at else None,
                )
            elif alert.guardrail:
                details.update(guardrail=alert.guardrail, run_id=alert.run_id)
            event = {
                "event_action": "trigger",
                "dedup_key": alert.incident_key,
                "payload": {
                    "summary": alert.summary,
                    "source": f"agentkavach/{alert.agent}",
                    "severity": alert.severity,
                    "component": alert.agent,
                    "group": alert.budget or alert.guardrail or "agent",
                    "class": alert.kind,
                    "timestamp": alert.at.isoformat(),
                    "custom_details": details,
                },
                "client": "AgentKavach",
            }
            if alert.dashboard_url:
                event["client_url"] = alert.dashboard_url
                event["links"] = [{"href": alert.dashboard_url, "text": "AgentKavach dashboard"}]
        event["routing_key"] = self.routing_key.get()
        payload = event["payload"]
        payload["summary"] = str(payload["summary"])[:1024]
        event["dedup_key"] = str(event["dedup_key"])[:255]
        return event

    def request(self, alert: Alert, now: float) -> HttpRequest | None:
        body = json.dumps(self.event(alert), ensure_ascii=False).encode()
        return HttpRequest(self.api_url, body, {"content-type": "application/json"})

    def check(self, response: HttpResponse) -> None:
        check_status(response, "PagerDuty")
