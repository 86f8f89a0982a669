"""Ingest throughput: events per second into SQLite and PostgreSQL.

Starts the backend with ``python -m backend serve`` on a loopback port (its own
process), registers an account, creates a key, then runs concurrent senders (4 by
default) posting batches for a fixed time after a one-second warm-up. Reports sustained
events/s and p50/p99 request latency per database and batch size, and the CPU time
spent per event by the server process, by the PostgreSQL backends serving it and by
this client.

The client stays out of the measurement as far as it can: each sender's batch is
encoded once before the timed window, and every request only writes fresh ids into a
copy of it (same length, so the request bytes are prepared once too), then sends it
over a plain HTTP/1.1 keep-alive connection. On a small machine a client that builds
JSON and runs an HTTP library per request takes a core from the server it measures.

``--code LABEL=PATH`` (repeatable) serves the backend from another checkout, and
``--repeat`` interleaves rounds, so versions are compared side by side on the same
machine load; the summary gives medians over the rounds.

    python benchmarks/ingest.py --db sqlite --db postgres --seconds 10
    python benchmarks/ingest.py --db postgres --code before=/tmp/base --code after=. --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from served_backend import (  # type: ignore[import-not-found]
    ROOT,
    ServedBackend,
    postgres_cpu,
    process_cpu,
    scratch_database,
    served_backend,
)

_BATCH = b"@@@@@@@@@@"  # replaced by the request's counter: every event id is new
_RUN = b"%%"  # replaced by the counter modulo 50: a batch joins one of 50 runs


def batch_template(sender: int, size: int, started_at: str) -> bytes:
    events = [
        {
            "id": f"{sender}-{_BATCH.decode()}-{i}",
            "agent": f"agent-{i % 8}",
            "run_id": f"run-{sender}-{_RUN.decode()}",
            "provider": "openai",
            "model": "gpt-4o" if i % 3 else "gpt-4o-mini",
            "operation": "chat",
            "status": "ok" if i % 50 else "refused",
            "refusal_reason": None if i % 50 else "budget",
            "started_at": started_at,
            "duration_ms": 12.5,
            "cost_nanos": 1234 + i,
            "reserved_nanos": 5000,
            "usage": {"input_tokens": 100, "output_tokens": 20},
            "response_model": "gpt-4o-2024-08-06",
            "finish_reasons": ["stop"],
            "max_output_tokens": 256,
        }
        for i in range(size)
    ]
    return msgspec.json.encode(
        {"sdk": {"version": "0.1.0", "instance_id": "bench"}, "events": events}
    )


class Accepted(msgspec.Struct):
    accepted: int


class Connection:
    """One HTTP/1.1 keep-alive connection that sends prepared requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base: str) -> Connection:
        url = urlsplit(base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@dataclass
class Sender:
    index: int
    template: bytes
    head: bytes
    counter: int = 0

    def request(self) -> bytes:
        self.counter += 1
        body = self.template.replace(_BATCH, b"%010d" % self.counter).replace(
            _RUN, b"%02d" % (self.counter % 50)
        )
        return self.head + body


def request_head(backend: ServedBackend, length: int) -> bytes:
    host = urlsplit(backend.base).netloc
    return (
        f"POST /v1/ingest HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {backend.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def send_until(
    backend: ServedBackend, sender: Sender, until: float, latencies: list[float] | None
) -> int:
    connection = await Connection.open(backend.base)
    sent = 0
    try:
        while time.monotonic() < until:
            request = sender.request()
            started = time.perf_counter()
            status, body = await connection.send(request)
            if latencies is not None:
                latencies.append(time.perf_counter() - started)
            if status != 202:
                raise RuntimeError(f"ingest failed: {status} {body[:200]!r}")
            sent += msgspec.json.decode(body, type=Accepted).accepted
    finally:
        await connection.close()
    return sent


@dataclass(frozen=True)
class Window:
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    server_us: float  # CPU per event
    postgres_us: float
    client_us: float


async def measure(backend: ServedBackend, size: int, senders: int, seconds: float) -> Window:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    workers = []
    for index in range(senders):
        template = batch_template(index, size, now)
        workers.append(Sender(index, template, request_head(backend, len(template))))
    # Warm-up: connections, prepared statements, the agents and runs of the batch.
    await asyncio.gather(*(send_until(backend, s, time.monotonic() + 1.0, None) for s in workers))

    latencies: list[float] = []
    cpu_server = process_cpu(backend.pid)
    cpu_postgres = await postgres_cpu(backend.database_url) if backend.kind == "postgres" else 0.0
    cpu_client = time.process_time()
    started = time.monotonic()
    until = started + seconds
    counts = await asyncio.gather(*(send_until(backend, s, until, latencies) for s in workers))
    elapsed = time.monotonic() - started
    total = sum(counts)
    cpu_client = time.process_time() - cpu_client
    cpu_server = process_cpu(backend.pid) - cpu_server
    if backend.kind == "postgres":
        cpu_postgres = await postgres_cpu(backend.database_url) - cpu_postgres
    latencies.sort()
    per_event = 1e6 / max(total, 1)
    return Window(
        rate=total / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        requests=len(latencies),
        server_us=cpu_server * per_event,
        postgres_us=cpu_postgres * per_event,
        client_us=cpu_client * per_event,
    )


def line(label: str, kind: str, size: int, w: Window) -> str:
    return (
        f"{label:8} {kind:8} batch={size:5} rate={w.rate:7.0f} ev/s  p50={w.p50_ms:7.1f} ms"
        f"  p99={w.p99_ms:7.1f} ms  requests={w.requests:5}  cpu/event: server="
        f"{w.server_us:5.1f} us postgres={w.postgres_us:5.1f} us client={w.client_us:4.1f} us"
    )


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--code", action="append", metavar="LABEL=PATH")
    parser.add_argument("--extra-path", default="", help="appended to the server's PYTHONPATH")
    args = parser.parse_args()
    args.code = [
        (label, Path(path).resolve())
        for label, path in (c.split("=", 1) for c in args.code or [f"this={ROOT}"])
    ]
    return args


async def main(args: argparse.Namespace) -> None:
    sizes = args.batch or [100, 1000]
    codes = args.code
    results: dict[tuple[str, str, int], list[Window]] = defaultdict(list)
    for round_ in range(args.repeat):
        # Alternate the order, so neither version always runs on a warmer machine.
        order = codes if round_ % 2 == 0 else codes[::-1]
        for kind in args.db or ["sqlite", "postgres"]:
            for label, path in order:
                async with (
                    scratch_database(kind) as url,
                    served_backend(url, code=path, extra_path=args.extra_path) as backend,
                ):
                    for size in sizes:
                        window = await measure(backend, size, args.senders, args.seconds)
                        results[(label, kind, size)].append(window)
                        print(line(label, kind, size, window), flush=True)
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} rounds")
        for (label, kind, size), windows in results.items():
            median = Window(
                *(statistics.median(getattr(w, f) for w in windows) for f in Window.__annotations__)
            )
            print(line(label, kind, size, median))


if __name__ == "__main__":
    asyncio.run(main(arguments()))
