"""Alert rules and channel settings: what fires, where it goes, validated when the guard is built.

Users write settings (keyword arguments, YAML mappings, environment variables); they are
checked with pydantic and turned into frozen values: a channel (``SlackChannel``, ...) and the
``AlertRule`` s that send to it, paired in a ``ChannelRule``.

>>> rule = channel("slack", threshold=0.7, webhook_url="https://hooks.slack.com/services/T/B/X")
>>> rule.rules[0].threshold, rule.channel.name
(0.7, 'slack')

Defaults when no threshold is given: Slack, email, webhook and callable channels fire at 70%,
90% and 100% of every budget and on guardrail trips; PagerDuty at 90% and 100% and on
guardrail trips. A rule's ``cooldown`` (default 300 s) is the shortest time before the same
alert (agent, budget, period, threshold, channel; or agent, guardrail, channel) fires again; a
budget threshold fires at most once per period in any case.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kavach.alerts.channels import (
    CallableChannel,
    Channel,
    EmailChannel,
    KillChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
)
from kavach.alerts.channels.base import check_url, is_loopback
from kavach.alerts.channels.email import RESEND_URL, check_address
from kavach.alerts.channels.pagerduty import EVENTS_URL, check_routing_key, load_template
from kavach.alerts.secret import Secret
from kavach.alerts.templates import check_template
from kavach.errors import KavachConfigError
from kavach.events import GuardrailTrip, ThresholdCrossing

ChannelKind = Literal["slack", "pagerduty", "email", "webhook", "kill", "callable"]
KINDS: tuple[str, ...] = ("slack", "pagerduty", "email", "webhook", "kill", "callable")
UNITS: tuple[str, ...] = ("usd", "tokens", "calls")
DEFAULT_COOLDOWN_SECONDS = 300.0
DEFAULT_THRESHOLDS: Mapping[str, tuple[float, ...]] = {
    "slack": (0.7, 0.9, 1.0),
    "email": (0.7, 0.9, 1.0),
    "webhook": (0.7, 0.9, 1.0),
    "callable": (0.7, 0.9, 1.0),
    "pagerduty": (0.9, 1.0),
}
_RULE_KEYS = frozenset(
    {"threshold", "thresholds", "budgets", "units", "guardrails", "kills", "cooldown"}
)


# -- values used inside ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRule:
    """When to alert, and on which channels (by name).

    ``threshold``: a fraction in (0, 1]; the rule fires when a covered budget passes it.
    ``None`` makes an event-only rule (guardrail trips, kills).
    ``budgets``: budget labels to cover (``daily``, ``shared:team monthly``, ``daily tokens``);
    empty covers all. ``units``: which budget kinds (``usd``, ``tokens``, ``calls``).
    ``guardrails``: guardrail names whose trips alert (``loop_detected``, ...), ``"*"`` for all.
    ``kills``: alert when the agent is stopped. ``cooldown_seconds``: see the module docstring.
    """

    channels: tuple[str, ...]
    threshold: float | None = None
    budgets: tuple[str, ...] = ()
    units: tuple[str, ...] = UNITS
    guardrails: tuple[str, ...] = ()
    kills: bool = False
    cooldown_seconds: float = DEFAULT_COOLDOWN_SECONDS

    def covers_crossing(self, c: ThresholdCrossing) -> bool:
        return (
            self.threshold is not None
            and abs(self.threshold - c.threshold) < 1e-9
            and c.unit in self.units
            and (not self.budgets or c.budget in self.budgets)
        )

    def covers_trip(self, t: GuardrailTrip) -> bool:
        return "*" in self.guardrails or t.guardrail in self.guardrails


@dataclass(frozen=True, slots=True, eq=False)
class ChannelRule:
    """A channel and the rules that send to it; what ``AgentKavach.channel(...)`` returns."""

    channel: Channel
    rules: tuple[AlertRule, ...]

    def __repr__(self) -> str:
        return f"ChannelRule({self.channel.kind} {self.channel.name!r}, {len(self.rules)} rule(s))"


@dataclass(frozen=True, slots=True)
class AlertingConfig:
    """Every channel by name and every rule: what the dispatcher runs."""

    channels: Mapping[str, Channel]
    rules: tuple[AlertRule, ...]
    dashboard_url: str | None = None

    @property
    def thresholds(self) -> frozenset[float]:
        return frozenset(r.threshold for r in self.rules if r.threshold is not None)

    def __bool__(self) -> bool:
        return bool(self.rules)


# -- settings users write (pydantic at the edge) ---------------------------------------------


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: str | None = None
    timeout: float = Field(10.0, gt=0, le=300)


class SlackSettings(_Settings):
    type: Literal["slack"] = "slack"
    webhook_url: str
    template: str | None = None

    def build(self, name: str) -> SlackChannel:
        check_url(self.webhook_url, f"channel {name!r}: webhook_url")
        if self.template is not None:
            check_template(self.template, f"channel {name!r}: template")
        return SlackChannel(Secret(self.webhook_url), name, self.template, self.timeout)


class PagerDutySettings(_Settings):
    type: Literal["pagerduty"] = "pagerduty"
    routing_key: str
    template: dict[str, Any] | str | None = None
    api_url: str = EVENTS_URL

    def build(self, name: str) -> PagerDutyChannel:
        check_routing_key(self.routing_key)
        check_url(self.api_url, f"channel {name!r}: api_url")
        template = (
            load_template(self.template, f"channel {name!r}: template")
            if self.template is not None
            else None
        )
        return PagerDutyChannel(
            Secret(self.routing_key), name, template, self.api_url, self.timeout
        )


class EmailSettings(_Settings):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["email"] = "email"
    to: str | list[str]
    from_addr: str = Field("AgentKavach <alerts@agentkavach.localhost>", alias="from")
    smtp_host: str = "localhost"
    smtp_port: int | None = Field(None, gt=0, lt=65536)
    security: Literal["starttls", "ssl", "none"] | None = None
    username: str | None = None
    password: str | None = None
    api: Literal["resend"] | None = None
    api_url: str = RESEND_URL
    api_key: str | None = None
    template: str | None = None
    timeout: float = Field(15.0, gt=0, le=300)

    def build(self, name: str) -> EmailChannel:
        where = f"channel {name!r}"
        to = [self.to] if isinstance(self.to, str) else list(self.to)
        to = [a.strip() for item in to for a in item.split(",") if a.strip()]
        if not to:
            raise KavachConfigError(f"{where}: give at least one address in 'to'")
        for address in to:
            check_address(address, f"{where}: to")
        check_address(self.from_addr, f"{where}: from")
        if self.template is not None:
            check_template(self.template, f"{where}: template")
        if self.api is not None:
            check_url(self.api_url, f"{where}: api_url")
            if not self.api_key:
                raise KavachConfigError(f"{where}: api={self.api!r} needs api_key")
        security = self.security
        if security is None:
            if self.smtp_port == 465:
                security = "ssl"
            elif is_loopback(self.smtp_host) and self.smtp_port != 587:
                security = "none"
            else:
                security = "starttls"
        port = self.smtp_port or {"ssl": 465, "starttls": 587, "none": 25}[security]
        if self.password is not None and security == "none" and not is_loopback(self.smtp_host):
            raise KavachConfigError(
                f"{where}: refusing to send an SMTP password without TLS to a remote host; "
                "set security='starttls' or 'ssl'"
            )
        return EmailChannel(
            to=tuple(to),
            from_addr=self.from_addr,
            name=name,
            smtp_host=self.smtp_host,
            smtp_port=port,
            security=security,
            username=self.username,
            password=Secret(self.password) if self.password is not None else None,
            api=self.api,
            api_url=self.api_url,
            api_key=Secret(self.api_key) if self.api_key else None,
            template=self.template,
            timeout=self.timeout,
        )


class WebhookSettings(_Settings):
    type: Literal["webhook"] = "webhook"
    url: str
    secret: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    template: str | None = None

    def build(self, name: str) -> WebhookChannel:
        check_url(self.url, f"channel {name!r}: url")
        if self.template is not None:
            check_template(self.template, f"channel {name!r}: template")
        if self.secret is not None and len(self.secret) < 16:
            raise KavachConfigError(
                f"channel {name!r}: the webhook secret is too short; use at least 16 random characters"
            )
        return WebhookChannel(
            Secret(self.url),
            Secret(self.secret) if self.secret is not None else None,
            name,
            self.template,
            dict(self.headers),
            self.timeout,
        )


class KillSettings(_Settings):
    type: Literal["kill"] = "kill"

    def build(self, name: str) -> KillChannel:
        return KillChannel(name)


class CallableSettings(_Settings):
    type: Literal["callable"] = "callable"
    fn: Callable[..., Any]

    def build(self, name: str) -> CallableChannel:
        return CallableChannel(self.fn, name, self.timeout)


_SETTINGS: Mapping[str, type[_Settings]] = {
    "slack": SlackSettings,
    "pagerduty": PagerDutySettings,
    "email": EmailSettings,
    "webhook": WebhookSettings,
    "kill": KillSettings,
    "callable": CallableSettings,
}


UnitName = Literal["usd", "tokens", "calls"]


def _all_units() -> list[UnitName]:
    return ["usd", "tokens", "calls"]


class RuleSettings(BaseModel):
    """An alert rule as users write it (``alerts:`` entries in YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    threshold: float | None = Field(None, gt=0, le=1)
    thresholds: list[float] | None = None
    channels: list[str] = Field(default_factory=list)
    budgets: list[str] = Field(default_factory=list)
    units: list[UnitName] = Field(default_factory=_all_units)
    guardrails: bool | list[str] = False
    kills: bool = False
    cooldown: float = Field(DEFAULT_COOLDOWN_SECONDS, ge=0)

    def build(self, channels: Sequence[str], where: str) -> tuple[AlertRule, ...]:
        thresholds = list(self.thresholds or [])
        if self.threshold is not None:
            thresholds.append(self.threshold)
        for t in thresholds:
            if not 0 < t <= 1:
                raise KavachConfigError(f"{where}: thresholds are fractions in (0, 1], got {t}")
        guardrails: tuple[str, ...]
        if self.guardrails is True:
            guardrails = ("*",)
        elif self.guardrails is False:
            guardrails = ()
        else:
            guardrails = tuple(self.guardrails)
        base = AlertRule(
            channels=tuple(channels),
            budgets=tuple(self.budgets),
            units=tuple(self.units),
            cooldown_seconds=self.cooldown,
        )
        rules = [replace(base, threshold=t) for t in sorted(set(thresholds))]
        if guardrails or self.kills:
            rules.append(replace(base, guardrails=guardrails, kills=self.kills))
        if not rules:
            raise KavachConfigError(
                f"{where}: the rule fires on nothing; give threshold=, guardrails=True or kills=True"
            )
        return tuple(rules)


def _config_error(exc: ValidationError, where: str) -> KavachConfigError:
    # pydantic's own message repeats the input, which may be a secret: word it from loc + msg.
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )
    return KavachConfigError(f"{where}: {problems}")


