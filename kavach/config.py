"""Guards from a YAML file: pydantic models, ``${VAR}`` interpolation, errors with file and line.

>>> guards = AgentKavach.from_yaml("kavach.yaml")                 # doctest: +SKIP
>>> bot = AgentKavach.from_yaml("kavach.yaml", agent="research-bot")  # doctest: +SKIP

The file, in full (money in dollars; every key is optional except ``agents``)::

    ledger: memory                    # or redis://localhost:6379/0 (default: AGENTKAVACH_REDIS_URL
                                      # when it is set, as for AgentKavach(), else memory)
    api_key: ${AGENTKAVACH_API_KEY:-} # backend reporting (when supported); endpoint: https://...

    defaults:                         # any agent setting below, for every agent
      mode: strict
      detect_loops: true
      prices:                         # add or override a model's price, $ per million tokens
        my-finetune: {input_per_mtok: 3.0, output_per_mtok: 12.0}

    channels:                         # named alert channels, used by agents' alerts
      slack: {type: slack, webhook_url: "${SLACK_URL}"}
      oncall: {type: pagerduty, routing_key: "${PD_KEY}"}
      stop: {type: kill, threshold: 1.0}   # a rule of its own; also: email (to: ...),
                                      # webhook (url: ..., secret: ..., headers: {...})

    shared_budgets:                   # pools several agents draw on
      research-team: {daily: 100}

    org_budget: {monthly: 2000}       # applies to every agent in the file

    agents:
      research-bot:
        budget:
          daily: 50                   # dollars
          monthly: {dollars: 1000, tokens: 50000000}   # several units in one period
          per_run: {calls: 40}
          tz: Europe/Berlin           # periods reset at local midnight (default UTC)
          thresholds: [0.5, 0.9, 1.0] # threshold events (default 0.5, 0.7, 0.9, 1.0)
        shared: [research-team]
        mode: reserve                 # overrides defaults.mode
        default_max_output_tokens: 2048
        min_output_tokens: 16
        max_tokens_per_run: 200000
        max_calls_per_run: 40
        max_runtime_seconds: 600
        max_cost_per_call: 0.50
        detect_loops: true
        loop_threshold: 5
        max_spend_per_minute: 2.0
        velocity_window_seconds: 60
        kill_on_guardrail: true
        unmetered: allow              # or refuse: paid calls the guard cannot meter
        unknown_model_price: {input_per_mtok: 10, output_per_mtok: 30}
        save_prompts: false
        enabled: true
        provider: openai              # with llm_key (when supported)
        alerts:
          - {threshold: 0.9, channels: [slack, oncall]}

Rules:

- A budget period (``daily``, ``weekly``, ``monthly``, ``total``, ``per_run``) is a dollar
  amount or a mapping of ``dollars``, ``tokens`` and ``calls`` (one budget per unit given).
  A shared or org budget has no ``per_run``.
- An agent's own setting replaces the one in ``defaults`` (``prices`` and ``alerts`` too,
  as a whole).
- ``${VAR}`` is replaced by the environment variable (an error if it is unset or empty:
  an empty value would delete the setting, a budget included, and the guard fails
  closed), ``${VAR:-text}`` falls back to ``text`` when it is unset or empty (``${VAR:-}``
  allows empty), ``$${...}`` is a
  literal ``${...}``. An unquoted value is typed after substitution (``${N}`` with ``N=40``
  is the number 40); a quoted one stays a string. Keys are not interpolated.
- Types are strict: ``max_calls_per_run: "40"`` (a string) is an error, not 40.
- A key written with no value (``daily:``, ``null``, ``~``) is an error, for the same reason
  as an empty variable: read as "not set" it would drop the setting.
- The guards one ``from_yaml`` call builds share one ledger, so shared and org budgets hold
  across the file's agents in this process (across processes with a Redis ledger). Guards
  built one at a time with ``agent=`` share it only if you pass the same ``ledger=``.
- An ``alerts`` entry sends to the channels it names. Rule keys on a channel (``threshold``,
  ``thresholds``, ``budgets``, ``units``, ``guardrails``, ``kills``, ``cooldown``) give that
  channel a rule of its own for every agent, besides the alerts naming it. A channel that no
  alert in the file names and that has no rule keys alerts every agent on its default rules
  (see ``kavach.alerts.rules``); a kill channel has none, so it needs a threshold or an alert.
  Both as in ``kavach.alerts.build_alerting``.
- Channels, alerts, ``provider``, ``llm_key``, ``api_key``, ``endpoint`` and a ledger URL are
  passed to ``AgentKavach`` when this version accepts them; otherwise loading fails saying
  so. No key is ever ignored.

Any unknown key, bad value, missing variable or YAML syntax error raises
``ConfigFileError`` (a ``KavachConfigError``) naming the file, the line and the field::

    kavach.yaml:9: agents.research-bot.budget.daily: Input should be greater than or
    equal to 0 (got -5)
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kavach.budget import Budget, _zone
from kavach.errors import KavachConfigError
from kavach.ledger.memory import MemoryLedger
from kavach.pricing import ModelPrice

if TYPE_CHECKING:
    from kavach.client import AgentKavach

__all__ = [
    "AgentConfig",
    "AgentSettings",
    "AlertRuleConfig",
    "BudgetConfig",
    "ChannelConfig",
    "ConfigFileError",
    "KavachFileConfig",
    "PeriodLimit",
    "PriceConfig",
    "guards_from_yaml",
    "load_config",
]

FieldPath = tuple[str | int, ...]
_SECRET_SUFFIXES = ("key", "secret", "password", "url", "endpoint")


class ConfigFileError(KavachConfigError):
    """A configuration file is invalid. ``file``, ``line`` (1-based) and ``field`` locate it."""

    def __init__(self, message: str, *, file: str, line: int | None, field: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        super().__init__(message)


# -- models -------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


NonNegativeDollars = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveDollars = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
PositiveCount = Annotated[int, Field(ge=1)]


class PriceConfig(_Model):
    """A model's price in dollars per million tokens (the fields of ``ModelPrice``)."""

    input_per_mtok: NonNegativeDollars
    output_per_mtok: NonNegativeDollars
    cache_read_per_mtok: NonNegativeDollars | None = None
    cache_write_per_mtok: NonNegativeDollars | None = None
    cache_write_1h_per_mtok: NonNegativeDollars | None = None
    input_audio_per_mtok: NonNegativeDollars | None = None
    output_audio_per_mtok: NonNegativeDollars | None = None
    input_image_per_mtok: NonNegativeDollars | None = None
    output_image_per_mtok: NonNegativeDollars | None = None
    input_video_per_mtok: NonNegativeDollars | None = None
    web_search_per_1k: NonNegativeDollars | None = None
    file_search_per_1k: NonNegativeDollars | None = None


