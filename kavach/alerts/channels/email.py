"""Email alerts with an HTML and a plain-text part, over SMTP or an HTTP email API.

SMTP uses the standard library (``smtplib``) in a short-lived worker thread, so the
dispatcher's event loop never blocks on it. ``security`` is ``"starttls"`` (default on port
587), ``"ssl"`` (default on port 465) or ``"none"`` (a local relay). With ``api="resend"`` the
message goes to a Resend-compatible HTTP API (``POST {api_url}/emails`` with a bearer key).
"""

from __future__ import annotations

import html
import json
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import ClassVar, Literal

from kavach.alerts.alert import Alert
from kavach.alerts.channels.base import HttpRequest, HttpResponse, check_status
from kavach.alerts.secret import Secret
from kavach.alerts.templates import render
from kavach.errors import KavachConfigError

ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
Security = Literal["starttls", "ssl", "none"]
RESEND_URL = "https://api.resend.com"


def check_address(address: str, what: str = "email address") -> str:
    bare = address.strip()
    if "<" in bare and bare.endswith(">"):
        bare = bare[bare.rindex("<") + 1 : -1]
    domain = bare.rsplit("@", 1)[-1]
    if not ADDRESS.match(bare) or ("." not in domain and domain != "localhost"):
        raise KavachConfigError(f"{what} {address!r} is not an email address like ops@example.com")
    return address.strip()


def _rows(alert: Alert) -> list[tuple[str, str]]:
    rows = [("Agent", alert.agent), ("Severity", alert.severity)]
    if alert.kind == "threshold":
        rows += [
            ("Budget type", f"{alert.budget} ({alert.unit})"),
            ("Current / limit", f"{alert.fmt(alert.spent)} / {alert.fmt(alert.limit)}"),
            ("Remaining", alert.fmt(alert.remaining)),
            ("Period", f"{alert.period} {alert.period_id}"),
            ("Resets", alert.resets_text),
        ]
    elif alert.kind == "guardrail":
        rows += [("Guardrail", alert.guardrail or ""), ("Run", alert.run_id or "")]
    if alert.dashboard_url:
        rows.append(("Dashboard", alert.dashboard_url))
    return rows


@dataclass(frozen=True, slots=True)
class EmailChannel:
    """Send alerts to ``to`` by SMTP (default) or an HTTP email API."""

    to: tuple[str, ...]
    from_addr: str = "AgentKavach <alerts@agentkavach.localhost>"
    name: str = "email"
    smtp_host: str = "localhost"
    smtp_port: int = 587
    security: Security = "starttls"
    username: str | None = None
    password: Secret | None = None
    api: Literal["resend"] | None = None
    api_url: str = RESEND_URL
    api_key: Secret | None = None
    template: str | None = None
    timeout: float = 15.0
    kind: ClassVar[str] = "email"

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.password, self.api_key)

    def target(self) -> str:
        if self.api is not None:
            return self.api_url
        return f"smtp://{self.smtp_host}:{self.smtp_port}"

    # -- pure -----------------------------------------------------------------------------

    def parts(self, alert: Alert) -> tuple[str, str, str]:
        """(subject, text, html) for ``alert``."""
        subject = f"[{alert.severity.upper()}] {alert.summary}"
        intro = render(self.template, alert.placeholders()) if self.template else alert.message
        rows = _rows(alert)
        text = intro + "\n\n" + "\n".join(f"{k}: {v}" for k, v in rows) + "\n\n-- AgentKavach\n"
        cells = "".join(
            f"<tr><th align='left' style='padding:2px 12px 2px 0'>{html.escape(k)}</th>"
            f"<td>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        link = (
            f"<p><a href='{html.escape(alert.dashboard_url, quote=True)}'>Open the dashboard</a></p>"
            if alert.dashboard_url
            else ""
        )
        body = (
            "<!doctype html><html><body style='font-family:sans-serif'>"
            f"<h2>{html.escape(alert.summary)}</h2><p>{html.escape(intro)}</p>"
            f"<table>{cells}</table>{link}<p style='color:#888'>AgentKavach</p></body></html>"
        )
        return subject, text, body

    def message(self, alert: Alert) -> EmailMessage:
        subject, text, body = self.parts(alert)
        msg = EmailMessage()
        msg["Subject"] = subject
        msg["From"] = self.from_addr
        msg["To"] = ", ".join(self.to)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="agentkavach")
        msg.set_content(text)
        msg.add_alternative(body, subtype="html")
        return msg

    def request(self, alert: Alert, now: float) -> HttpRequest | None:
        """The HTTP API request (only when ``api`` is set)."""
        if alert.kind == "resolve" or self.api is None or self.api_key is None:
            return None
        subject, text, body = self.parts(alert)
        payload = {
            "from": self.from_addr,
            "to": list(self.to),
            "subject": subject,
            "text": text,
            "html": body,
        }
        return HttpRequest(
            self.api_url.rstrip("/") + "/emails",
            json.dumps(payload, ensure_ascii=False).encode(),
            {"content-type": "application/json", "authorization": f"Bearer {self.api_key.get()}"},
        )

    def check(self, response: HttpResponse) -> None:
        check_status(response, "the email API")

    # -- blocking I/O (run in a worker thread by the dispatcher) -------------------------

    def send_smtp(self, msg: EmailMessage) -> None:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(
                self.smtp_host, self.smtp_port, timeout=self.timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout)
        with smtp:
            if self.security == "starttls":
                smtp.starttls(context=context)
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password.get())
            smtp.send_message(msg)
