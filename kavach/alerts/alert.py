"""The alert value: what the dispatcher hands a channel, built from a guard event.

Severity follows the threshold (PagerDuty's scale): below 90% ``warning``, 90 to 99% ``error``,
100% ``critical``. A guardrail trip is an ``error``, a stop (kill) is ``critical``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from kavach._money import fmt_usd
from kavach.events import GuardrailTrip, ThresholdCrossing

AlertKind = Literal["threshold", "guardrail", "kill", "resolve"]
Severity = Literal["info", "warning", "error", "critical"]


def severity_for(threshold: float) -> Severity:
    """``warning`` below 90%, ``error`` from 90% to 99%, ``critical`` at 100%."""
    if threshold >= 1.0 - 1e-9:
        return "critical"
    if threshold >= 0.9 - 1e-9:
        return "error"
    return "warning"


def fmt_amount(amount: int, unit: str) -> str:
    """``$1.50`` for cost (nano-dollars), ``12,000 tokens``, ``40 calls``."""
    return fmt_usd(amount) if unit == "usd" else f"{amount:,} {unit}"


def _plain(amount: int, unit: str) -> str:
    if unit == "usd":
        text = f"{amount / 1e9:.9f}".rstrip("0").rstrip(".")
        return text or "0"
    return str(amount)


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification. Amounts are in the budget's unit (nano-dollars for cost)."""

    kind: AlertKind
    agent: str
    severity: Severity
    summary: str
    """One line, used as the Slack header, email subject and PagerDuty summary."""
    message: str
    at: datetime
    incident_key: str
    """Per agent, budget and period (or agent and guardrail): PagerDuty's ``dedup_key``."""
    budget: str | None = None
    budget_key: str | None = None
    unit: str | None = None
    period: str | None = None
    period_id: str | None = None
    threshold: float | None = None
    spent: int | None = None
    limit: int | None = None
    resets_at: datetime | None = None
    guardrail: str | None = None
    run_id: str | None = None
    dashboard_url: str | None = None

    @property
    def remaining(self) -> int | None:
        if self.spent is None or self.limit is None:
            return None
        return max(0, self.limit - self.spent)

    @property
    def pct(self) -> float | None:
        """Percent of the limit spent now (may pass the threshold that fired)."""
        if self.spent is None or self.limit is None:
            return None
        return 100.0 * self.spent / self.limit if self.limit else 100.0

    def fmt(self, amount: int | None) -> str:
        return "" if amount is None or self.unit is None else fmt_amount(amount, self.unit)

    @property
    def resets_text(self) -> str:
        if self.resets_at is None:
            return "never" if self.period == "total" else "at the end of the run"
        return f"{self.resets_at:%Y-%m-%d %H:%M} UTC"

    def placeholders(self) -> dict[str, str]:
        """The values templates may use (see ``kavach.alerts.templates.PLACEHOLDERS``)."""
        unit = self.unit or "usd"
        pct = self.pct
        return {
            "agent_name": self.agent,
            "pct": "" if pct is None else f"{pct:.0f}",
            "threshold": "" if self.threshold is None else f"{self.threshold * 100:g}",
            "spent": "" if self.spent is None else _plain(self.spent, unit),
            "budget": "" if self.limit is None else _plain(self.limit, unit),
            "remaining": "" if self.remaining is None else _plain(self.remaining, unit),
            "spent_fmt": self.fmt(self.spent),
            "budget_fmt": self.fmt(self.limit),
            "remaining_fmt": self.fmt(self.remaining),
            "budget_type": self.budget or "",
            "unit": unit,
            "period": self.period or "",
            "period_id": self.period_id or "",
            "resets_at": "" if self.resets_at is None else self.resets_at.isoformat(),
            "severity": self.severity,
            "dashboard_url": self.dashboard_url or "",
            "summary": self.summary,
            "message": self.message,
            "kind": self.kind,
            "guardrail": self.guardrail or "",
            "run_id": self.run_id or "",
            "incident_key": self.incident_key,
        }


def series_key(budget_key: str) -> str:
    """The budget without its period: ``agent:bot:daily:2026-11-28`` -> ``agent:bot:daily``."""
    return budget_key.rsplit(":", 1)[0]


def from_crossing(c: ThresholdCrossing, dashboard_url: str | None) -> Alert:
    pct = f"{c.threshold * 100:g}%"
    spent, limit = fmt_amount(c.spent, c.unit), fmt_amount(c.limit, c.unit)
    stopped = " The agent is stopped until the budget resets." if c.threshold >= 1.0 else ""
    return Alert(
        kind="threshold",
        agent=c.agent,
        severity=severity_for(c.threshold),
        summary=f"{c.agent}: {c.budget} budget passed {pct} ({spent} of {limit})",
        message=(
            f"Agent {c.agent!r} has used {spent} of its {c.budget} budget of {limit} "
            f"(period {c.period_id}).{stopped}"
        ),
        at=c.at,
        incident_key=f"agentkavach:{c.agent}:{c.budget_key}",
        budget=c.budget,
        budget_key=c.budget_key,
        unit=c.unit,
        period=c.period,
        period_id=c.period_id,
        threshold=c.threshold,
        spent=c.spent,
        limit=c.limit,
        resets_at=c.resets_at,
        dashboard_url=dashboard_url,
    )


def from_trip(t: GuardrailTrip, dashboard_url: str | None) -> Alert:
    return Alert(
        kind="guardrail",
        agent=t.agent,
        severity="error",
        summary=f"{t.agent}: guardrail {t.guardrail} tripped",
        message=t.message,
        at=t.at,
        incident_key=f"agentkavach:{t.agent}:guardrail:{t.guardrail}",
        guardrail=t.guardrail,
        run_id=t.run_id,
        dashboard_url=dashboard_url,
    )


def from_kill(agent: str, reason: str, at: datetime, dashboard_url: str | None) -> Alert:
    return Alert(
        kind="kill",
        agent=agent,
        severity="critical",
        summary=f"{agent}: agent stopped",
        message=f"Agent {agent!r} was stopped: {reason}. Calls are refused until it is resumed.",
        at=at,
        incident_key=f"agentkavach:{agent}:kill",
        dashboard_url=dashboard_url,
    )


def resolving(alert: Alert, at: datetime, why: str) -> Alert:
    """The ``resolve`` that closes ``alert``'s incident."""
    return Alert(
        kind="resolve",
        agent=alert.agent,
        severity="info",
        summary=f"{alert.agent}: resolved ({why})",
        message=why,
        at=at,
        incident_key=alert.incident_key,
        budget=alert.budget,
        budget_key=alert.budget_key,
        unit=alert.unit,
        period=alert.period,
        period_id=alert.period_id,
        dashboard_url=alert.dashboard_url,
    )
