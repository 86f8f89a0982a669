"""Secrets (webhook URLs, routing keys, API keys, passwords) that never show in logs or repr.

>>> s = Secret("https://hooks.slack.com/services/T000/B000/XXXX")
>>> s
Secret('********')
>>> f"{s}"
'********'
>>> s.get()[:8]
'https://'
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import httpx

_MASK = "********"


class Secret:
    """A string that masks itself in ``repr``, ``str`` and f-strings; ``get()`` reveals it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact(text: str, secrets: Iterable[Secret | None]) -> str:
    """``text`` with every secret's value (and, for URLs, their path and query) replaced by a mask.

    Each secret is looked for in the text as given and the spans found are masked together, so
    masking one secret cannot break the match of another (one webhook's path ``/s`` is also the
    start of another's ``/services/T/B/<token>``).

    >>> redact("POST https://h.io/services/T/B/x failed", [Secret("https://h.io/s"),
    ...     Secret("https://h.io/services/T/B/x")])
    'POST ******** failed'
    """
    needles: set[str] = set()
    for secret in secrets:
        value = secret.get() if secret is not None else ""
        if value:
            needles |= _needles(value)
    spans: list[tuple[int, int]] = []
    for needle in needles:
        at = text.find(needle)
        while at != -1:
            spans.append((at, at + len(needle)))
            at = text.find(needle, at + 1)
    if not spans:
        return text
    out: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if start < done:  # overlaps the span just masked: widen it
            done = max(done, end)
            continue
        out += [text[done:start], "/" + _MASK if text[start] == "/" else _MASK]
        done = end
    out.append(text[done:])
    return "".join(out)


# A query value shorter than this (``?v=1``) is not masked on its own: masking every ``1`` in a
# log line would garble it, and the URL's full forms are masked anyway.
_MIN_QUERY_VALUE = 8


@functools.lru_cache(maxsize=256)
def _needles(value: str) -> frozenset[str]:
    """The forms of a secret to look for: as given and, for a URL, as httpx words it.

    httpx logs and raises with the URL it normalised (host lowercased, default port dropped,
    spaces percent-encoded), so the normalised URL, its path and query, and each long query
    value (``?token=...``) are masked as well as the string as given.
    """
    out = {value}
    parts = urlsplit(value)
    if not (parts.scheme and parts.netloc):
        return frozenset(out)
    forms = [(parts.path, parts.query)]
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError):
        pass
    else:
        out.add(str(url))
        forms.append((url.raw_path.decode("ascii").split("?", 1)[0], url.query.decode("ascii")))
    for path, query in forms:
        if len(path) > 1:
            out.add(path)
        if query:
            out.add(query)
            for _, item in parse_qsl(query, keep_blank_values=True):
                if len(item) >= _MIN_QUERY_VALUE:
                    out |= {item, quote(item, safe=""), quote_plus(item)}
    return frozenset(n for n in out if n)


def describe_url(url: Secret) -> str:
    """``https://hooks.slack.com/********``: where a secret URL points, without its secret part."""
    parts = urlsplit(url.get())
    return f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}/{_MASK}"


class _RedactSecrets(logging.Filter):
    """Masks registered secrets in records of the loggers it is attached to.

    httpx logs every request's full URL at INFO (``HTTP Request: POST https://hooks.slack.com/
    services/T/B/<token>``); a Slack webhook URL is a credential, so the ``httpx`` logger gets
    this filter while any alert channel holds a secret URL.
    """

    def __init__(self) -> None:
        super().__init__("kavach-redact")
        self._secrets: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[Secret | None]) -> None:
        with self._lock:
            for s in secrets:
                if s is not None and s.get():
                    self._secrets[s.get()] = self._secrets.get(s.get(), 0) + 1

    def remove(self, secrets: Iterable[Secret | None]) -> None:
        with self._lock:
            for s in secrets:
                if s is not None and s.get() in self._secrets:
                    self._secrets[s.get()] -= 1
                    if not self._secrets[s.get()]:
                        del self._secrets[s.get()]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        with self._lock:
            values = [Secret(v) for v in self._secrets]
        masked = redact(message, values)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_filter = _RedactSecrets()
logging.getLogger("httpx").addFilter(_filter)


def hide_in_logs(secrets: Iterable[Secret | None]) -> None:
    """Mask these secrets in the HTTP client's own log records (until ``show_in_logs``)."""
    _filter.add(secrets)


def show_in_logs(secrets: Iterable[Secret | None]) -> None:
    _filter.remove(secrets)
