"""A loopback stand-in for the backend's SDK endpoints, scriptable per test."""

from __future__ import annotations

import gzip
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeBackend:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.batches = 0
        self.refused = 0
        self.received = 0  # every event posted and accepted, duplicates included
        self.fail_after: int | None = None  # answer 503 once this many batches were accepted
        self.status = 202
        self.retry_after: str | None = None
        self.control: dict[str, Any] = {}
        self.spend: dict[str, Any] = {}
        self.streams: list[queue.Queue[dict[str, Any] | None]] = []
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = json.loads(raw)
                with backend.lock:
                    if backend.fail_after is not None and backend.batches >= backend.fail_after:
                        backend.status, backend.fail_after = 503, None
                    status = backend.status
                    if status != 202:
                        backend.refused += 1
                    if status == 202:
                        backend.batches += 1
                        backend.received += len(body["events"])
                        seen = {e["id"] for e in backend.events}
                        fresh = [e for e in body["events"] if e["id"] not in seen]
                        backend.events.extend(fresh)
                if status == 202:
                    self._json(202, {"accepted": len(fresh), "control": backend.control})
                else:
                    headers = {"Retry-After": backend.retry_after} if backend.retry_after else {}
                    self._json(status, {"detail": f"status {status}"}, headers)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/v1/agents/") and self.path.endswith("/spend"):
                    self._json(200, backend.spend)
                    return
                if self.path.startswith("/v1/control/stream"):
                    q: queue.Queue[dict[str, Any] | None] = queue.Queue()
                    with backend.lock:
                        backend.streams.append(q)
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for name, state in backend.control.items():
                        self._chunk({"type": "state", "agent": name, "initial": True, **state})
                    while True:
                        try:
                            message = q.get(timeout=0.5)
                        except queue.Empty:
                            self._chunk(None)
                            continue
                        if message is None:
                            break
                        self._chunk(message)
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self._json(404, {"detail": "not found"})

            def _chunk(self, message: dict[str, Any] | None) -> None:
                text = ": keepalive\n\n" if message is None else f"data: {json.dumps(message)}\n\n"
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def push(self, message: dict[str, Any]) -> None:
        with self.lock:
            for q in self.streams:
                q.put(message)

    def close(self) -> None:
        for q in self.streams:
            q.put(None)
        self.server.shutdown()
        self.server.server_close()
