"""Alerts: tell people about spend before the hard stop, once, on the tools they watch.

Channels (Slack, PagerDuty, email, signed webhooks, the kill switch, a Python callable) are
configured through ``AgentKavach`` parameters, ``AgentKavach.channel(...)`` rules, YAML
(``build_alerting``) or the environment; the ``AlertDispatcher`` delivers them in the
background. See ``kavach.alerts.dispatcher`` for how delivery works.
"""

from kavach.alerts.alert import Alert, severity_for
from kavach.alerts.channels import (
    CallableChannel,
    Channel,
    DeliveryError,
    EmailChannel,
    KillChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
)
from kavach.alerts.channels.webhook import sign as sign_webhook
from kavach.alerts.dispatcher import (
    AlertDispatcher,
    ChannelStats,
    DedupStore,
    DispatcherStats,
    MemoryDedupStore,
)
from kavach.alerts.rules import (
    AlertingConfig,
    AlertRule,
    ChannelRule,
    build_alerting,
    channel,
    from_params,
)
from kavach.alerts.secret import Secret
from kavach.alerts.templates import PLACEHOLDERS

__all__ = [
    "PLACEHOLDERS",
    "Alert",
    "AlertDispatcher",
    "AlertRule",
    "AlertingConfig",
    "CallableChannel",
    "Channel",
    "ChannelRule",
    "ChannelStats",
    "DedupStore",
    "DeliveryError",
    "DispatcherStats",
    "EmailChannel",
    "KillChannel",
    "MemoryDedupStore",
    "PagerDutyChannel",
    "Secret",
    "SlackChannel",
    "WebhookChannel",
    "build_alerting",
    "channel",
    "from_params",
    "severity_for",
    "sign_webhook",
]
