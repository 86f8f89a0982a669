"""Alert channels: Slack, PagerDuty, email, signed webhooks, the kill switch, a Python callable."""

from kavach.alerts.channels.base import DeliveryError, HttpRequest, HttpResponse
from kavach.alerts.channels.callable import CallableChannel
from kavach.alerts.channels.email import EmailChannel
from kavach.alerts.channels.kill import KillChannel
from kavach.alerts.channels.pagerduty import PagerDutyChannel
from kavach.alerts.channels.slack import SlackChannel
from kavach.alerts.channels.webhook import WebhookChannel

Channel = (
    SlackChannel | PagerDutyChannel | EmailChannel | WebhookChannel | KillChannel | CallableChannel
)

__all__ = [
    "CallableChannel",
    "Channel",
    "DeliveryError",
    "EmailChannel",
    "HttpRequest",
    "HttpResponse",
    "KillChannel",
    "PagerDutyChannel",
    "SlackChannel",
    "WebhookChannel",
]