class PeriodLimit(_Model):
    """A period's limits; each unit given is its own budget."""

    dollars: NonNegativeDollars | None = None
    tokens: Count | None = None
    calls: Count | None = None

    @model_validator(mode="after")
    def _one_unit_at_least(self) -> PeriodLimit:
        if self.dollars is None and self.tokens is None and self.calls is None:
            raise ValueError("give at least one of dollars, tokens or calls")
        return self


def _dollars_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        plain = value.strip().replace("$", "").replace(",", "").replace("_", "").strip()
        try:
            amount = float(plain)
        except ValueError:
            amount = None
        if amount is not None:  # "50$", "$1,000", "50" quoted, 1e3 (text to YAML 1.1)
            raise ValueError(
                "write the dollar amount as a plain number such as 50 or 0.25 (no $ sign, "
                "quotes, commas or exponent)"
            )
    if isinstance(value, bool) or isinstance(value, (str, list)):
        raise ValueError(
            "expected a dollar amount such as 50, or a mapping such as "
            "{tokens: 1000000} or {dollars: 50, calls: 200}"
        )
    if isinstance(value, (int, float)):
        return {"dollars": value}
    return value


PeriodValue = Annotated[PeriodLimit | None, BeforeValidator(_dollars_shorthand)]


class BudgetConfig(_Model):
    """Limits per period, the reset timezone and the threshold fractions."""

    daily: PeriodValue = None
    weekly: PeriodValue = None
    monthly: PeriodValue = None
    total: PeriodValue = None
    per_run: PeriodValue = None
    tz: str | None = None
    thresholds: list[Annotated[float, Field(gt=0, le=1)]] | None = None

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        _zone(value)  # KavachConfigError is a ValueError: pydantic reports it on the field
        return value

    def periods(self) -> Iterator[tuple[str, PeriodLimit]]:
        for name in ("daily", "weekly", "monthly", "total", "per_run"):
            limit = getattr(self, name)
            if limit is not None:
                yield name, limit


