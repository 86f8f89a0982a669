"""Send AgentKavach spans and metrics to an OpenTelemetry collector over OTLP/HTTP.

    pip install 'agentkavach[otlp]'
    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 python examples/otel_collector.py

The application owns its providers: it builds them once, sets them globally, and the guard
(``telemetry=True``) reports through them. Each guarded call becomes a ``chat <model>`` span
under the application's own span, with gen_ai.* and kavach.* attributes; the refused call
at the end becomes an error span with the refusal reason. The provider call is simulated
here so the example needs no API key.
"""

from __future__ import annotations

import os
import time

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from kavach import AgentKavach, Budget, BudgetExceededError, CallSpec, Usage


def setup_otel() -> tuple[TracerProvider, MeterProvider]:
    # The exporters read OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318).
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "support")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=5000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


def main() -> None:
    tracer_provider, meter_provider = setup_otel()
    guard = AgentKavach("support-bot", Budget.daily("0.001"), telemetry=True)
    tracer = trace.get_tracer("support-app")

    with tracer.start_as_current_span("handle ticket 4711"):
        spec = CallSpec(
            provider="openai",
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Where is my parcel?"}],
            max_output_tokens=200,
        )
        with guard.reserve(spec) as r:
            time.sleep(0.05)  # the provider call would go here, with max_tokens=200
            r.commit(
                Usage(input_tokens=42, output_tokens=120),
                response_model="gpt-4o-mini-2024-07-18",
                finish_reasons=["stop"],
            )
        try:
            guard.reserve(
                CallSpec(
                    provider="openai",
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "Write a novel."}],
                    max_output_tokens=16_000,  # $0.0096 worst case: over the $0.001 budget
                )
            )
        except BudgetExceededError as exc:
            print(f"refused: {exc}")

    print(f"spent ${guard.spent:.6f}, ${guard.remaining:.6f} left today")
    tracer_provider.shutdown()  # flushes the spans
    meter_provider.shutdown()  # and the metrics


if __name__ == "__main__":
    main()
