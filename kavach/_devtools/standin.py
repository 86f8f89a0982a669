"""A local stand-in LLM provider: a loopback HTTP server that speaks the providers' wire formats.

For tests, benchmarks and ``kavach demo``; it never reaches the network. It answers:

- OpenAI: ``POST /v1/chat/completions`` (also Mistral's, same path and shape; ``stream: true``
  gives SSE chunks, a usage-only last chunk when ``stream_options.include_usage`` is set),
  ``POST /v1/responses`` (streamed as ``response.*`` events), ``POST /v1/completions``
  (legacy text completions, streamed too), ``GET /v1/responses/{id}`` (a response it
  answered, as ``responses.retrieve`` reads it), ``POST /v1/conversations`` and
  ``GET /v1/conversations/{id}/items`` (a turn naming one joins it), ``POST /v1/decisions``,
  ``POST /v1/embeddings``,
  ``POST /v1/images/generations`` (GPT image models report token usage, DALL·E models none;
  ``stream: true`` gives ``image_generation.partial_image`` and ``.completed`` events),
  ``GET /v1/models``.
- Anthropic: ``POST /v1/messages`` (SSE ``message_start`` ... ``message_stop`` when
  streamed), ``POST /v1/messages/count_tokens``.
- Google: ``POST /v1beta/models/{model}:generateContent`` and
  ``:streamGenerateContent?alt=sse``, ``POST /v1beta/cachedContents`` and
  ``GET /v1beta/cachedContents/{id}`` (context caches).

Usage::

    from kavach._devtools.standin import StandIn, Reply, ToolCall

    with StandIn() as server:                         # port 0: a free port is picked
        client = openai.OpenAI(base_url=server.openai_url, api_key="test")
        server.script(Reply(text="one two three"), Reply(status=500))  # next two requests
        server.default = Reply(output_tokens=50)     # every later request
        client.chat.completions.create(model="gpt-4o", messages=[...], max_tokens=20)
        server.last.body["max_tokens"]                # 20: requests are recorded
        server.requests                               # list[RecordedRequest]

Base URLs: ``server.openai_url`` (``.../v1``, also for Mistral as ``server_url=server.base_url``),
``server.anthropic_url`` and ``server.google_url`` (both ``server.base_url``).

A ``Reply`` chooses what the next answer holds: ``text`` (split into one token per word),
``output_tokens`` (words are repeated to reach it), ``input_tokens`` (default: request body
characters / 4), cache and reasoning fields, ``tool_calls``, an HTTP error ``status``,
``delay`` before answering, ``chunk_delay`` between streamed chunks, ``hang`` (never answer
until the server stops), ``error_after`` (a stream fails with the provider's SSE error event
after that many chunks). The output respects the request's max output tokens
(``finish_reason`` "length") unless ``honor_max_tokens=False``. ``server.responder`` may be
set to a function ``RecordedRequest -> Reply`` for replies that depend on the request.

From a shell: ``python -m kavach._devtools.standin --port 8765``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["RecordedRequest", "Reply", "StandIn", "ToolCall"]

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model "makes": a function name and its JSON arguments."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the stand-in answers to one request. Token counts are exact in the usage it reports.

    ``cached_tokens`` are cache reads (OpenAI ``cached_tokens``, Anthropic
    ``cache_read_input_tokens``, Gemini ``cachedContentTokenCount``); ``cache_write_tokens`` and
    ``cache_write_1h_tokens`` are Anthropic's 5-minute and 1-hour cache writes. ``input_tokens``
    counts all input, cache included (Anthropic's reported ``input_tokens`` has them taken out,
    as the real API does). ``reasoning_tokens`` are counted inside output tokens.
    """

    text: str = "Hello from the kavach stand-in provider."
    output_tokens: int | None = None
    input_tokens: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_output_tokens: int = 0
    """Gemini: tokens of images in the reply, inside ``output_tokens``, reported by modality.
    OpenAI images: when set, the usage splits ``output_tokens`` into these image tokens and
    text tokens (``output_tokens_details``); an image's output tokens default to 1056."""
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    model: str | None = None
    status: int = 200
    error: Mapping[str, Any] | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    hang: bool = False
    honor_max_tokens: bool = True
    error_after: int | None = None
    """Streams only: send this many text chunks, then the provider's SSE error event."""
    web_searches: int = 0
    """Searches a server-side web search tool made: Anthropic ``usage.server_tool_use``, OpenAI
    Responses ``web_search_call`` output items, Gemini ``groundingMetadata.webSearchQueries``."""
    service_tier: str | None = None
    """The tier the answer says served the call (OpenAI ``service_tier``, Anthropic
    ``usage.speed``), as a project whose default tier is priority gets without asking. By
    default the tier the request asked for (its ``service_tier`` or ``speed``), if any."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the stand-in received. Header names are lower-case."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: Any


@dataclass(slots=True)
class _Plan:
    """A reply resolved against its request: the exact tokens and counts to send."""

    reply: Reply
    model: str
    pieces: list[str]
    input_tokens: int
    output_tokens: int
    truncated: bool
    tier: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _max_output(body: Mapping[str, Any]) -> int | None:
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int):
            return value
    config = body.get("generationConfig")
    if isinstance(config, Mapping) and isinstance(config.get("maxOutputTokens"), int):
        return int(config["maxOutputTokens"])
    return None


def _count_text(value: Any) -> int:
    """A rough token count of a request's text: ~4 characters a token, ~3 tokens a message."""
    if isinstance(value, str):
        return len(value) // 4 + 1
    if isinstance(value, Mapping):
        return 3 + sum(_count_text(v) for k, v in value.items() if k not in ("role", "type"))
    if isinstance(value, list):
        return sum(_count_text(v) for v in value)
    return 0


