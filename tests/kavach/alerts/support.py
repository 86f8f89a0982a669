"""Helpers for the alert tests: a loopback HTTP server that records requests, guards that spend."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kavach import AgentKavach, Budget, CallSpec, ModelPrice, Usage

PRICES = {"m": ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)}
CALL_COST_NANOS = 1_000_000  # 1,000 input tokens at $1/Mtok


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class HttpRecorder:
    """Records every request; ``script(path, *replies)`` sets the answers (the last one repeats)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self.url = ""

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path] = list(replies)

    def reply_for(self, path: str) -> Reply:
        with self._lock:
            replies = self._scripts.get(path)
            if not replies:
                return Reply()
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def record(self, item: Recorded) -> None:
        with self._lock:
            self.requests.append(item)

    def at(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 5.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            time.sleep(0.01)
        return self.at(path)


def alert_guard(limit_calls: float = 100, **kwargs: Any) -> AgentKavach:
    """A guard whose daily budget is ``limit_calls`` calls of ``spend`` (one call = $0.001)."""
    kwargs.setdefault("agent_name", "bot")
    return AgentKavach(
        budget=Budget.daily(limit_calls * CALL_COST_NANOS / 1e9),
        prices=PRICES,
        detect_loops=False,
        **kwargs,
    )


SPEC = CallSpec(provider="openai", model="m", input_tokens=1000, max_output_tokens=1)
USAGE = Usage(input_tokens=1000, output_tokens=0)


def spend(guard: AgentKavach, calls: int) -> None:
    for _ in range(calls):
        with guard.reserve(SPEC) as r:
            r.commit(USAGE)


def serve(rec: HttpRecorder) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            rec.record(
                Recorded(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                )
            )
            reply = rec.reply_for(self.path)
            if reply.delay:
                time.sleep(reply.delay)
            data = reply.body.encode()
            try:
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server
