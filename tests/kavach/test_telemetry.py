"""OpenTelemetry: one span per guarded call with gen_ai.* and kavach.* attributes, and metrics."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kavach import AgentKavach, Budget, BudgetExceededError, CallSpec, Usage
from kavach.telemetry import Attr, KavachTelemetry, Metric, TelemetryConfig, instrument
from tests.kavach.conftest import PRICES, spec

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Otel:
    tracer_provider: TracerProvider
    spans: InMemorySpanExporter
    meter_provider: MeterProvider
    reader: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(tracer_provider, exporter, meter_provider, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def make(otel: Otel, budget: Budget | None = None, **kwargs: Any) -> AgentKavach:
    return AgentKavach(
        "research-bot",
        budget or Budget.daily(1),
        prices=PRICES,
        telemetry=TelemetryConfig(
            tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        ),
        **kwargs,
    )


USAGE = Usage(
    input_tokens=1000,
    output_tokens=300,
    cache_read_tokens=200,
    cache_write_tokens=100,
    reasoning_tokens=50,
)


def test_one_span_per_call_with_every_attribute_and_the_calls_timing(otel: Otel) -> None:
    guard = make(otel)
    before = time.time_ns()
    with guard.reserve(spec(input_tokens=1000, max_output=500)) as r:
        time.sleep(0.05)  # the provider call
        r.commit(USAGE, response_model="test-model-2026-01-01", finish_reasons=["stop"])
    after = time.time_ns()
    [span] = otel.finished()
    assert span.name == "chat test-model"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert span.start_time is not None and span.end_time is not None
    assert before - 1_000_000 <= span.start_time <= before + 5_000_000
    assert 50_000_000 <= span.end_time - span.start_time <= after - before + 1_000_000
    attrs = dict(span.attributes or {})
    call_id, run_id = attrs.pop(Attr.CALL_ID), attrs.pop(Attr.RUN_ID)
    assert isinstance(call_id, str) and run_id == guard.current_run
    assert attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "test-model",
        "gen_ai.response.model": "test-model-2026-01-01",
        "gen_ai.request.max_tokens": 500,
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 200,
        "gen_ai.usage.cache_creation.input_tokens": 100,
        "gen_ai.usage.reasoning.output_tokens": 50,
        "gen_ai.agent.name": "research-bot",
        "gen_ai.response.finish_reasons": ("stop",),
        "kavach.call.status": "ok",
        "kavach.mode": "reserve",
        "kavach.cost.nanos": 1_300_000,  # $1/M in and out
        "kavach.cost.usd": pytest.approx(0.0013),
        "kavach.reservation.nanos": 1_500_000,
        "kavach.reservation.usd": pytest.approx(0.0015),
        "kavach.budget.names": ("daily",),
        "kavach.budget.limits_usd": (1.0,),
    }


def test_the_price_tier_and_search_counts_are_on_the_span_when_they_apply(otel: Otel) -> None:
    guard = AgentKavach(
        "research-bot",
        Budget.daily(1),
        telemetry=TelemetryConfig(
            tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        ),
    )
    priority = CallSpec(
        provider="openai",
        model="gpt-4o",
        input_tokens=100,
        max_output_tokens=100,
        price_variant=(("service_tier", "priority"),),
    )
    with guard.reserve(priority) as r:
        r.commit(Usage(input_tokens=100, output_tokens=10, web_searches=2, file_searches=1))
    with guard.reserve(dataclasses.replace(priority, price_variant=())) as r:
        r.commit(Usage(input_tokens=100, output_tokens=10))
    speech = CallSpec(
        provider="openai", model="tts-1", input_tokens=0, max_output_tokens=0, fixed_output=True
    )
    with guard.reserve(dataclasses.replace(speech, input_characters=40)) as r:
        r.commit(Usage(input_characters=40))
    with guard.reserve(dataclasses.replace(speech, model="whisper-1", audio_seconds=9)) as r:
        r.commit(Usage(audio_seconds=9))
    tiered, standard, spoken, heard = (dict(span.attributes or {}) for span in otel.finished())
    assert tiered[Attr.PRICE_TIER] == "priority"
    assert tiered[Attr.WEB_SEARCHES] == 2 and tiered[Attr.FILE_SEARCHES] == 1
    assert not {Attr.PRICE_TIER, Attr.WEB_SEARCHES, Attr.FILE_SEARCHES} & standard.keys()
    assert spoken[Attr.INPUT_CHARACTERS] == 40 and heard[Attr.AUDIO_SECONDS] == 9
    assert Attr.AUDIO_SECONDS not in spoken and Attr.INPUT_CHARACTERS not in standard


def test_a_refused_call_is_an_error_span_with_the_reason(otel: Otel) -> None:
    guard = make(otel, Budget.daily("0.001"))
    with pytest.raises(BudgetExceededError):
        guard.reserve(spec(input_tokens=1000, max_output=500))
    [span] = otel.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is not None
    assert "daily budget exceeded" in span.status.description
    attrs = span.attributes or {}
    assert attrs[Attr.REFUSAL_REASON] == "budget_exceeded"
    assert attrs[Attr.ERROR_TYPE] == "budget_exceeded"
    assert attrs[Attr.CALL_STATUS] == "refused"
    assert attrs[Attr.COST_NANOS] == 0
    assert Attr.USAGE_INPUT_TOKENS not in attrs  # nothing was used
    [point] = otel.metrics()[Metric.REFUSALS]
    assert point.value == 1
    assert dict(point.attributes) == {
        Attr.AGENT_NAME: "research-bot",
        Attr.REFUSAL_REASON: "budget_exceeded",
        Attr.REQUEST_MODEL: "test-model",
    }


def test_a_failed_call_is_an_error_span_with_the_error_type(otel: Otel) -> None:
    guard = make(otel)
    with pytest.raises(TimeoutError), guard.reserve(spec()):
        raise TimeoutError("provider timed out")
    [span] = otel.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[Attr.ERROR_TYPE] == "TimeoutError"
    [duration] = otel.metrics()[Metric.OPERATION_DURATION]
    assert duration.attributes[Attr.ERROR_TYPE] == "TimeoutError"


def test_a_call_that_failed_before_any_usage_reports_no_token_counts(otel: Otel) -> None:
    guard = make(otel)
    with pytest.raises(TimeoutError), guard.reserve(spec()):
        raise TimeoutError("provider timed out")
    [span] = otel.finished()
    attributes = span.attributes or {}
    assert Attr.USAGE_INPUT_TOKENS not in attributes  # not a measured 0
    assert Attr.USAGE_OUTPUT_TOKENS not in attributes


@pytest.mark.parametrize(
    ("provider", "operation", "expected"),
    [
        ("google", "chat", "generate_content"),
        ("mistral", "fim", "text_completion"),
        ("openai", "chat", "chat"),
        ("openai", "embeddings", "embeddings"),
    ],
)
def test_operations_use_the_conventions_well_known_names(
    otel: Otel, provider: str, operation: str, expected: str
) -> None:
    guard = make(otel)
    call = dataclasses.replace(spec(), provider=provider, operation=operation)
    guard.reserve(call).commit(USAGE)
    [span] = otel.finished()
    assert (span.attributes or {})[Attr.OPERATION_NAME] == expected
    assert span.name == f"{expected} test-model"
    [duration] = otel.metrics()[Metric.OPERATION_DURATION]
    assert duration.attributes[Attr.OPERATION_NAME] == expected


def test_the_guard_span_is_a_child_of_the_span_current_at_reserve(otel: Otel) -> None:
    guard = make(otel)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("agent step") as parent:
        r = guard.reserve(spec())
    # Settled later, from another thread, outside the parent's context (a stream, a callback).
    worker = threading.Thread(target=r.commit, args=(USAGE,))
    worker.start()
    worker.join()
    [_, child] = sorted(otel.finished(), key=lambda s: s.name)  # "agent step", "chat ..."
    assert child.name == "chat test-model"
    assert child.parent is not None
    assert child.parent.span_id == parent.get_span_context().span_id
    assert child.context is not None
    assert child.context.trace_id == parent.get_span_context().trace_id


def test_metrics_carry_the_conventions_attributes(otel: Otel) -> None:
    guard = make(otel, Budget.daily("0.01"))
    for _ in range(2):
        with guard.reserve(spec(input_tokens=1000, max_output=500)) as r:
            r.commit(USAGE, response_model="test-model-2026-01-01")
    got = otel.metrics()
    base = {
        Attr.OPERATION_NAME: "chat",
        Attr.PROVIDER_NAME: "openai",
        Attr.REQUEST_MODEL: "test-model",
        Attr.RESPONSE_MODEL: "test-model-2026-01-01",
    }
    tokens = {p.attributes[Attr.TOKEN_TYPE]: p for p in got[Metric.TOKEN_USAGE]}
    assert dict(tokens["input"].attributes) == {**base, Attr.TOKEN_TYPE: "input"}
    assert (tokens["input"].count, tokens["input"].sum) == (2, 2000)
    assert (tokens["output"].count, tokens["output"].sum) == (2, 600)
    assert tuple(tokens["input"].explicit_bounds)[:3] == (1, 4, 16)
    [duration] = got[Metric.OPERATION_DURATION]
    assert dict(duration.attributes) == base and duration.count == 2
    assert tuple(duration.explicit_bounds)[:2] == (0.01, 0.02)
    [cost] = got[Metric.COST]
    assert cost.value == pytest.approx(0.0026)
    assert dict(cost.attributes) == {
        Attr.AGENT_NAME: "research-bot",
        Attr.PROVIDER_NAME: "openai",
        Attr.REQUEST_MODEL: "test-model",
    }
    [utilization] = got[Metric.BUDGET_UTILIZATION]
    assert utilization.value == pytest.approx(0.26)
    assert dict(utilization.attributes) == {
        Attr.AGENT_NAME: "research-bot",
        Attr.BUDGET_NAME: "daily",
        Attr.BUDGET_KEY: guard.status()[0].key,
    }


def test_instrumenting_twice_adds_one_observer(otel: Otel) -> None:
    guard = make(otel)
    again = instrument(guard)
    assert sum(isinstance(o, KavachTelemetry) for o in guard._observers) == 1
    assert isinstance(again, KavachTelemetry)


def test_no_global_provider_is_set(otel: Otel) -> None:
    before = trace.get_tracer_provider()
    make(otel)
    assert trace.get_tracer_provider() is before
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_telemetry_true_uses_the_applications_global_providers() -> None:
    out = run_python(
        """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from kavach import AgentKavach, Budget, Usage
