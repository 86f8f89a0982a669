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

from collections.abc import Iterable
from urllib.parse import urlsplit

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
    """``text`` with every secret's value (and, for URLs, their path) replaced by a mask."""
    for secret in secrets:
        if secret is None:
            continue
        value = secret.get()
        if not value:
            continue
        text = text.replace(value, _MASK)
        # httpx words errors with the URL it was given, sometimes normalised; mask the path too.
        parts = urlsplit(value)
        if parts.scheme and parts.netloc and len(parts.path) > 1:
            text = text.replace(parts.path, "/" + _MASK)
    return text


def describe_url(url: Secret) -> str:
    """``https://hooks.slack.com/********``: where a secret URL points, without its secret part."""
    parts = urlsplit(url.get())
    return f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}/{_MASK}"
