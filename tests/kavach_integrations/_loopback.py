"""A minimal loopback stand-in for the OpenAI chat and Anthropic messages APIs (JSON and SSE).

Replies are scripted: ``server.script(Reply(...), ...)`` queues them, ``server.default`` answers
when the queue is empty. Every request body is recorded in ``server.requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    text: str = "ok"
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input_tokens: int = 20
    output_tokens: int = 10
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0
    status: int = 200
    delay: float = 0.0


class Loopback:
    def __init__(self) -> None:
        self.default = Reply()
        self.queue: deque[Reply] = deque()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        loopback = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with loopback._lock:
                    loopback.requests.append((self.path, body))
                    reply = loopback.queue.popleft() if loopback.queue else loopback.default
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    self._json(
                        reply.status,
                        {"error": {"message": "scripted failure", "type": "server_error"}},
                    )
                elif self.path.endswith("/chat/completions"):
                    if body.get("stream"):
                        usage = (body.get("stream_options") or {}).get("include_usage")
                        self._sse(_openai_events(body, reply, bool(usage)), anthropic=False)
                    else:
                        self._json(200, _openai_json(body, reply))
                elif self.path.endswith("/messages"):
                    if body.get("stream"):
                        self._sse(_anthropic_events(body, reply), anthropic=True)
                    else:
                        self._json(200, _anthropic_json(body, reply))
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, events: list[tuple[str | None, Any]], *, anthropic: bool) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for name, data in events:
                        text = data if isinstance(data, str) else json.dumps(data)
                        prefix = f"event: {name}\n" if name else ""
                        self.wfile.write(f"{prefix}data: {text}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.queue.extend(replies)

    def start(self) -> Loopback:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)] if text else []


def _openai_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reply.reasoning, "audio_tokens": 0},
    }


def _openai_tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for i, (name, args) in enumerate(reply.tool_calls)
    ]


def _openai_json(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = _openai_tool_calls(reply)
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body.get("model", "gpt-4o-mini"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": _openai_usage(reply),
    }


def _openai_events(body: dict[str, Any], reply: Reply, usage: bool) -> list[tuple[str | None, Any]]:
    base = {
        "id": "chatcmpl-loopback",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": body.get("model", "gpt-4o-mini"),
    }
    out: list[tuple[str | None, Any]] = []
    out.append(
        (
            None,
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            },
        )
    )
    for word in _words(reply.text):
        out.append(
            (
                None,
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                },
            )
        )
    for i, call in enumerate(_openai_tool_calls(reply)):
        out.append(
            (
                None,
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"tool_calls": [{"index": i, **call}]},
                            "finish_reason": None,
                        }
                    ],
                },
            )
        )
    out.append(
        (
            None,
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {},
                        "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                    }
                ],
            },
        )
    )
    if usage:
        out.append((None, {**base, "choices": [], "usage": _openai_usage(reply)}))
    out.append((None, "[DONE]"))
    return out


def _anthropic_usage(reply: Reply) -> dict[str, Any]:
    # Anthropic reports input tokens without the cache reads and writes.
    return {
        "input_tokens": reply.input_tokens - reply.cache_read - reply.cache_write,
        "output_tokens": reply.output_tokens,
        "cache_read_input_tokens": reply.cache_read,
        "cache_creation_input_tokens": reply.cache_write,
    }


def _anthropic_blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    for i, (name, args) in enumerate(reply.tool_calls):
        blocks.append({"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": args})
    return blocks


def _anthropic_json(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    return {
        "id": "msg_loopback",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "claude-sonnet-4-0"),
        "content": _anthropic_blocks(reply),
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(reply),
    }


def _anthropic_events(body: dict[str, Any], reply: Reply) -> list[tuple[str | None, Any]]:
    usage = _anthropic_usage(reply)
    start_usage = {**usage, "output_tokens": 1}
    out: list[tuple[str | None, Any]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_loopback",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "claude-sonnet-4-0"),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
    ]
    index = 0
    if reply.text:
        out.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for word in _words(reply.text):
            out.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": word},
                    },
                )
            )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for i, (name, args) in enumerate(reply.tool_calls):
        out.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": f"toolu_{i}",
                        "name": name,
                        "input": {},
                    },
                },
            )
        )
        out.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(args)},
                },
            )
        )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
                    "stop_sequence": None,
                },
                "usage": usage,
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return out