# The rule keywords of ``AgentKavach.channel`` (``kavach.alerts.rules``, not imported here so
# that reading a file does not load the HTTP stack); on a channel they give it its own rule.
_RULE_KEYS = frozenset(
    {"threshold", "thresholds", "budgets", "units", "guardrails", "kills", "cooldown"}
)

_CHANNEL_REQUIRES: dict[str, tuple[str, ...]] = {
    "slack": ("webhook_url",),
    "pagerduty": ("routing_key",),
    "email": ("to",),
    "webhook": ("url",),
    "kill": (),
}


class ChannelConfig(BaseModel):
    """A named alert channel: ``type`` and its settings, passed on as they are."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: Literal["slack", "pagerduty", "email", "webhook", "kill"]

    @model_validator(mode="after")
    def _settings_shape(self) -> ChannelConfig:
        settings = self.settings
        missing = [k for k in _CHANNEL_REQUIRES[self.type] if k not in settings]
        if missing:
            raise ValueError(f"a {self.type} channel needs {', '.join(missing)}")
        for key, value in settings.items():
            if key in ("template", "headers") and isinstance(value, dict):
                continue  # a custom payload template or extra headers: checked by the channel
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(v, (str, int, float, bool)) for v in items):
                raise ValueError(
                    f"channel setting {key!r} must be a string, number, boolean or a list of them"
                )
        return self

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "type", self.type  # settings hold webhook URLs and keys: never in repr


class AlertRuleConfig(_Model):
    """Alert the named channels when a budget crosses ``threshold`` (a fraction)."""

    threshold: Annotated[float, Field(gt=0, le=1)]
    channels: Annotated[list[str], Field(min_length=1)]
    budgets: list[str] | None = None
    """Budget labels the rule covers (``daily``, ``shared:team daily`` ...); all when omitted."""
    units: list[Literal["usd", "tokens", "calls"]] | None = None
    guardrails: bool | None = None
    """Also alert on guardrail trips."""
    cooldown: Annotated[float, Field(ge=0)] | None = None
    """Seconds before the same alert may be sent again (default 300)."""


class AgentSettings(_Model):
    """What ``defaults:`` and each agent may set (AgentKavach's parameter names)."""

    mode: Literal["reserve", "strict"] | None = None
    default_max_output_tokens: PositiveCount | None = None
    min_output_tokens: PositiveCount | None = None
    max_tokens_per_run: PositiveCount | None = None
    max_calls_per_run: PositiveCount | None = None
    max_runtime_seconds: PositiveSeconds | None = None
    max_cost_per_call: PositiveDollars | None = None
    detect_loops: bool | None = None
    loop_threshold: Annotated[int, Field(ge=2)] | None = None
    max_spend_per_minute: PositiveDollars | None = None
    velocity_window_seconds: PositiveSeconds | None = None
    kill_on_guardrail: bool | None = None
    unmetered: Literal["allow", "refuse"] | None = None
    prices: dict[str, PriceConfig] | None = None
    unknown_model_price: PriceConfig | None = None
    save_prompts: bool | None = None
    enabled: bool | None = None
    provider: Literal["openai", "anthropic", "google", "mistral"] | None = None
    llm_key: str | None = Field(default=None, repr=False)
    alerts: list[AlertRuleConfig] | None = None


class AgentConfig(AgentSettings):
    """One agent: the settings plus its own budget and the shared pools it draws on."""

    budget: BudgetConfig | None = None
    shared: list[str] = []


class KavachFileConfig(_Model):
    """The whole file."""

    agents: Annotated[dict[str, AgentConfig], Field(min_length=1)]
    defaults: AgentSettings = AgentSettings()
    channels: dict[str, ChannelConfig] = {}
    shared_budgets: dict[str, BudgetConfig] = {}
    org_budget: BudgetConfig | None = None
    ledger: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    endpoint: str | None = None


# Settings handed to AgentKavach as they are (after conversion of prices).
_DIRECT = (
    "mode",
    "default_max_output_tokens",
    "min_output_tokens",
    "max_tokens_per_run",
    "max_calls_per_run",
    "max_runtime_seconds",
    "max_cost_per_call",
    "detect_loops",
    "loop_threshold",
    "max_spend_per_minute",
    "velocity_window_seconds",
    "kill_on_guardrail",
    "unmetered",
    "save_prompts",
    "enabled",
)


# -- reading the file ---------------------------------------------------------------------

_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"


def _fmt_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class _Document:
    """YAML turned into plain values, with the line of every key and list item."""

    def __init__(self, text: str, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[FieldPath, int] = {(): 1}
        self.from_env: set[FieldPath] = set()
        self.empty: list[FieldPath] = []  # ``key:`` with nothing after it, written so
        self._open: set[int] = set()  # nodes being walked, to refuse a recursive alias
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data: Any = None if node is None else self._value(loader, node, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            line = mark.line + 1 if mark is not None else None
            hint = _yaml_hint(what, text, line)
            raise ConfigFileError(
                f"{file}:{line}: invalid YAML: {what}{hint}", file=file, line=line, field=""
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigFileError(
                f"{file}: invalid YAML: {exc}", file=file, line=None, field=""
            ) from None
        finally:
            loader.dispose()

    def error(self, path: FieldPath, message: str, *, line: int | None = None) -> ConfigFileError:
        line = self.line(path) if line is None else line
        field = _fmt_path(path)
        return ConfigFileError(
            f"{self.file}:{line}: {field}: {message}", file=self.file, line=line, field=field
        )

    def line(self, path: FieldPath) -> int:
        while path not in self.lines:
            path = path[:-1]
        return self.lines[path]

    def _value(self, loader: yaml.SafeLoader, node: yaml.Node, path: FieldPath) -> Any:
        if id(node) in self._open:
            raise self.error(path, "an alias refers to a node that contains it")
        self._open.add(id(node))
        try:
            return self._node_value(loader, node, path)
        finally:
            self._open.discard(id(node))

    def _node_value(self, loader: yaml.SafeLoader, node: yaml.Node, path: FieldPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    key = loader.construct_object(key_node)
                    if key in seen:
                        raise self.error(
                            (*path, key),
                            f"duplicate key {key!r} (first on line {seen[key]})",
                            line=key_node.start_mark.line + 1,
                        )
                    seen[key] = key_node.start_mark.line + 1
            loader.flatten_mapping(node)
            mapping: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if isinstance(key, (list, dict)):
                    raise self.error(
                        path, "a key must be a plain value", line=key_node.start_mark.line + 1
                    )
                key_path = (*path, key)
                self.lines[key_path] = key_node.start_mark.line + 1
                mapping[key] = self._value(loader, value_node, key_path)
            return mapping
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                item_path = (*path, i)
                self.lines[item_path] = item.start_mark.line + 1
                items.append(self._value(loader, item, item_path))
            return items
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == _STR_TAG and "$" in node.value:
            text = self._interpolate(node.value, path)
            if text != node.value:
                self.from_env.add(path)
            # An unquoted value is typed after substitution, as if it had been written out.
            resolver: Any = loader  # PyYAML's resolve() is untyped
            tag = (
                resolver.resolve(yaml.ScalarNode, text, (True, False))
                if node.style is None
                else _STR_TAG
            )
            node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark, node.style)
        elif node.tag == _NULL_TAG:
            self.empty.append(path)
        try:
            return loader.construct_object(node, deep=True)
        except ValueError as exc:  # e.g. a date that does not exist
            shown = "a value from the environment" if path in self.from_env else repr(node.value)
            raise self.error(path, f"cannot read {shown}: {exc}") from None

    def _interpolate(self, text: str, path: FieldPath) -> str:
        def substitute(match: re.Match[str]) -> str:
            whole, name, default = match.group(0), match.group(1), match.group(2)
            if whole == "$${":
                return "${"
            if name is None:
                raise self.error(
                    path,
                    "malformed ${...}: write ${NAME} or ${NAME:-default} (NAME of letters, "
                    "digits and _), or $${ for a literal ${",
                )
            value = self.env.get(name)
            if value is None or value == "":
                if default is None:
                    # Empty counts as unset: typed after substitution it becomes null, which
                    # would drop the setting (a budget, a limit) and let every call through.
                    state = "is not set" if value is None else "is set but empty"
                    raise self.error(
                        path,
                        f"environment variable {name} {state}; set it, give a default with "
                        f"${{{name}:-default}} (${{{name}:-}} allows empty), or write "
                        f"$${{{name}}} for a literal",
                    )
                return default
            return value

        return _REF.sub(substitute, text)


def _yaml_hint(problem: str, text: str, line: int | None) -> str:
    """What the usual causes of PyYAML's terse syntax errors are, in the user's terms."""
    source = text.splitlines()[line - 1] if line and line <= len(text.splitlines()) else ""
    if "'\\t'" in problem or "\t" in source[: len(source) - len(source.lstrip())]:
        return "; YAML indents with spaces, not tabs"
    if "flow mapping" in problem and "${" in source:
        return (
            "; inside {...} a ${VAR} must be quoted, or write the key on its own line "
            "(key: ${VAR}) so a number from the environment stays a number"
        )
    if "expected <block end>" in problem or "mapping values are not allowed" in problem:
        return (
            "; check the indentation of this line and the one before: keys of one mapping "
            "line up, a value goes after 'key: ' or indented on the lines below, not both"
        )
    return ""


def _is_secret(path: FieldPath) -> bool:
    return any(isinstance(p, str) and p.lower().endswith(_SECRET_SUFFIXES) for p in path)


def _expected_keys(loc: Sequence[str | int]) -> list[str] | None:
    """The keys the model at ``loc`` accepts (for 'did you mean')."""
    annotation: Any = KavachFileConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(str(part))
            if info is None:
                return None
            annotation = info.annotation
        elif typing.get_origin(annotation) in (dict, list):
            annotation = typing.get_args(annotation)[-1]
        else:
            return None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _describe(doc: _Document, error: Mapping[str, Any]) -> tuple[FieldPath, str]:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    data: Any = doc.data
    path: FieldPath = ()
    model_loc: list[str | int] = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            continue  # a union member's tag or a shorthand pydantic expanded
        path = (*path, part)
        model_loc.append(part)
    kind = error["type"]
    message = str(error["msg"])
    if kind == "missing":
        return (*path, loc[-1]), f"required key {loc[-1]!r} is missing"
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        expected = _expected_keys(model_loc[:-1]) if path else None
        message = f"unknown key {key!r}"
        if expected:
            close = difflib.get_close_matches(key, expected, n=1)
            message += (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; expected one of: {', '.join(expected)}"
            )
        return path, message
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if kind == "invalid_key":  # ``{daily: 1,000}`` is {daily: 1, 000: null}
        return path, (
            f"key {value!r} is not a name; inside {{...}} a comma separates entries, so write "
            "1000, not 1,000"
        )
    if kind in ("model_type", "dict_type", "list_type"):
        message = _shape_message(kind, error.get("ctx", {}).get("class_name"), value)
        if value is None:
            return path, message  # "(got None)" says nothing the message does not
    if path and not _is_secret(path) and path not in doc.from_env:
        if not isinstance(value, (dict, list)):
            message += f" (got {value!r})"
    return path, message


# What a section looks like, for "Input should be a valid dictionary or instance of X".
_SHAPES = {
    "BudgetConfig": "periods and their limits, such as {daily: 50} or "
    "{daily: 50, monthly: {dollars: 1000, tokens: 5000000}}",
    "AgentConfig": "the agent's settings indented below its name (budget: ..., mode: ...), "
    "or {} for none",
    "AgentSettings": "settings indented below it (mode: ..., detect_loops: ...)",
    "PriceConfig": "a price such as {input_per_mtok: 2.5, output_per_mtok: 10} "
    "(dollars per million tokens)",
    "AlertRuleConfig": "a rule such as {threshold: 0.9, channels: [slack]}",
    "ChannelConfig": "a channel such as {type: slack, webhook_url: ...}",
}


def _shape_message(kind: str, model: str | None, value: Any) -> str:
    if kind == "list_type":
        wanted = "a list such as [a, b] (or '- a' lines below)"
    elif kind == "dict_type":
        wanted = "a mapping of names to their settings (name: ... lines indented below)"
    else:
        wanted = _SHAPES.get(model or "", "a mapping of key: value lines indented below")
    if value is None:
        return f"is empty; expected {wanted}"
    message = f"expected {wanted}"
    if kind != "list_type" and isinstance(value, list):
        message += "; remove the '- ' before each entry"
    elif isinstance(value, str) and re.search(r"\w:\S", value):
        message += "; put a space after the colon (daily: 50, not daily:50)"
    return message


# -- building guards ----------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> KavachFileConfig:
    """Read and validate a file; ``env`` (default ``os.environ``) feeds ``${VAR}``."""
    return _load(path, env)[0]


def _load(
    path: str | os.PathLike[str], env: Mapping[str, str] | None
) -> tuple[KavachFileConfig, _Document]:
    file = os.fspath(path)
    try:
        raw = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigFileError(
            f"cannot read config file {file}: {exc.strerror or exc}", file=file, line=None, field=""
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigFileError(
            f"{file}:{line}: the file is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it "
            "as UTF-8",
            file=file,
            line=line,
            field="",
        ) from None
    doc = _Document(text, file, os.environ if env is None else env)
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping with an 'agents:' section")
    try:
        config = KavachFileConfig.model_validate(doc.data)
    except ValidationError as exc:
        problems = sorted(
            (_describe(doc, e) for e in exc.errors(include_url=False)),
            key=lambda pm: doc.line(pm[0]),
        )
        first_path, _ = problems[0]
        lines = [f"{file}:{doc.line(p)}: {_fmt_path(p)}: {m}" for p, m in problems]
        raise ConfigFileError(
            "\n".join(lines), file=file, line=doc.line(first_path), field=_fmt_path(first_path)
        ) from None
    if doc.empty:
        # Read as "not set", an empty value would drop what its key sets: ``daily:`` with the
        # amount forgotten would leave the agent without its budget, every call let through.
        raise doc.error(
            doc.empty[0],
            "has no value; write one or delete the line (an empty value would drop the "
            "setting; from the environment, ${VAR:-} allows empty)",
        )
    return config, doc


@contextmanager
def _at(doc: _Document, path: FieldPath) -> Iterator[None]:
    """Re-raise a KavachConfigError from building as one that points at ``path``."""
    try:
        yield
    except ConfigFileError:
        raise
    except KavachConfigError as exc:
        raise doc.error(path, str(exc)) from None


def _budgets(
    doc: _Document,
    spec: BudgetConfig,
    path: FieldPath,
    *,
    shared: str | None = None,
    org: bool = False,
) -> list[Budget]:
    out = []
    for period, limit in spec.periods():
        for unit in ("dollars", "tokens", "calls"):
            amount = getattr(limit, unit)
            if amount is None:
                continue
            where = (*path, period, unit)
            if where not in doc.lines:  # written as the dollar shorthand, ``daily: 50``
                where = where[:-1]
            with _at(doc, where):
                make = getattr(Budget, period)
                kw: dict[str, Any] = {"thresholds": spec.thresholds}
                if unit != "dollars":
                    kw[unit] = amount
                if period in ("daily", "weekly", "monthly"):
                    kw["tz"] = spec.tz
                if period != "per_run":
                    kw["shared"], kw["org"] = shared, org
                elif shared is not None or org:
                    raise KavachConfigError(
                        "a per_run budget belongs to one agent's run; shared and org budgets "
                        "take daily, weekly, monthly or total"
                    )
                out.append(make(amount, **kw) if unit == "dollars" else make(**kw))
    return out


def _price(doc: _Document, price: PriceConfig, path: FieldPath) -> ModelPrice:
    accepted = {f.name for f in fields(ModelPrice)}
    given = price.model_dump(exclude_none=True)
    for name in given:
        if name not in accepted:
            raise doc.error(
                (*path, name),
                f"{name} is not supported by this version's ModelPrice "
                f"(it takes {', '.join(sorted(accepted))})",
            )
    with _at(doc, path):
        return ModelPrice(**given)


def _accepts(guard_class: type[AgentKavach], name: str) -> bool:
    return name in inspect.signature(guard_class.__init__).parameters


def _unsupported(doc: _Document, path: FieldPath, name: str) -> ConfigFileError:
    return doc.error(
        path,
        f"{name!r} is not supported yet in this version of AgentKavach (AgentKavach() has no "
        f"{name}= parameter); remove it or upgrade agentkavach",
    )


def _ledger(doc: _Document, config: KavachFileConfig, guard_class: type[AgentKavach]) -> Any:
    url = config.ledger
    if url is None:  # as AgentKavach() does: processes that share a Redis share budgets
        url = os.environ.get("AGENTKAVACH_REDIS_URL", "").strip() or "memory"
    if url.strip().lower() in ("memory", "memory://"):
        return MemoryLedger()
    annotation = inspect.signature(guard_class.__init__).parameters["ledger"].annotation
    if re.search(r"\bstr\b", str(annotation)) is None:
        raise doc.error(
            ("ledger",),
            "a ledger URL is not supported yet in this version of AgentKavach; use "
            "'memory' (the default) or pass ledger=<Ledger object> to from_yaml()",
        )
    from kavach.client import check_ledger_url

    with _at(doc, ("ledger",)):
        check_ledger_url(url)
    return url


def _check_backend(doc: _Document, config: KavachFileConfig) -> None:
    """``api_key`` and ``endpoint`` checked once, where they are written (every agent
    would report the same error at its own line)."""
    from kavach.client import backend_endpoint
    from kavach.reporting.api import check_api_key, check_endpoint

    if config.endpoint is not None:
        with _at(doc, ("endpoint",)):
            check_endpoint(config.endpoint)
    if config.api_key is not None:
        with _at(doc, ("api_key",)):
            check_api_key(config.api_key)
            backend_endpoint(config.endpoint)


def guards_from_yaml(
    path: str | os.PathLike[str],
    agent: str | None = None,
    *,
    guard_class: type[AgentKavach] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> dict[str, AgentKavach]:
    """Build a guard per agent in the file (only ``agent``'s when given), sharing one ledger.

    ``overrides`` are AgentKavach keyword arguments for every guard that a file cannot hold
    (``on_kill=``, ``observers=``, ``ledger=<object>``); they take precedence over the file.
    """
    if guard_class is None:
        from kavach.client import AgentKavach

        guard_class = AgentKavach
    config, doc = _load(path, env)
    names = list(config.agents)
    if agent is not None:
        if agent not in config.agents:
            raise ConfigFileError(
                f"{doc.file}: no agent {agent!r} in the file; it has {', '.join(names)}",
                file=doc.file,
                line=doc.line(("agents",)),
                field="agents",
            )
        names = [agent]

    for top in ("api_key", "endpoint"):
        if getattr(config, top) is not None and not _accepts(guard_class, top):
            raise _unsupported(doc, (top,), top)
    _check_backend(doc, config)
    if config.channels and not _accepts(guard_class, "channels"):
        raise _unsupported(doc, ("channels",), "channels")
    ledger = overrides.pop("ledger") if "ledger" in overrides else _ledger(doc, config, guard_class)

    shared: dict[str, list[Budget]] = {
        name: _budgets(doc, spec, ("shared_budgets", name), shared=name)
        for name, spec in config.shared_budgets.items()
    }
    org = (
        _budgets(doc, config.org_budget, ("org_budget",), org=True)
        if config.org_budget is not None
        else []
    )

    own = _own_rule_channels(doc, config)
    guards: dict[str, AgentKavach] = {}
    for name in names:
        agent_config = config.agents[name]
        here: FieldPath = ("agents", name)
        budgets = (
            _budgets(doc, agent_config.budget, (*here, "budget"))
            if agent_config.budget is not None
            else []
        )
        for i, pool in enumerate(agent_config.shared):
            if pool not in shared:
                known = ", ".join(shared) or "none are defined"
                raise doc.error(
                    (*here, "shared", i),
                    f"no shared budget {pool!r} under shared_budgets: ({known})",
                )
            budgets.extend(shared[pool])
        budgets.extend(org)

        # The agent's own settings win over defaults; remember where each came from.
        settings: dict[str, tuple[Any, FieldPath]] = {
            key: (getattr(config.defaults, key), ("defaults", key))
            for key in config.defaults.model_fields_set
        }
        settings.update(
            (key, (getattr(agent_config, key), (*here, key)))
            for key in agent_config.model_fields_set
            if key not in ("budget", "shared")
        )

        kw: dict[str, Any] = {"agent_name": name, "budget": budgets, "ledger": ledger}
        alerts: list[AlertRuleConfig] = []
        alerts_at: FieldPath = ("channels",)
        for key, (value, where) in settings.items():
            if value is None:
                continue
            if key in _DIRECT:
                kw[key] = value
            elif key == "prices":
                kw[key] = {m: _price(doc, p, (*where, m)) for m, p in value.items()}
            elif key == "unknown_model_price":
                kw[key] = _price(doc, value, where)
            elif key in ("provider", "llm_key"):
                if not _accepts(guard_class, key):
                    raise _unsupported(doc, where, key)
                kw[key] = value
            elif key == "alerts":
                alerts, alerts_at = value, where
            else:  # a new AgentSettings field must be wired here, never dropped
                raise doc.error(where, f"{key!r} is not handled by this version's loader")
        if alerts or own:
            kw["channels"] = _channels(doc, config, alerts, alerts_at, guard_class, own)
        for top in ("api_key", "endpoint"):
            if getattr(config, top) is not None:
                kw[top] = getattr(config, top)
        kw.update(overrides)
        with _at(doc, here):
            guards[name] = guard_class(**kw)
    return guards


def _channels(
    doc: _Document,
    config: KavachFileConfig,
    rules: Sequence[AlertRuleConfig],
    where: FieldPath,
    guard_class: type[AgentKavach],
    own: Sequence[str],
) -> list[Any]:
    """One agent's channel rules: its ``alerts`` (each sent to the channels it names, with
    only the channel's settings) and the ``own`` channels' own or default rules."""
    if not _accepts(guard_class, "channels"):
        raise _unsupported(doc, where, "alerts")
    make = getattr(guard_class, "channel", None)
    out: list[Any] = []
    for i, rule in enumerate(rules):
        for j, name in enumerate(rule.channels):
            channel = config.channels.get(name)
            if channel is None:
                known = ", ".join(config.channels) or "none are defined"
                raise doc.error(
                    (*where, i, "channels", j),
                    f"no channel {name!r} under channels: ({known})",
                )
            # The key under channels: names the channel, unless it sets a name of its own.
            settings = {
                "name": name,
                **{k: v for k, v in channel.settings.items() if k not in _RULE_KEYS},
            }
            extra = {
                key: value
                for key in ("budgets", "units", "guardrails", "cooldown")
                if (value := getattr(rule, key)) is not None
            }
            with _at(doc, ("channels", name)):
                if make is not None:
                    out.append(make(channel.type, threshold=rule.threshold, **extra, **settings))
                else:
                    out.append({"type": channel.type, "threshold": rule.threshold, **settings})
    for name in own:
        channel = config.channels[name]
        settings = {"name": name, **channel.settings}
        with _at(doc, ("channels", name)):
            if make is not None:
                out.append(make(channel.type, **settings))
            else:
                out.append({"type": channel.type, **settings})
    return out


def _own_rule_channels(doc: _Document, config: KavachFileConfig) -> list[str]:
    """Channels that alert every agent by themselves: those carrying rule keys (their own
    rule) and those no ``alerts`` entry in the file names (their default rules), as
    ``build_alerting`` treats them."""
    named = {
        name
        for settings in (config.defaults, *config.agents.values())
        for rule in settings.alerts or ()
        for name in rule.channels
    }
    out = []
    for name, channel in config.channels.items():
        has_rule = any(key in _RULE_KEYS for key in channel.settings)
        if name in named and not has_rule:
            continue
        if channel.type == "kill" and not has_rule:
            raise doc.error(
                ("channels", name),
                "no alert names this kill channel and it has no rule of its own, so it would "
                "never act; name it in an agent's alerts or give it a threshold (e.g. "
                "{type: kill, threshold: 1.0})",
            )
        out.append(name)
    return out
