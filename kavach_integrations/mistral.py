"""Mistral (mistralai): how to read chat and embeddings requests, usage and stream events.

``guard.wrap(Mistral())`` guards ``chat.complete``/``complete_async``, ``chat.stream``/
``stream_async`` (and ``parse``, which calls them) and ``embeddings.create``/``create_async``.
Mistral's usage has the OpenAI chat shape; streamed usage rides on the finishing chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kavach.spec import CallSpec
from kavach.stream import Outcome
from kavach.usage import Usage
from kavach_integrations._provider import (
    Endpoint,
    attach_async,
    attach_sync,
    field,
    guard_method,
    set_max_tokens,
)
from kavach_integrations.openai import ChatMeter, chat_outcome

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


def _read(body: Mapping[str, Any]) -> CallSpec:
    messages = body.get("messages")
    if messages is not None:
        messages = [m if isinstance(m, Mapping) else _plain(m) for m in messages]
    max_tokens = body.get("max_tokens")
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        messages=messages,
        tools=body.get("tools"),
        max_output_tokens=max_tokens if isinstance(max_tokens, int) else None,
    )


class EventMeter(ChatMeter):
    """Mistral stream events wrap OpenAI-shaped chunks in ``.data``."""

    __slots__ = ()

    def feed(self, event: Any) -> bool:
        return super().feed(event.data)


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
EMBEDDINGS = Endpoint(
    operation="embeddings",
    read=_read_embeddings,
    outcome=lambda r: Outcome(
        Usage(input_tokens=field(field(r, "usage"), "prompt_tokens", 0)), field(r, "model")
    ),
)


def instrument(client: Any, guard: AgentKavach) -> None:
    chat, embeddings = client.chat, client.embeddings
    guard_method(client, chat, "complete", guard, CHAT)
    guard_method(client, chat, "complete_async", guard, CHAT, is_async=True)
    guard_method(
        client, chat, "stream", guard, CHAT, streamed=True, attach=attach_sync("generator")
    )
    guard_method(
        client,
        chat,
        "stream_async",
        guard,
        CHAT,
        streamed=True,
        is_async=True,
        attach=attach_async("generator"),
    )
    guard_method(client, embeddings, "create", guard, EMBEDDINGS)
    guard_method(client, embeddings, "create_async", guard, EMBEDDINGS, is_async=True)
