"""Message templates with the reference product's placeholders, checked when they are loaded.

Placeholders (all filled as text):

==================  =========================================================================
``{agent_name}``    the agent
``{pct}``           percent of the limit spent now, e.g. ``92``
``{threshold}``     the threshold that fired, in percent, e.g. ``90``
``{spent}``         spent, as a plain number (dollars for cost budgets, else a count)
``{budget}``        the limit, as a plain number
``{remaining}``     what is left, as a plain number
``{spent_fmt}``     spent, formatted: ``$45.00`` or ``12,000 tokens``
``{budget_fmt}``    the limit, formatted
``{remaining_fmt}`` what is left, formatted
``{budget_type}``   the budget's label: ``daily``, ``shared:team monthly``, ``daily tokens``
``{unit}``          ``usd``, ``tokens`` or ``calls``
``{period}``        ``daily``, ``weekly``, ``monthly``, ``total``, ``per_run``
``{period_id}``     the period, e.g. ``2026-11-28``
``{resets_at}``     when the period resets (ISO 8601, UTC), empty if never
``{severity}``      ``warning``, ``error``, ``critical`` (``info`` for a resolve)
``{dashboard_url}`` the dashboard link given to the guard, or empty
``{summary}``       the one-line summary kavach writes
``{message}``       the longer explanation kavach writes
``{kind}``          ``threshold``, ``guardrail``, ``kill`` or ``resolve``
``{guardrail}``     the guardrail that tripped (guardrail alerts)
``{run_id}``        the run (guardrail alerts)
``{incident_key}``  the per agent, budget and period key (PagerDuty's ``dedup_key``)
==================  =========================================================================

An unknown placeholder, or a malformed one, raises ``KavachConfigError`` at load time, not
when the alert fires. Literal braces are written ``{{`` and ``}}``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from kavach.errors import KavachConfigError

PLACEHOLDERS: frozenset[str] = frozenset(
    {
        "agent_name",
        "pct",
        "threshold",
        "spent",
        "budget",
        "remaining",
        "spent_fmt",
        "budget_fmt",
        "remaining_fmt",
        "budget_type",
        "unit",
        "period",
        "period_id",
        "resets_at",
        "severity",
        "dashboard_url",
        "summary",
        "message",
        "kind",
        "guardrail",
        "run_id",
        "incident_key",
    }
)

_FORMATTER = string.Formatter()


def check_template(text: str, where: str = "template") -> str:
    """Return ``text`` if every placeholder in it is known, else raise ``KavachConfigError``."""
    try:
        fields = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise KavachConfigError(
            f"{where}: malformed template ({exc}); write literal braces as {{{{ }}}}"
        ) from None
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise KavachConfigError(
                f"{where}: unknown placeholder {{{name}}}; known placeholders: {known}"
            )
        if spec or conversion:
            raise KavachConfigError(
                f"{where}: placeholder {{{name}}} takes no format spec or conversion"
            )
    return text


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill a checked template."""
    return text.format_map(values)


def check_structure(obj: Any, where: str = "template") -> Any:
    """Check every string inside a JSON-like template (mappings, lists, strings, scalars)."""
    if isinstance(obj, str):
        return check_template(obj, where)
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise KavachConfigError(f"{where}: keys must be strings, got {key!r}")
            check_structure(value, f"{where}.{key}")
        return obj
    if isinstance(obj, Sequence):
        for i, value in enumerate(obj):
            check_structure(value, f"{where}[{i}]")
        return obj
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    raise KavachConfigError(f"{where}: unsupported value of type {type(obj).__name__}")


def render_structure(obj: Any, values: Mapping[str, str]) -> Any:
    """Fill every string inside a checked JSON-like template; returns fresh containers."""
    if isinstance(obj, str):
        return obj.format_map(values)
    if isinstance(obj, Mapping):
        return {key: render_structure(value, values) for key, value in obj.items()}
    if isinstance(obj, Sequence):
        return [render_structure(value, values) for value in obj]
    return obj