from tests.kavach.conftest import PRICES, spec
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
guard = AgentKavach("bot", Budget.daily(1), prices=PRICES, telemetry=True)
with guard.reserve(spec()) as r:
    r.commit(Usage(input_tokens=10, output_tokens=5))
print([s.name for s in exporter.get_finished_spans()])
"""
    )
    assert out.strip() == "['chat test-model']"


def test_import_loads_no_opentelemetry_and_no_redis() -> None:
    # OpenTelemetry and redis load only when a guard turns telemetry / a Redis ledger on.
    # (The import-time budget itself is measured by benchmarks/import_time.py.)
    out = run_python(
        "import sys; import kavach; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'opentelemetry', 'redis'}))"
    )
    assert out.strip() == "[]"


def test_the_collector_example_exports_spans_and_metrics_over_otlp_to_a_loopback_stub() -> None:
    import gzip
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otlp extra")

    received: dict[str, bytes] = {}

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received[self.path] = received.get(self.path, b"") + body
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = subprocess.run(
            [sys.executable, "examples/otel_collector.py"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={
                **__import__("os").environ,
                "PYTHONPATH": str(ROOT),
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            },
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert "refused: daily budget exceeded" in result.stdout
    traces, metrics = received["/v1/traces"], received["/v1/metrics"]
    for needle in (b"chat gpt-4o-mini", b"handle ticket 4711", b"gen_ai.usage.output_tokens"):
        assert needle in traces
    assert b"budget_exceeded" in traces
    for needle in (b"gen_ai.client.token.usage", b"kavach.cost", b"kavach.refusals"):
        assert needle in metrics


def test_reclaimed_holds_are_counted(otel: Otel) -> None:
    from kavach.ledger import HoldReclaimed

    guard = make(otel)
    guard._emit("on_reclaim", HoldReclaimed("abc-1", "agent:research-bot:daily:x", 5))
    [point] = otel.metrics()[Metric.RECLAIMS]
    assert point.value == 1
    assert dict(point.attributes) == {
        Attr.AGENT_NAME: "research-bot",
        Attr.LEDGER_KEY: "agent:research-bot:daily:x",
    }


@pytest.mark.anyio
async def test_async_calls_nest_under_the_task_context_at_reserve(otel: Otel) -> None:
    import asyncio

    guard = make(otel)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("agent run") as parent:
        r = await guard.areserve(spec())
    await asyncio.create_task(r.acommit(USAGE))  # settled in another task, after the span
    child = next(s for s in otel.finished() if s.name == "chat test-model")
    assert child.parent is not None
    assert child.parent.span_id == parent.get_span_context().span_id


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_budget_names_line_up_with_their_dollar_limits(otel: Otel) -> None:
    guard = make(otel, [Budget.daily(tokens=100_000), Budget.daily(5), Budget.monthly(50)])
    with guard.reserve(spec(input_tokens=1000, max_output=500)) as r:
        r.commit(USAGE)
    [span] = otel.finished()
    attrs = span.attributes or {}
    names, limits = attrs[Attr.BUDGET_NAMES], attrs[Attr.BUDGET_LIMITS_USD]
    assert dict(zip(names, limits, strict=True)) == {"daily": 5.0, "monthly": 50.0}