def _plan(reply: Reply, body: Mapping[str, Any], model: str) -> _Plan:
    words = reply.text.split() or ["ok"]
    wanted = reply.output_tokens if reply.output_tokens is not None else len(words)
    cap = _max_output(body) if reply.honor_max_tokens else None
    text_tokens = max(0, wanted - reply.reasoning_tokens)
    truncated = False
    if cap is not None and text_tokens + reply.reasoning_tokens > cap:
        text_tokens = max(0, cap - reply.reasoning_tokens)
        truncated = True
    pieces = [
        (words[i % len(words)] + " ") if i < text_tokens - 1 else words[i % len(words)]
        for i in range(text_tokens)
    ]
    if reply.input_tokens is not None:
        input_tokens = reply.input_tokens
    else:
        source = [
            body.get(k) for k in ("messages", "input", "prompt", "contents", "system", "tools")
        ]
        input_tokens = max(1, _count_text(source))
    return _Plan(
        reply=reply,
        model=reply.model or model,
        pieces=pieces,
        input_tokens=input_tokens,
        output_tokens=text_tokens + reply.reasoning_tokens,
        truncated=truncated,
        tier=reply.service_tier or _asked_tier(body),
    )


def _asked_tier(body: Mapping[str, Any]) -> str | None:
    tier = body.get("service_tier") or body.get("speed")
    if tier == "auto":
        return "default"  # a project that set no default tier
    return tier if isinstance(tier, str) else None


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {payload}\n\n".encode()


# -- OpenAI ------------------------------------------------------------------------------


def _openai_usage(p: _Plan) -> dict[str, Any]:
    r = p.reply
    return {
        "prompt_tokens": p.input_tokens,
        "completion_tokens": p.output_tokens,
        "total_tokens": p.input_tokens + p.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": r.cached_tokens,
            "audio_tokens": r.audio_input_tokens,
        },
        "completion_tokens_details": {
            "reasoning_tokens": r.reasoning_tokens,
            "audio_tokens": r.audio_output_tokens,
        },
    }


def _finish(p: _Plan, default: str, tool: str, length: str) -> str:
    if p.reply.finish_reason:
        return p.reply.finish_reason
    if p.truncated:
        return length
    return tool if p.reply.tool_calls else default


def _chat(p: _Plan) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": p.text or None}
    if p.reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{next(_ids)}",
                "type": "function",
                "function": {"name": t.name, "arguments": json.dumps(dict(t.arguments))},
            }
            for t in p.reply.tool_calls
        ]
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": p.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish(p, "stop", "tool_calls", "length"),
                "logprobs": None,
            }
        ],
        "usage": _openai_usage(p),
        **_tier(p, "service_tier"),
    }


def _tier(p: _Plan, name: str) -> dict[str, str]:
    return {name: p.tier} if p.tier is not None else {}


