"""Mistral (mistralai): how to read chat, FIM and embeddings requests, usage and stream events.

``guard.wrap(Mistral())`` guards ``chat.complete``/``complete_async``, ``chat.stream``/
``stream_async`` (and ``parse``, which calls them), the same four methods of ``fim``
(fill-in-the-middle, Codestral), ``responses.create``/``create_async`` (the stateless
Responses API, streamed or not) and ``embeddings.create``/``create_async``. Mistral's usage
has the OpenAI chat shape, FIM's too; streamed usage rides on the finishing chunk. Responses
have the OpenAI Responses shape (``input``, ``instructions``, ``max_output_tokens``; usage
with ``input_tokens_details.cached_tokens``), read by the OpenAI module's functions.
Agents, conversations, OCR, classifiers, audio and realtime sessions, batch and fine-tuning
jobs, judges, search indexes, library documents and workflow runs stop with the agent but are
not counted (see ``AgentKavach.admit_unmetered``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kavach.spec import CallSpec
from kavach.stream import Outcome
from kavach.usage import Usage
from kavach_integrations._provider import (
    Endpoint,
    Unmetered,
    attach_async,
    attach_sync,
    field,
    guard_method,
    guard_unmetered_method,
    set_max_tokens,
)
from kavach_integrations.openai import (
    ChatMeter,
    ResponsesMeter,
    chat_outcome,
    read_response,
    response_outcome,
)

try:
    import mistralai  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from kavach.errors import MissingDependencyError

    raise MissingDependencyError("mistralai", "mistral") from exc

if TYPE_CHECKING:
    from kavach.client import AgentKavach

PROVIDER = "mistral"


def _plain(item: Any) -> Any:
    dump = getattr(item, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else item


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    max_tokens = body.get("max_tokens")
    return max_tokens if isinstance(max_tokens, int) else None  # not UNSET, not None


def _read(body: Mapping[str, Any]) -> CallSpec:
    messages = body.get("messages")
    if messages is not None:
        messages = [m if isinstance(m, Mapping) else _plain(m) for m in messages]
    n = body.get("n")  # each of n choices may run to max tokens, all billed; or UNSET
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        messages=messages,
        tools=body.get("tools"),
        max_output_tokens=_max_tokens(body),
        choices=n if type(n) is int and n > 1 else 1,
    )


def _read_fim(body: Mapping[str, Any]) -> CallSpec:
    # The model reads both sides of the gap: prompt and suffix are billed input.
    texts = [t for t in (body.get("prompt"), body.get("suffix")) if isinstance(t, str)]
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        prompt=texts,
        max_output_tokens=_max_tokens(body),
        operation="fim",
    )


def _has_text(content: list[Any]) -> bool:
    """Whether a delta's list of content chunks carries text: reasoning models (Magistral)
    stream their thinking as ``[{"type": "thinking", "thinking": [{"type": "text", ...}]}]``
    and their answer as text chunks, one token a delta, all billed as output."""
    for part in content:
        kind = field(part, "type")
        if kind == "text" and field(part, "text"):
            return True
        if kind == "thinking" and any(field(t, "text") for t in field(part, "thinking", ())):
            return True
    return False


class EventMeter(ChatMeter):
    """Mistral stream events wrap OpenAI-shaped chunks in ``.data``; a delta's content may
    be a list of chunks rather than a string."""

    __slots__ = ()

    def feed(self, event: Any) -> bool:
        chunk = event.data
        hidden = super().feed(chunk)
        choices = chunk.choices
        if choices:
            content = choices[0].delta.content
            if type(content) is list and _has_text(content):
                self.output_tokens += 1
        return hidden


def _read_embeddings(body: Mapping[str, Any]) -> CallSpec:
    source = body.get("inputs")
    prompt = source if isinstance(source, str) else "\n".join(map(str, source or ()))
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        prompt=prompt,
        max_output_tokens=0,
        operation="embeddings",
    )


CHAT = Endpoint(
    operation="chat",
    read=_read,
    outcome=chat_outcome,
    limit=set_max_tokens("max_tokens"),
    meter=lambda body: EventMeter({}),
)
FIM = Endpoint(
    operation="fim",
    read=_read_fim,
    outcome=chat_outcome,
    limit=set_max_tokens("max_tokens"),
    meter=lambda body: EventMeter({}),
)
EMBEDDINGS = Endpoint(
    operation="embeddings",
    read=_read_embeddings,
    outcome=lambda r: Outcome(
        Usage(input_tokens=field(field(r, "usage"), "prompt_tokens", 0)), field(r, "model")
    ),
)


def _read_responses(body: Mapping[str, Any]) -> CallSpec:
    # The SDK takes models or dicts and UNSET for what is not given: read plain values the way
    # OpenAI's Responses reader does (a string input is one user message).
    plain = {
        name: [_plain(item) for item in value] if isinstance(value, list | tuple) else value
        for name in ("model", "input", "instructions", "tools")
        if (value := body.get(name))  # UNSET and None are false
    }
    return dataclasses.replace(
        read_response(plain), provider=PROVIDER, max_output_tokens=_max_output_tokens(body)
    )


def _max_output_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_output_tokens")
    return value if isinstance(value, int) else None  # not UNSET, not None


def _limit_output(body: dict[str, Any], tokens: int) -> dict[str, Any]:
    current = _max_output_tokens(body)
    return {**body, "max_output_tokens": tokens if current is None else min(current, tokens)}


class ResponsesFrameMeter(ResponsesMeter):
    """Mistral wraps each Responses event in a frame's ``.data``. Unlike OpenAI it streams
    the reasoning text, billed as output, so its deltas count toward a cut; a final response
    without usage (UNSET) leaves the stream metered from its deltas, not settled at zero."""

    __slots__ = ()

    def feed(self, frame: Any) -> bool:
        event = frame.data
        kind = event.type
        if kind == "response.reasoning_text.delta":
            self.received = True
            self.count_one(event.delta)
            return False
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            if not field(event.response, "usage"):
                self.received = True
                self.model = field(event.response, "model")
                return False
        return super().feed(event)


RESPONSES = Endpoint(
    operation="chat",
    read=_read_responses,
    outcome=response_outcome,
    limit=_limit_output,
    meter=ResponsesFrameMeter,
)


def _asks_to_stream(kwargs: Mapping[str, Any]) -> bool:
    return kwargs.get("stream") is True


def _guard_completions(client: Any, owner: Any, guard: AgentKavach, endpoint: Endpoint) -> None:
    """``complete``, ``complete_async``, ``stream`` and ``stream_async`` of chat or FIM."""
    guard_method(client, owner, "complete", guard, endpoint)
    guard_method(client, owner, "complete_async", guard, endpoint, is_async=True)
    guard_method(
        client, owner, "stream", guard, endpoint, streamed=True, attach=attach_sync("generator")
    )
    guard_method(
        client,
        owner,
        "stream_async",
        guard,
        endpoint,
        streamed=True,
        is_async=True,
        attach=attach_async("generator"),
    )


# Paid, but not readable as a chat request with a known model (agents, conversations: the
# model is the agent's) or priced per page, minute or job rather than by reported usage.
_ASYNC_TWINS = ("", "_async")
_UNMETERED = {
    ("agents",): (("complete", "stream"), "agent_completion"),
    ("beta", "conversations"): (
        ("start", "append", "restart", "start_stream", "append_stream", "restart_stream")
        + ("run", "run_stream"),  # run_async and run_stream_async: async only
        "conversation",
    ),
    ("ocr",): (("process",), "ocr"),
    ("classifiers",): (
        ("moderate", "moderate_chat", "classify", "classify_chat"),
        "classification",
    ),
    ("audio", "transcriptions"): (("complete", "stream"), "transcription"),
    ("audio", "speech"): (("complete",), "speech"),
    ("batch", "jobs"): (("create",), "batch"),
    # (mistralai 1.x: later SDKs have no fine_tuning; start runs a job created unstarted)
    ("fine_tuning", "jobs"): (("create", "start"), "fine_tuning"),
    # Runs a judge model, embeds, processes documents ("billed again" on reprocess), opens a
    # realtime audio session or runs a workflow's agents: billed, but not by a usage the
    # request or response carries.
    # (mistralai 3.7 and earlier: 3.8 removed both judging methods)
    ("beta", "observability", "judges"): (("judge_conversation",), "judging"),
    ("beta", "observability", "datasets", "records"): (("judge",), "judging"),
    ("beta", "context", "search_indexes"): (
        ("search", "ingest_documents", "generate_index_summary"),
        "search_index",
    ),
    ("beta", "rag", "managed_indexes"): (("search", "ingest_documents"), "search_index"),  # 2.x
    ("beta", "libraries", "documents"): (("upload", "reprocess"), "document_processing"),
    ("audio", "sessions"): (("create",), "realtime_session"),
    ("realtime", "sessions"): (("create",), "realtime_session"),
    ("workflows",): (("execute_workflow", "execute_workflow_registration"), "workflow"),
    ("workflows", "schedules"): (("trigger_schedule",), "workflow"),
    ("workflows", "executions"): (("reset_workflow",), "workflow"),
}


def _resource(client: Any, path: tuple[str, ...]) -> Any:
    owner = client
    for name in path:
        try:
            owner = getattr(owner, name)
        except AttributeError:  # not in this SDK version
            return None
    return owner


def instrument(client: Any, guard: AgentKavach) -> None:
    for path, (methods, operation) in _UNMETERED.items():
        owner = _resource(client, path)
        if owner is not None:
            unmetered = Unmetered(PROVIDER, operation)
            for name in methods:
                for twin in _ASYNC_TWINS:
                    guard_unmetered_method(client, owner, name + twin, guard, unmetered)
    responses = _resource(client, ("responses",))
    if responses is not None:
        guard_method(
            client,
            responses,
            "create",
            guard,
            RESPONSES,
            streamed=_asks_to_stream,
            attach=attach_sync("generator"),
        )
        guard_method(
            client,
            responses,
            "create_async",
            guard,
            RESPONSES,
            streamed=_asks_to_stream,
            is_async=True,
            attach=attach_async("generator"),
        )
    embeddings = client.embeddings
    _guard_completions(client, client.chat, guard, CHAT)
    _guard_completions(client, client.fim, guard, FIM)
    guard_method(client, embeddings, "create", guard, EMBEDDINGS)
    guard_method(client, embeddings, "create_async", guard, EMBEDDINGS, is_async=True)