def _split(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    rule = {k: v for k, v in settings.items() if k in _RULE_KEYS}
    chan = {k: v for k, v in settings.items() if k not in _RULE_KEYS}
    return chan, rule


def _channel(kind: str, name: str, settings: Mapping[str, Any]) -> Channel:
    model = _SETTINGS.get(kind)
    if model is None:
        raise KavachConfigError(
            f"channel {name!r}: unknown type {kind!r}; choose one of {', '.join(KINDS)}"
        )
    try:
        parsed = model.model_validate({**settings, "type": kind})
    except ValidationError as exc:
        raise _config_error(exc, f"channel {name!r} ({kind})") from None
    built: Channel = parsed.build(name)  # type: ignore[attr-defined]
    return built


def _rules_for(kind: str, name: str, rule: Mapping[str, Any]) -> tuple[AlertRule, ...]:
    rule = dict(rule)
    if "threshold" not in rule and "thresholds" not in rule:
        if kind == "kill":
            raise KavachConfigError(f"channel {name!r}: a kill rule needs threshold=, e.g. 1.0")
        rule["thresholds"] = list(DEFAULT_THRESHOLDS[kind])
    if kind != "kill":
        rule.setdefault("guardrails", True)
    try:
        parsed = RuleSettings.model_validate(rule)
    except ValidationError as exc:
        raise _config_error(exc, f"channel {name!r} rule") from None
    return parsed.build((name,), f"channel {name!r} rule")


def channel(kind: ChannelKind | Callable[..., Any], /, **settings: Any) -> ChannelRule:
    """A channel and its rule, from keyword settings; see ``AgentKavach.channel``.

    Rule keywords: ``threshold`` or ``thresholds``, ``budgets``, ``units``, ``guardrails``
    (default ``True`` except for kill), ``kills``, ``cooldown`` (seconds). Every other
    keyword is a channel setting: ``webhook_url``/``template`` (slack); ``routing_key``/
    ``template``/``api_url`` (pagerduty); ``to``/``from``/``smtp_host``/``smtp_port``/
    ``security``/``username``/``password``/``api``/``api_url``/``api_key`` (email);
    ``url``/``secret``/``headers``/``template`` (webhook); ``fn`` (callable); ``name`` and
    ``timeout`` for all.
    """
    if callable(kind):
        settings = {**settings, "fn": kind}
        kind = "callable"
    chan, rule = _split(settings)
    name = str(chan.pop("name", None) or kind)
    built = _channel(kind, name, chan)
    return ChannelRule(built, _rules_for(kind, name, rule))


def build_alerting(
    channels: Mapping[str, Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]] = (),
) -> list[ChannelRule]:
    """Channel rules from the YAML shape (after ``${VAR}`` interpolation).

    ``channels`` maps a name to its settings; ``type`` defaults to the name when the name is a
    channel type. Rule keywords inside a channel's settings give that channel its own rule.
    ``alerts`` is a list of rules naming channels::

        channels:
          slack: {webhook_url: "${SLACK_URL}"}
          oncall: {type: pagerduty, routing_key: "${PD_KEY}", template: {...}}
          stop: {type: kill, threshold: 1.0}
        alerts:
          - {threshold: 0.7, channels: [slack]}
          - {threshold: 0.9, channels: [slack, oncall], budgets: [daily], cooldown: 600}
          - {guardrails: true, channels: [slack]}

    A channel neither named by an alert nor carrying its own rule keywords gets its default
    rules. Raises ``KavachConfigError`` naming the bad channel, rule or field.
    """
    built: dict[str, Channel] = {}
    own: dict[str, tuple[AlertRule, ...]] = {}
    for name, raw in channels.items():
        if not isinstance(raw, Mapping):
            raise KavachConfigError(f"channel {name!r}: settings must be a mapping")
        chan, rule = _split(raw)
        kind = str(chan.pop("type", name))
        chan.pop("name", None)
        built[name] = _channel(kind, name, chan)
        if rule:
            own[name] = _rules_for(kind, name, rule)
    named: dict[str, list[AlertRule]] = {name: [] for name in built}
    for i, raw in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(raw, Mapping):
            raise KavachConfigError(f"{where}: must be a mapping")
        try:
            parsed = RuleSettings.model_validate(raw)
        except ValidationError as exc:
            raise _config_error(exc, where) from None
        if not parsed.channels:
            raise KavachConfigError(f"{where}: name at least one channel in 'channels'")
        for name in parsed.channels:
            if name not in built:
                known = ", ".join(sorted(built)) or "none defined"
                raise KavachConfigError(f"{where}: unknown channel {name!r} (channels: {known})")
        for alert_rule in parsed.build(parsed.channels, where):
            for name in alert_rule.channels:
                named[name].append(replace(alert_rule, channels=(name,)))
    out = []
    for name, chan_obj in built.items():
        rules = tuple(named[name]) + own.get(name, ())
        if not rules:
            rules = _rules_for(chan_obj.kind, name, {})
        out.append(ChannelRule(chan_obj, rules))
    return out