def _chat_stream(p: _Plan, body: Mapping[str, Any], usage_in_last: bool) -> Iterator[bytes]:
    cid, created = f"chatcmpl-{next(_ids)}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": p.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **_tier(p, "service_tier"),
        }

    yield _sse(chunk({"role": "assistant", "content": ""}))
    for n, piece in enumerate(p.pieces):
        if n == p.reply.error_after:
            yield _sse(
                {"error": {"message": "stand-in failure mid-stream", "type": "server_error"}}
            )
            return
        yield _sse(chunk({"content": piece}))
    for i, t in enumerate(p.reply.tool_calls):
        yield _sse(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": f"call_{next(_ids)}",
                            "type": "function",
                            "function": {"name": t.name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        yield _sse(
            chunk(
                {
                    "tool_calls": [
                        {"index": i, "function": {"arguments": json.dumps(dict(t.arguments))}}
                    ]
                }
            )
        )
    last = chunk({}, _finish(p, "stop", "tool_calls", "length"))
    if usage_in_last:
        last["usage"] = _openai_usage(p)
    yield _sse(last)
    options = body.get("stream_options") or {}
    if options.get("include_usage") and not usage_in_last:
        yield _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": p.model,
                "choices": [],
                "usage": _openai_usage(p),
                **_tier(p, "service_tier"),
            }
        )
    yield _sse("[DONE]")


def _completion(p: _Plan) -> dict[str, Any]:
    """A legacy ``/completions`` answer: one choice, the usage as planned."""
    return {
        "id": f"cmpl-{next(_ids)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": p.model,
        "choices": [
            {
                "index": 0,
                "text": p.text,
                "finish_reason": _finish(p, "stop", "stop", "length"),
                "logprobs": None,
            }
        ],
        "usage": _openai_usage(p),
    }


def _completion_stream(p: _Plan, body: Mapping[str, Any]) -> Iterator[bytes]:
    cid, created = f"cmpl-{next(_ids)}", int(time.time())

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": p.model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }

    for piece in p.pieces:
        yield _sse(chunk(piece))
    yield _sse(chunk("", _finish(p, "stop", "stop", "length")))
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        last = chunk("")
        last["choices"], last["usage"] = [], _openai_usage(p)
        yield _sse(last)
    yield _sse("[DONE]")


def _response_obj(p: _Plan, status: str = "completed") -> dict[str, Any]:
    output: list[dict[str, Any]] = [
        {
            "type": "web_search_call",
            "id": f"ws_{next(_ids)}",
            "status": "completed",
            "action": {"type": "search", "query": f"search {n}"},
        }
        for n in range(p.reply.web_searches)
    ]
    if p.pieces:
        output.append(
            {
                "type": "message",
                "id": f"msg_{next(_ids)}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": p.text, "annotations": []}],
            }
        )
    for t in p.reply.tool_calls:
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{next(_ids)}",
                "call_id": f"call_{next(_ids)}",
                "name": t.name,
                "arguments": json.dumps(dict(t.arguments)),
                "status": "completed",
            }
        )
    r = p.reply
    return {
        "id": f"resp_{next(_ids)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status if not p.truncated or status != "completed" else "incomplete",
        "model": p.model,
        "output": output if status == "completed" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": p.input_tokens,
            "input_tokens_details": {"cached_tokens": r.cached_tokens},
            "output_tokens": p.output_tokens,
            "output_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
            "total_tokens": p.input_tokens + p.output_tokens,
        }
        if status == "completed"
        else None,
        **_tier(p, "service_tier"),
    }


def _gemini_decision(p: _Plan, body: Mapping[str, Any]) -> dict[str, Any]:
    """A Gemini Decisions answer: a true/false answer to each question, usage in the
    Interactions API's form (thinking apart from output)."""
    questions = body.get("questions")
    names = list(questions) if isinstance(questions, dict) else []
    r = p.reply
    return {
        "answers": {name: {"type": "noul", "value": True, "confidence": 0.5} for name in names},
        "model": p.model,
        "usage": {
            "total_input_tokens": p.input_tokens,
            "total_cached_tokens": r.cached_tokens,
            "total_output_tokens": max(0, p.output_tokens - r.reasoning_tokens),
            "total_thought_tokens": r.reasoning_tokens,
            "total_tokens": p.input_tokens + p.output_tokens,
        },
    }


def _not_found(kind: str, object_id: str) -> dict[str, Any]:
    """OpenAI's error for an id it does not have."""
    return {"message": f"{kind} with id '{object_id}' not found.", "type": "invalid_request_error"}


