"""OpenTelemetry for guarded calls: one span per call and gen_ai / kavach metrics.

>>> guard = AgentKavach("bot", Budget.daily(5), telemetry=True)            # doctest: +SKIP

Spans follow the GenAI semantic conventions (``gen_ai.*``; the conventions define no cost,
so cost, budget, reservation and refusal are ``kavach.*`` attributes). A span covers the
call from reserve to settle (explicit start and end times from the call's event) and is a
child of the context that was current when the call was reserved, so it nests under
LangChain, LlamaIndex or application spans. A refused call is a span with ERROR status
and its reason.

Metrics: ``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration``
(histograms, the conventions' attributes and buckets), ``kavach.cost`` (counter, USD),
``kavach.refusals`` (counter by ``kavach.refusal.reason``), ``kavach.budget.utilization``
(observable gauge: spent / limit per budget, read when the metric reader collects, never on
the call path), ``kavach.ledger.reclaims`` (counter of expired holds given back).

The application's providers are used (``trace.get_tracer_provider()``,
``metrics.get_meter_provider()``) unless ones are passed in ``TelemetryConfig``; no global
provider is set unless ``set_global=True``. Telemetry fails open: an exporter or
attribute error is logged and never reaches the call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from kavach.events import CallEvent, NullObserver
from kavach.ledger.base import HoldReclaimed

if TYPE_CHECKING:
    from kavach.client import AgentKavach

__all__ = ["Attr", "KavachTelemetry", "Metric", "TelemetryConfig", "instrument"]

logger = logging.getLogger("kavach")

_SCOPE = "kavach"
_NANOS_PER_DOLLAR = 1_000_000_000


class Attr:
    """Attribute names, in one place. The semconv package keeps its gen_ai names in a
    private, deprecated module, so these are ours (GenAI conventions as of semconv 1.37)."""

    OPERATION_NAME = "gen_ai.operation.name"
    PROVIDER_NAME = "gen_ai.provider.name"
    REQUEST_MODEL = "gen_ai.request.model"
    RESPONSE_MODEL = "gen_ai.response.model"
    REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
    USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
    USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
    USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
    USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
    AGENT_NAME = "gen_ai.agent.name"
    RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
    TOKEN_TYPE = "gen_ai.token.type"
    ERROR_TYPE = "error.type"

    COST_USD = "kavach.cost.usd"
    COST_NANOS = "kavach.cost.nanos"
    RESERVED_USD = "kavach.reservation.usd"
    RESERVED_NANOS = "kavach.reservation.nanos"
    BUDGET_NAMES = "kavach.budget.names"  # the dollar budgets, index for index with:
    BUDGET_LIMITS_USD = "kavach.budget.limits_usd"
    BUDGET_NAME = "kavach.budget.name"
    BUDGET_KEY = "kavach.budget.key"
    REFUSAL_REASON = "kavach.refusal.reason"
    CALL_STATUS = "kavach.call.status"
    CALL_ID = "kavach.call.id"
    RUN_ID = "kavach.run.id"
    MODE = "kavach.mode"
    LEDGER_KEY = "kavach.ledger.key"
    PRICE_TIER = "kavach.price.tier"
    WEB_SEARCHES = "kavach.usage.web_searches"
    FILE_SEARCHES = "kavach.usage.file_searches"
    INPUT_CHARACTERS = "kavach.usage.input_characters"
    AUDIO_SECONDS = "kavach.usage.audio_seconds"


class Metric:
    TOKEN_USAGE = "gen_ai.client.token.usage"
    OPERATION_DURATION = "gen_ai.client.operation.duration"
    COST = "kavach.cost"
    REFUSALS = "kavach.refusals"
    BUDGET_UTILIZATION = "kavach.budget.utilization"
    RECLAIMS = "kavach.ledger.reclaims"


# Bucket boundaries the GenAI metric conventions recommend.
_TOKEN_BUCKETS = [
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
]  # fmt: skip
_DURATION_BUCKETS = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
]  # fmt: skip

# kavach provider ids -> gen_ai.provider.name well-known values.
_PROVIDERS = {"google": "gcp.gen_ai", "gemini": "gcp.gemini", "mistral": "mistral_ai"}
# kavach operations -> gen_ai.operation.name well-known values, where one applies.
_OPERATIONS = {"fim": "text_completion"}
# Providers whose chat calls the conventions name generate_content (Gemini's API).
_GENERATE_CONTENT = {"google", "gemini"}
_ERROR_STATUSES = {"refused", "error", "cut"}
_MEASURED = {"ok", "cut"}  # settled at the usage the provider reported


@dataclass(frozen=True)
class TelemetryConfig:
    """How the guard reports to OpenTelemetry.

    ``tracer_provider`` / ``meter_provider``: use these instead of the global ones.
    ``set_global``: also install them as the global providers (off: the application owns
    its globals). ``traces`` / ``metrics``: turn either off.
    """

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    set_global: bool = False
    traces: bool = True
    metrics: bool = True


def instrument(guard: AgentKavach, config: TelemetryConfig | None = None) -> KavachTelemetry:
    """Add a ``KavachTelemetry`` observer to ``guard`` and capture trace context at reserve.

    Instrumenting a guard twice returns the existing observer.
    """
    for observer in guard._observers:
        if isinstance(observer, KavachTelemetry):
            return observer
    telemetry = KavachTelemetry(guard, config or TelemetryConfig())
    guard.add_observer(telemetry)
    guard._context_hook = otel_context.get_current
    return telemetry


def _provider(name: str) -> str:
    return _PROVIDERS.get(name, name)


def _operation(event: CallEvent) -> str:
    operation = event.operation
    if operation == "chat" and event.provider in _GENERATE_CONTENT:
        return "generate_content"
    return _OPERATIONS.get(operation, operation)


def _dollars(nanos: int) -> float:
    return nanos / _NANOS_PER_DOLLAR


def _ns(event: CallEvent) -> tuple[int, int]:
    start = int(event.started_at.timestamp() * 1e9)
    return start, start + int(event.duration_ms * 1e6)


class KavachTelemetry(NullObserver):
    """A guard observer that turns call events into spans and metrics."""

    def __init__(self, guard: AgentKavach, config: TelemetryConfig) -> None:
        self.guard = guard
        self.config = config
        if config.set_global:
            if config.tracer_provider is not None:
                trace.set_tracer_provider(config.tracer_provider)
            if config.meter_provider is not None:
                metrics.set_meter_provider(config.meter_provider)
        from kavach import __version__

        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=config.tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=config.meter_provider)
        self._token_usage = meter.create_histogram(
            Metric.TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            Metric.OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._cost = meter.create_counter(
            Metric.COST, unit="USD", description="Cost of settled LLM calls."
        )
        self._refusals = meter.create_counter(
            Metric.REFUSALS, unit="{call}", description="Calls the guard refused, by reason."
        )
        self._reclaims = meter.create_counter(
            Metric.RECLAIMS,
            unit="{hold}",
            description="Expired holds a ledger gave back (a process died mid-call).",
        )
        meter.create_observable_gauge(
            Metric.BUDGET_UTILIZATION,
            callbacks=[self._observe_budgets],
            unit="1",
            description="Spent / limit of each budget in its current period.",
        )
        # Two parallel arrays: the dollar budgets' labels and their limits, index for index
        # (a token or call budget has no dollar limit, so it is in neither).
        usd = [b for b in guard.budgets if b.unit == "usd"]
        self._budget_names = [b.label for b in usd]
        self._budget_limits = [_dollars(b.limit) for b in usd]

    # -- observer hooks --------------------------------------------------------------------

    def on_call(self, event: CallEvent) -> None:
        if self.config.traces:
            self._span(event)
        if self.config.metrics:
            self._record(event)

    def on_reclaim(self, reclaimed: HoldReclaimed) -> None:
        if self.config.metrics:
            self._reclaims.add(
                1, {Attr.AGENT_NAME: self.guard.agent_name, Attr.LEDGER_KEY: reclaimed.key}
            )

    # -- spans -----------------------------------------------------------------------------

    def attributes(self, event: CallEvent) -> dict[str, Any]:
        """The span attributes of ``event``."""
        usage = event.usage
        attrs: dict[str, Any] = {
            Attr.OPERATION_NAME: _operation(event),
            Attr.PROVIDER_NAME: _provider(event.provider),
            Attr.REQUEST_MODEL: event.model,
            Attr.AGENT_NAME: event.agent,
            Attr.CALL_ID: event.id,
            Attr.RUN_ID: event.run_id,
            Attr.CALL_STATUS: event.status,
            Attr.MODE: self.guard.mode,
            Attr.COST_NANOS: event.cost_nanos,
            Attr.COST_USD: _dollars(event.cost_nanos),
            Attr.RESERVED_NANOS: event.reserved_nanos,
            Attr.RESERVED_USD: _dollars(event.reserved_nanos),
        }
        if self._budget_names:
            attrs[Attr.BUDGET_NAMES] = self._budget_names
        if self._budget_limits:
            attrs[Attr.BUDGET_LIMITS_USD] = self._budget_limits
        if event.max_output_tokens is not None:
            attrs[Attr.REQUEST_MAX_TOKENS] = event.max_output_tokens
        if event.response_model:
            attrs[Attr.RESPONSE_MODEL] = event.response_model
        if event.finish_reasons:
            attrs[Attr.RESPONSE_FINISH_REASONS] = list(event.finish_reasons)
        if event.status in _MEASURED or usage.input_tokens or usage.output_tokens:
            # A failed call with no usage measured nothing: 0/0 would read as a measurement.
            attrs[Attr.USAGE_INPUT_TOKENS] = usage.input_tokens
            attrs[Attr.USAGE_OUTPUT_TOKENS] = usage.output_tokens
            attrs[Attr.USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            attrs[Attr.USAGE_CACHE_CREATION_INPUT_TOKENS] = (
                usage.cache_write_tokens + usage.cache_write_1h_tokens
            )
            attrs[Attr.USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        if usage.web_searches:
            attrs[Attr.WEB_SEARCHES] = usage.web_searches
        if usage.file_searches:
            attrs[Attr.FILE_SEARCHES] = usage.file_searches
        if usage.input_characters:
            attrs[Attr.INPUT_CHARACTERS] = usage.input_characters
        if usage.audio_seconds:
            attrs[Attr.AUDIO_SECONDS] = usage.audio_seconds
        if event.price_tier is not None:
            attrs[Attr.PRICE_TIER] = event.price_tier
        if event.refusal_reason:
            attrs[Attr.REFUSAL_REASON] = event.refusal_reason
        error_type = _error_type(event)
        if error_type is not None:
            attrs[Attr.ERROR_TYPE] = error_type
        return attrs

    def _span(self, event: CallEvent) -> None:
        start, end = _ns(event)
        parent = event.trace_context
        span = self._tracer.start_span(
            f"{_operation(event)} {event.model}",
            context=parent if isinstance(parent, otel_context.Context) else None,
            kind=SpanKind.CLIENT,
            attributes=self.attributes(event),
            start_time=start,
        )
        if event.status in _ERROR_STATUSES:
            span.set_status(Status(StatusCode.ERROR, (event.error or event.status)[:500]))
        span.end(end_time=end)

    # -- metrics ---------------------------------------------------------------------------

    def _record(self, event: CallEvent) -> None:
        if event.status == "refused":
            self._refusals.add(
                1,
                {
                    Attr.AGENT_NAME: event.agent,
                    Attr.REFUSAL_REASON: event.refusal_reason or "unknown",
                    Attr.REQUEST_MODEL: event.model,
                },
            )
            return
        attrs: dict[str, Any] = {
            Attr.OPERATION_NAME: _operation(event),
            Attr.PROVIDER_NAME: _provider(event.provider),
            Attr.REQUEST_MODEL: event.model,
        }
        if event.response_model:
            attrs[Attr.RESPONSE_MODEL] = event.response_model
        error_type = _error_type(event)
        duration_attrs = attrs if error_type is None else {**attrs, Attr.ERROR_TYPE: error_type}
        self._duration.record(event.duration_ms / 1000.0, duration_attrs)
        usage = event.usage
        if usage.input_tokens or usage.output_tokens:
            self._token_usage.record(usage.input_tokens, {**attrs, Attr.TOKEN_TYPE: "input"})
            self._token_usage.record(usage.output_tokens, {**attrs, Attr.TOKEN_TYPE: "output"})
        if event.cost_nanos:
            self._cost.add(
                _dollars(event.cost_nanos),
                {
                    Attr.AGENT_NAME: event.agent,
                    Attr.PROVIDER_NAME: _provider(event.provider),
                    Attr.REQUEST_MODEL: event.model,
                },
            )

    def _observe_budgets(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            statuses = self.guard.status()
        except Exception:
            logger.exception("kavach: could not read budgets for %s", Metric.BUDGET_UTILIZATION)
            return []
        return [
            Observation(
                s.utilization,
                {
                    Attr.AGENT_NAME: self.guard.agent_name,
                    Attr.BUDGET_NAME: s.label,
                    Attr.BUDGET_KEY: s.key,
                },
            )
            for s in statuses
        ]


def _error_type(event: CallEvent) -> str | None:
    if event.status == "refused":
        return event.refusal_reason or "refused"
    if event.status == "error":
        error = event.error or ""
        head = error.split(":", 1)[0].strip()
        return head if head and " " not in head else "error"
    if event.status == "cut":
        return "cut"
    return None