def from_params(
    *,
    slack_webhook_url: str | None = None,
    pagerduty_routing_key: str | None = None,
    alert_email: str | Sequence[str] | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    channels: Iterable[ChannelRule] = (),
    dashboard_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AlertingConfig:
    """Merge the guard's alert parameters, ``channels=[...]`` and the environment.

    The environment (``AGENTKAVACH_SLACK_WEBHOOK_URL``, ``AGENTKAVACH_PAGERDUTY_ROUTING_KEY``
    or ``AGENTKAVACH_PD_ROUTING_KEY``, with ``AGENTKAVACH_PAGERDUTY_API_URL`` for another
    region, ``AGENTKAVACH_ALERT_EMAIL`` with ``AGENTKAVACH_SMTP_*``
    or ``AGENTKAVACH_RESEND_API_KEY``, ``AGENTKAVACH_WEBHOOK_URL`` and
    ``AGENTKAVACH_WEBHOOK_SECRET``, ``AGENTKAVACH_DASHBOARD_URL``) turns a channel type on only
    when neither a parameter nor ``channels=`` configured that type.
    """
    env = os.environ if env is None else env
    given = list(channels)
    for item in given:
        if not isinstance(item, ChannelRule):
            raise KavachConfigError(
                f"channels= takes AgentKavach.channel(...) values, got {type(item).__name__}"
            )
    kinds = {item.channel.kind for item in given}
    extra: list[ChannelRule] = []

    def get(*names: str) -> str | None:
        for n in names:
            value = env.get(n, "").strip()
            if value:
                return value
        return None

    slack = slack_webhook_url or (
        None if "slack" in kinds else get("AGENTKAVACH_SLACK_WEBHOOK_URL")
    )
    if slack:
        extra.append(channel("slack", webhook_url=slack))
    pd = pagerduty_routing_key or (
        None
        if "pagerduty" in kinds
        else get("AGENTKAVACH_PAGERDUTY_ROUTING_KEY", "AGENTKAVACH_PD_ROUTING_KEY")
    )
    if pd:
        pd_url = get("AGENTKAVACH_PAGERDUTY_API_URL")  # e.g. the EU service region
        extra.append(
            channel("pagerduty", routing_key=pd, **({"api_url": pd_url} if pd_url else {}))
        )
    email = alert_email or (None if "email" in kinds else get("AGENTKAVACH_ALERT_EMAIL"))
    if email:
        extra.append(channel("email", **_email_env(email, get)))
    hook = webhook_url or (None if "webhook" in kinds else get("AGENTKAVACH_WEBHOOK_URL"))
    if hook:
        secret = webhook_secret or get("AGENTKAVACH_WEBHOOK_SECRET")
        extra.append(channel("webhook", url=hook, secret=secret))
    elif webhook_secret:
        raise KavachConfigError("webhook_secret was given without webhook_url")
    dashboard = dashboard_url or get("AGENTKAVACH_DASHBOARD_URL")
    if dashboard:
        check_url(dashboard, "dashboard_url")
    return merge(given + extra, dashboard)


def _email_env(to: str | Sequence[str], get: Callable[..., str | None]) -> dict[str, Any]:
    settings: dict[str, Any] = {"to": to if isinstance(to, str) else list(to)}
    for key, var in (
        ("smtp_host", "AGENTKAVACH_SMTP_HOST"),
        ("smtp_port", "AGENTKAVACH_SMTP_PORT"),
        ("security", "AGENTKAVACH_SMTP_SECURITY"),
        ("username", "AGENTKAVACH_SMTP_USERNAME"),
        ("password", "AGENTKAVACH_SMTP_PASSWORD"),
        ("from", "AGENTKAVACH_EMAIL_FROM"),
        ("api_url", "AGENTKAVACH_EMAIL_API_URL"),
    ):
        value = get(var)
        if value is not None:
            settings[key] = value
    api_key = get("AGENTKAVACH_RESEND_API_KEY")
    if api_key:
        settings["api"] = "resend"
        settings["api_key"] = api_key
    return settings


def merge(items: Iterable[ChannelRule], dashboard_url: str | None = None) -> AlertingConfig:
    """One ``AlertingConfig`` from channel rules. Equal channels (same name and settings, as
    when several rules send to one YAML channel) become one; two different channels with one
    name are told apart as ``slack``, ``slack-2``, ..."""
    channels: dict[str, Channel] = {}
    rules: list[AlertRule] = []
    for item in items:
        name = item.channel.name
        existing = channels.get(name)
        if existing is not None and existing != item.channel:
            n = 2
            while f"{name}-{n}" in channels:
                n += 1
            name = f"{name}-{n}"
            channels[name] = replace(item.channel, name=name)
        else:
            channels[name] = item.channel
        for rule in item.rules:
            rules.append(
                replace(
                    rule,
                    channels=tuple(name if c == item.channel.name else c for c in rule.channels),
                )
            )
    return AlertingConfig(channels, tuple(rules), dashboard_url)


__all__ = [
    "AlertRule",
    "AlertingConfig",
    "ChannelRule",
    "DEFAULT_COOLDOWN_SECONDS",
    "DEFAULT_THRESHOLDS",
    "build_alerting",
    "channel",
    "from_params",
    "merge",
]