def _items(source: Any) -> list[dict[str, Any]]:
    """Responses API input (a string or items) as the conversation items it becomes."""
    if isinstance(source, str):
        source = [{"role": "user", "content": source}]
    items = []
    for item in source if isinstance(source, list) else []:
        item = dict(item) if isinstance(item, dict) else {"role": "user", "content": str(item)}
        if isinstance(item.get("content"), str):
            item["content"] = [{"type": "input_text", "text": item["content"]}]
        item.setdefault("type", "message")
        item.setdefault("status", "completed")
        item.setdefault("id", f"msg_{next(_ids)}")
        items.append(item)
    return items


def _decision(p: _Plan, body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI Decisions answer: a predicate answer to each question asked."""
    questions = body.get("questions")
    answers = [
        {
            "type": "predicate",
            "name": q.get("name") if isinstance(q, dict) else None,
            "probability": 0.5,
        }
        for q in (questions if isinstance(questions, list) else [])
    ]
    r = p.reply
    return {
        "answers": answers,
        "model": p.model,
        "usage": {
            "input_tokens": p.input_tokens,
            "input_tokens_details": {"cached_tokens": r.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": p.output_tokens,
            "output_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
            "total_tokens": p.input_tokens + p.output_tokens,
        },
    }


def _responses_stream(p: _Plan, done: dict[str, Any]) -> Iterator[bytes]:
    seq = itertools.count()
    started = _response_obj(p, "in_progress")
    started["id"] = done["id"]

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

    yield event("response.created", response=started)
    for index, item in enumerate(done["output"]):
        if item["type"] == "web_search_call":
            yield event("response.output_item.added", output_index=index, item=item)
            yield event("response.output_item.done", output_index=index, item=item)
            continue
        if item["type"] == "message":
            part = item["content"][0]
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            yield event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part={**part, "text": ""},
            )
            for piece in p.pieces:
                yield event(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            yield event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            )
            yield event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        else:
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            yield event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=item["arguments"],
            )
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=done)


def _embeddings(body: Mapping[str, Any], p: _Plan) -> dict[str, Any]:
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) and not isinstance(inputs[0], int) else 1
    vector = [0.1, 0.2, 0.3, 0.4]
    data = []
    for i in range(count):
        emb: Any = vector
        if body.get("encoding_format") == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": p.model,
        "usage": {"prompt_tokens": p.input_tokens, "total_tokens": p.input_tokens},
    }


_PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
_IMAGE_TOKENS = 1056  # one medium 1024x1024 gpt-image-1 image


def _images_count(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def _image_usage(p: _Plan, output_tokens: int, input_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
    }
    if p.reply.image_output_tokens:
        image = min(p.reply.image_output_tokens, output_tokens)
        usage["output_tokens_details"] = {
            "image_tokens": image,
            "text_tokens": output_tokens - image,
        }
    return usage


def _images(body: Mapping[str, Any], p: _Plan) -> dict[str, Any]:
    """An Images API answer: ``n`` images, with token usage for GPT image models only."""
    n = _images_count(body)
    answer: dict[str, Any] = {"created": int(time.time()), "data": [{"b64_json": _PIXEL}] * n}
    if p.model.startswith("gpt-image"):
        output = p.reply.output_tokens
        answer["usage"] = _image_usage(
            p, output if output is not None else _IMAGE_TOKENS * n, p.input_tokens
        )
    return answer


def _images_stream(body: Mapping[str, Any], p: _Plan) -> Iterator[bytes]:
    """``partial_images`` partial images, then a completed event, for each of ``n`` images;
    each completed event reports its image's share of the usage (the input on the first)."""
    n = _images_count(body)
    partials = body.get("partial_images")
    partials = partials if isinstance(partials, int) else 0
    output = p.reply.output_tokens
    total = output if output is not None else _IMAGE_TOKENS * n
    shown = {"created_at": int(time.time()), "size": "1024x1024", "quality": "medium"}
    shown |= {"background": "opaque", "output_format": "png"}
    sent = 0
    for image in range(n):
        for index in range(partials + 1):
            if sent == p.reply.error_after:
                yield _sse(
                    {"error": {"message": "stand-in failure mid-stream", "type": "server_error"}}
                )
                return
            sent += 1
            if index < partials:
                kind = "image_generation.partial_image"
                event = {"type": kind, "b64_json": _PIXEL, "partial_image_index": index}
            else:
                kind = "image_generation.completed"
                share = total // n + (total % n if image == n - 1 else 0)
                usage = _image_usage(p, share, p.input_tokens if image == 0 else 0)
                event = {"type": kind, "b64_json": _PIXEL, "usage": usage}
            yield _sse(event | shown, kind)


# -- Anthropic ---------------------------------------------------------------------------


def _anthropic_usage(p: _Plan, output_tokens: int) -> dict[str, Any]:
    r = p.reply
    uncached = max(
        0, p.input_tokens - r.cached_tokens - r.cache_write_tokens - r.cache_write_1h_tokens
    )
    return {
        "input_tokens": uncached,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": r.cached_tokens,
        "cache_creation_input_tokens": r.cache_write_tokens + r.cache_write_1h_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": r.cache_write_tokens,
            "ephemeral_1h_input_tokens": r.cache_write_1h_tokens,
        },
        **_tier(p, "speed"),
        **({"server_tool_use": {"web_search_requests": r.web_searches}} if r.web_searches else {}),
    }


