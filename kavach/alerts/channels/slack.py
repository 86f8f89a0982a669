"""Slack through an incoming webhook: a Block Kit message with a plain-text fallback.

The message has a header (severity, agent, what happened), a section with the agent, budget
type, current / limit, remaining, period and reset time, and a context line with the dashboard
link. Slack's webhook errors are worded so the fix is clear:

- ``invalid_payload`` (400): the message was malformed (a custom template produced bad text);
- ``channel_not_found`` (404) / ``channel_is_archived`` (410): the channel is gone;
- 403 (``invalid_token``, ``action_prohibited``) or 404 ``no_service``: the webhook was revoked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from kavach.alerts.alert import Alert
from kavach.alerts.channels.base import DeliveryError, HttpRequest, HttpResponse, check_status
from kavach.alerts.secret import Secret, describe_url
from kavach.alerts.templates import render

_HEADER_MAX = 150
_TEXT_MAX = 2900
_SEVERITY_MARK = {"info": "INFO", "warning": "WARNING", "error": "ERROR", "critical": "CRITICAL"}

_REVOKED = (
    "the webhook was revoked or its app removed; create a new incoming webhook and update "
    "slack_webhook_url / AGENTKAVACH_SLACK_WEBHOOK_URL"
)
_EXPLAIN = {
    "invalid_payload": "the message was malformed (check a custom Slack template)",
    "channel_not_found": "the channel the webhook posts to no longer exists; " + _REVOKED,
    "channel_is_archived": "the channel the webhook posts to is archived; unarchive it or "
    "create a new incoming webhook",
    "no_service": _REVOKED,
    "no_team": _REVOKED,
    "invalid_token": _REVOKED,
    "action_prohibited": "an admin restricted posting to this channel; " + _REVOKED,
    "posting_to_general_channel_denied": "only admins may post to this channel",
}


def _esc(text: str) -> str:
    """Slack mrkdwn treats ``&``, ``<`` and ``>`` as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class SlackChannel:
    """Post alerts to a Slack incoming webhook.

    ``template`` (optional) replaces the plain-text fallback and the message line under the
    header; see ``kavach.alerts.templates`` for placeholders.
    """

    webhook_url: Secret
    name: str = "slack"
    template: str | None = None
    timeout: float = 10.0
    kind: ClassVar[str] = "slack"

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.webhook_url,)

    def target(self) -> str:
        return describe_url(self.webhook_url)

    def payload(self, alert: Alert) -> dict[str, Any]:
        text = render(self.template, alert.placeholders()) if self.template else alert.summary
        header = f"{_SEVERITY_MARK[alert.severity]}: {alert.summary}"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(header, _HEADER_MAX)}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(_esc(text if self.template else alert.message), _TEXT_MAX),
                },
            },
        ]
        fields = [("Agent", alert.agent)]
        if alert.kind == "threshold":
            fields += [
                ("Budget type", f"{alert.budget} ({alert.unit})"),
                ("Current / limit", f"{alert.fmt(alert.spent)} / {alert.fmt(alert.limit)}"),
                ("Remaining", alert.fmt(alert.remaining)),
                ("Period", f"{alert.period} {alert.period_id}"),
                ("Resets", alert.resets_text),
            ]
        elif alert.kind == "guardrail":
            fields += [("Guardrail", alert.guardrail or ""), ("Run", alert.run_id or "")]
        fields.append(("Severity", alert.severity))
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _clip(f"*{label}*\n{_esc(value)}", 2000)}
                    for label, value in fields
                ],
            }
        )
        context = f"AgentKavach · {alert.at:%Y-%m-%d %H:%M:%S} UTC"
        if alert.dashboard_url:
            link = alert.dashboard_url.replace("|", "%7C").replace(">", "%3E")
            context = f"<{link}|Open the dashboard> · " + context
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
        return {"text": _clip(text, _TEXT_MAX), "blocks": blocks}

    def request(self, alert: Alert, now: float) -> HttpRequest | None:
        if alert.kind == "resolve":
            return None
        body = json.dumps(self.payload(alert), ensure_ascii=False).encode()
        return HttpRequest(self.webhook_url.get(), body, {"content-type": "application/json"})

    def check(self, response: HttpResponse) -> None:
        code = response.text.strip()
        if 200 <= response.status < 300:
            return
        explained = _EXPLAIN.get(code)
        if explained is None and response.status == 403:
            explained = _REVOKED
        if explained is not None and response.status < 500 and response.status != 429:
            raise DeliveryError(
                f"Slack refused the message: HTTP {response.status} {code or ''}".rstrip()
                + f" ({explained})",
                retryable=False,
            )
        check_status(response, "Slack")
