"""Prometheus text metrics of this backend process (``GET /metrics``).

Counters are per process, as Prometheus expects: it scrapes every replica and sums.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from litestar import Request, Response, get

__all__ = ["Metrics", "metrics_endpoint"]

_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 5000, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.batch_counts = [0] * len(_BATCH_BUCKETS)
        self.batch_sum = 0
        self.batch_total = 0
        self.gauges: dict[str, Any] = {}

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def batch(self, size: int) -> None:
        with self._lock:
            for i, bound in enumerate(_BATCH_BUCKETS):
                if size <= bound:
                    self.batch_counts[i] += 1
            self.batch_sum += size
            self.batch_total += 1

    def render(self) -> str:
        lines: list[str] = []
        helps = {
            "agentkavach_ingest_requests_total": "Ingest requests by HTTP status",
            "agentkavach_ingest_events_total": "Events accepted by ingest (rate() gives events/s)",
            "agentkavach_rate_limited_total": "Requests refused with 429, by reason",
            "agentkavach_alert_deliveries_total": "Alert deliveries by channel kind and outcome",
            "agentkavach_agents_stopped_total": "Agents stopped by a server-side budget",
            "agentkavach_retention_deleted_total": "Rows deleted by the retention job",
        }
        with self._lock:
            by_name: dict[str, list[str]] = defaultdict(list)
            for (name, labels), value in sorted(self.counters.items()):
                label = ",".join(f'{k}="{v}"' for k, v in labels)
                by_name[name].append(
                    f"{name}{{{label}}} {value:g}" if label else f"{name} {value:g}"
                )
            for name in sorted(set(helps) | set(by_name)):
                lines.append(f"# HELP {name} {helps.get(name, name)}")
                lines.append(f"# TYPE {name} counter")
                lines.extend(by_name.get(name) or [f"{name} 0"])
            lines.append("# HELP agentkavach_ingest_batch_size Events per ingest batch")
            lines.append("# TYPE agentkavach_ingest_batch_size histogram")
            for bound, count in zip(_BATCH_BUCKETS, self.batch_counts, strict=True):
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'agentkavach_ingest_batch_size_bucket{{le="{le}"}} {count}')
            lines.append(f"agentkavach_ingest_batch_size_sum {self.batch_sum}")
            lines.append(f"agentkavach_ingest_batch_size_count {self.batch_total}")
            for name, value in sorted(self.gauges.items()):
                lines.append(f"# TYPE {name} gauge")
                lines.append(f"{name} {value() if callable(value) else value}")
        return "\n".join(lines) + "\n"


@get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[str]:
    metrics: Metrics = request.app.state.ops.metrics
    return Response(
        metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8", status_code=200
    )