def _message(p: _Plan) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if p.pieces:
        content.append({"type": "text", "text": p.text})
    for t in p.reply.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": f"toolu_{next(_ids)}",
                "name": t.name,
                "input": dict(t.arguments),
            }
        )
    return {
        "id": f"msg_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": p.model,
        "content": content,
        "stop_reason": _finish(p, "end_turn", "tool_use", "max_tokens"),
        "stop_sequence": None,
        "usage": _anthropic_usage(p, p.output_tokens),
    }


def _messages_stream(p: _Plan) -> Iterator[bytes]:
    start = _message(p)
    start.update(content=[], stop_reason=None, usage=_anthropic_usage(p, 1))
    yield _sse({"type": "message_start", "message": start}, "message_start")
    index = 0
    if p.pieces:
        yield _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        )
        for n, piece in enumerate(p.pieces):
            if n == p.reply.error_after:
                yield _sse(
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "stand-in failure"},
                    },
                    "error",
                )
                return
            yield _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
                "content_block_delta",
            )
        yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        index = 1
    for t in p.reply.tool_calls:
        yield _sse(
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {
                    "type": "tool_use",
                    "id": f"toolu_{next(_ids)}",
                    "name": t.name,
                    "input": {},
                },
            },
            "content_block_start",
        )
        yield _sse(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {
                    "type": "input_json_delta",
                    "partial_json": json.dumps(dict(t.arguments)),
                },
            },
            "content_block_delta",
        )
        yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        index += 1
    yield _sse(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": _finish(p, "end_turn", "tool_use", "max_tokens"),
                "stop_sequence": None,
            },
            "usage": {"output_tokens": p.output_tokens},
        },
        "message_delta",
    )
    yield _sse({"type": "message_stop"}, "message_stop")


# -- Google ------------------------------------------------------------------------------


def _gemini_usage(p: _Plan, output_tokens: int) -> dict[str, Any]:
    r = p.reply
    text_out = max(0, output_tokens - r.reasoning_tokens)
    usage: dict[str, Any] = {
        "promptTokenCount": p.input_tokens,
        "candidatesTokenCount": text_out,
        "totalTokenCount": p.input_tokens + output_tokens,
    }
    if r.cached_tokens:
        usage["cachedContentTokenCount"] = r.cached_tokens
    if r.reasoning_tokens:
        usage["thoughtsTokenCount"] = r.reasoning_tokens
    if r.image_output_tokens:
        image = min(r.image_output_tokens, text_out)
        usage["candidatesTokensDetails"] = [
            {"modality": "IMAGE", "tokenCount": image},
            {"modality": "TEXT", "tokenCount": text_out - image},
        ]
    return usage


