"""What every channel shares: the sans-I/O HTTP request, delivery errors, URL checks.

A channel that posts over HTTP is a frozen value with two pure methods, ``request(alert, now)``
(what to send) and ``check(response)`` (what the answer means); the dispatcher does the I/O,
timeouts and retries for all of them alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from kavach.errors import KavachConfigError


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A JSON POST to make."""

    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    text: str
    headers: Mapping[str, str]


class DeliveryError(Exception):
    """A channel could not deliver. ``reason`` is safe to log (no secrets)."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def check_status(response: HttpResponse, service: str) -> None:
    """Raise ``DeliveryError`` for anything but 2xx: 408, 429 and 5xx are retried."""
    status = response.status
    if 200 <= status < 300:
        return
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    detail = response.text.strip()[:200]
    reason = f"{service} answered HTTP {status}" + (f": {detail}" if detail else "")
    if status in (408, 429) or status >= 500:
        raise DeliveryError(reason, retryable=True, retry_after=retry_after)
    raise DeliveryError(reason, retryable=False)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """``url`` if it is https (or http to a loopback address, for local relays and tests)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise KavachConfigError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise KavachConfigError(f"{what} must be an https:// URL")
    if parts.scheme == "http" and not is_loopback(host):
        # The URL itself may carry a token (Slack hooks do), so it is not repeated here.
        raise KavachConfigError(
            f"{what} must use https:// (plain http is only allowed to a loopback address such as "
            "127.0.0.1 or localhost)"
        )
    return url