def _gemini(
    p: _Plan, parts: list[dict[str, Any]], output_tokens: int, final: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if final:
        candidate["finishReason"] = p.reply.finish_reason or (
            "MAX_TOKENS" if p.truncated else "STOP"
        )
        if p.reply.web_searches:  # Grounding with Google Search: the queries it ran
            queries = [f"search {n}" for n in range(p.reply.web_searches)]
            candidate["groundingMetadata"] = {"webSearchQueries": queries}
    return {
        "candidates": [candidate],
        "usageMetadata": _gemini_usage(p, output_tokens),
        "modelVersion": p.model,
    }


def _gemini_parts(p: _Plan) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": p.text}] if p.pieces else []
    parts += [
        {"functionCall": {"name": t.name, "args": dict(t.arguments)}} for t in p.reply.tool_calls
    ]
    return parts


def _gemini_stream(p: _Plan) -> Iterator[bytes]:
    done = p.reply.reasoning_tokens
    for piece in p.pieces:
        done += 1
        yield _sse(_gemini(p, [{"text": piece}], done, final=False))
    calls = [
        {"functionCall": {"name": t.name, "args": dict(t.arguments)}} for t in p.reply.tool_calls
    ]
    yield _sse(_gemini(p, calls, p.output_tokens, final=True))


# -- server ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm and delayed ACKs
    # each keep-alive response would wait ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = raw.decode(errors="replace")
        recorded = RecordedRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        standin = self.server.standin
        standin._record(recorded)
        if self.command == "GET":
            if split.path.rstrip("/").endswith("/models"):
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "standin"}
                    for m in standin.models
                ]
                self._json(200, {"object": "list", "data": data})
            elif "/cachedContents/" in split.path:
                name = "cachedContents/" + split.path.rsplit("/", 1)[1]
                missing = {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}
                self._found(standin.caches.get(name), missing)
            elif split.path.endswith("/items") and "/conversations/" in split.path:
                conversation_id = split.path.rsplit("/", 2)[1]
                items = standin.conversations.get(conversation_id)
                page = None
                if items is not None:  # one page: the stand-in's conversations are short
                    page = {"object": "list", "data": items, "has_more": False}
                    page.update(first_id=items[0]["id"] if items else None)
                    page.update(last_id=items[-1]["id"] if items else None)
                self._found(page, _not_found("Conversation", conversation_id))
            elif "/responses/" in split.path:
                response_id = split.path.rstrip("/").rsplit("/", 1)[1]
                self._found(standin.responses.get(response_id), _not_found("Response", response_id))
            else:
                self._json(
                    404, {"error": {"message": f"no route {split.path}", "type": "not_found"}}
                )
            return
        if split.path.endswith("/messages/count_tokens"):
            self._json(
                200, {"input_tokens": max(1, len(json.dumps(body.get("messages", []))) // 4)}
            )
            return
        if split.path.endswith("/conversations") and isinstance(body, dict):
            conversation_id = f"conv_{next(_ids)}"
            with standin._lock:
                standin.conversations[conversation_id] = _items(body.get("items"))
            created: dict[str, Any] = {"id": conversation_id, "object": "conversation"}
            created.update(created_at=int(time.time()), metadata=body.get("metadata") or {})
            self._json(200, created)
            return
        if split.path.endswith("/cachedContents") and isinstance(body, dict):
            # Gemini explicit context caching: the cache and the tokens it holds.
            tokens = max(1, _count_text([body.get("contents"), body.get("systemInstruction")]))
            cache = {
                "name": f"cachedContents/c{next(_ids)}",
                "model": body.get("model", ""),
                "usageMetadata": {"totalTokenCount": tokens},
            }
            with standin._lock:
                standin.caches[cache["name"]] = cache
            self._json(200, cache)
            return
        reply = standin._next_reply(recorded)
        if reply.hang:
            standin._stopping.wait()
            return
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status >= 400:
            self._error(split.path, reply)
            return
        if not isinstance(body, dict):
            body = {}
        path = split.path
        model = str(body.get("model") or "")
        if ":" in path and "/models/" in path:
            model = path.rsplit("/models/", 1)[1].split(":", 1)[0]
        p = _plan(reply, body, model)
        streamed = bool(body.get("stream")) or path.endswith(":streamGenerateContent")
        if path.endswith("/chat/completions"):
            mistral = "mistral" in recorded.headers.get("user-agent", "").lower()
            if streamed:
                self._stream(_chat_stream(p, body, usage_in_last=mistral), reply)
            else:
                self._json(200, _chat(p))
        elif path.endswith("/completions"):
            if streamed:
                self._stream(_completion_stream(p, body), reply)
            else:
                self._json(200, _completion(p))
        elif path.endswith("/responses"):
            done = _response_obj(p)
            standin._keep_response(done)
            joined = body.get("conversation")
            if isinstance(joined, dict):
                joined = joined.get("id")
            with standin._lock:
                items = standin.conversations.get(joined) if isinstance(joined, str) else None
                if items is not None:  # the turn joins the conversation
                    items += _items(body.get("input")) + done["output"]
            if streamed:
                self._stream(_responses_stream(p, done), reply)
            else:
                self._json(200, done)
        elif path.endswith("/decisions"):
            gemini = "x-goog-api-key" in recorded.headers
            self._json(200, _gemini_decision(p, body) if gemini else _decision(p, body))
        elif path.endswith("/embeddings"):
            self._json(200, _embeddings(body, p))
        elif path.endswith("/images/generations"):
            if streamed:
                self._stream(_images_stream(body, p), reply)
            else:
                self._json(200, _images(body, p))
        elif path.endswith("/messages"):
            if streamed:
                self._stream(_messages_stream(p), reply)
            else:
                self._json(200, _message(p))
        elif path.endswith(":generateContent"):
            self._json(200, _gemini(p, _gemini_parts(p), p.output_tokens, final=True))
        elif path.endswith(":streamGenerateContent"):
            self._stream(_gemini_stream(p), reply)
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def _found(self, kept: Any, missing: dict[str, Any]) -> None:
        """``kept`` as the answer, or a 404 with ``missing`` as its error."""
        if kept is not None:
            self._json(200, kept)
        else:
            self._json(404, {"error": missing})

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, path: str, reply: Reply) -> None:
        if reply.error is not None:
            payload: Any = dict(reply.error)
        elif path.endswith("/messages"):
            payload = {
                "type": "error",
                "error": {"type": "api_error", "message": f"stand-in error {reply.status}"},
            }
        else:
            payload = {
                "error": {
                    "message": f"stand-in error {reply.status}",
                    "type": "server_error",
                    "code": reply.status,
                }
            }
        self._json(reply.status, payload)

    def _stream(self, events: Iterator[bytes], reply: Reply) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in events:
                if reply.chunk_delay:
                    time.sleep(reply.chunk_delay)
                    if self.server.standin._stopping.is_set():
                        return
                self.wfile.write(event)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.standin._cut_streams += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    standin: StandIn

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away (Ctrl-C, a reset keep-alive connection) is normal here;
        # socketserver would print a traceback for it on the terminal of whoever runs this.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StandIn:
    """The stand-in provider server. Start with ``with StandIn() as s:`` or ``s.start()``."""

    models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-0", "gemini-2.0-flash")

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cut_streams = 0
        self.default = Reply()
        """The reply to every request once the scripted ones are used up."""
        self.responder: Callable[[RecordedRequest], Reply] | None = None
        """If set, chooses the reply for each request not covered by ``script``."""
        self.requests: list[RecordedRequest] = []
        self.responses: dict[str, dict[str, Any]] = {}
        """The Responses API answers given, by id (``GET /v1/responses/{id}`` reads them)."""
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        """OpenAI conversations made, by id: their items (``GET .../conversations/{id}/items``)."""
        self.caches: dict[str, dict[str, Any]] = {}
        """Gemini context caches made, by name (``GET /v1beta/cachedContents/{id}``)."""

    # -- scripting ------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order (generation endpoints only)."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Forget recorded requests and queued replies; restore the default reply."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.responses.clear()
            self.caches.clear()
            self.conversations.clear()
        self.default = Reply()
        self.responder = None

    @property
    def last(self) -> RecordedRequest:
        """The most recent request."""
        return self.requests[-1]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _keep_response(self, response: dict[str, Any]) -> None:
        with self._lock:
            if len(self.responses) >= 10_000:  # a long demo or benchmark: the oldest go
                del self.responses[next(iter(self.responses))]
            self.responses[response["id"]] = response

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(request)
        return self.default

    # -- lifecycle ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the stand-in is not running; call start() or use `with`")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_url(self) -> str:
        return self.base_url

    @property
    def google_url(self) -> str:
        return self.base_url

    def start(self) -> StandIn:
        self._stopping.clear()
        self._httpd = _Server((self._host, self._port), _Handler)
        self._httpd.standin = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the kavach stand-in LLM provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    server = StandIn(args.host, args.port)
    server.default = Reply(output_tokens=args.output_tokens)
    server.start()
    print(
        f"stand-in provider listening on {server.base_url} (OpenAI: {server.openai_url})",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
