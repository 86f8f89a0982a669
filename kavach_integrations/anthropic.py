"""Anthropic: how to read Messages requests, usage and stream events.

``guard.wrap(Anthropic())`` / ``guard.wrap(AsyncAnthropic())`` guard ``messages`` (create,
stream, parse; ``beta.messages`` too), as do the SDK's Vertex AI and Bedrock clients (Bedrock
calls are priced as ``aws.bedrock``, by their Bedrock model ids). ``count_tokens`` passes
untouched; message batches, legacy text completions and Managed Agents runs (session
events, deployment runs) and dreams stop with the agent but are not counted (see
``AgentKavach.admit_unmetered``).
Anthropic reports cache reads and writes beside ``input_tokens``; they are added into it,
as ``kavach.usage.Usage`` (and genai-prices) count all input there.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kavach.errors import BudgetExceededError
from kavach.spec import CallSpec
from kavach.stream import Outcome
from kavach.usage import Usage
from kavach_integrations._provider import (
    Endpoint,
    TokenCounter,
    Unmetered,
    bound_web_searches,
    field,
    guard_request_method,
    price_variant,
    set_max_tokens,
    tool_signature,
    web_search_uses,
)

try:
    import anthropic  # noqa: F401  (the extra must be installed: its error names it)
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from kavach.errors import MissingDependencyError

    raise MissingDependencyError("anthropic", "anthropic") from exc

if TYPE_CHECKING:
    from kavach.client import AgentKavach

PROVIDER = "anthropic"


def message_usage(usage: Any) -> Usage:
    """Anthropic usage with cache reads and both cache-write lifetimes inside ``input_tokens``."""
    read = field(usage, "cache_read_input_tokens", 0)
    written = field(usage, "cache_creation_input_tokens", 0)
    creation = field(usage, "cache_creation")
    one_hour = field(creation, "ephemeral_1h_input_tokens", 0)
    five_min = field(creation, "ephemeral_5m_input_tokens", written - one_hour)
    return Usage(
        web_searches=field(field(usage, "server_tool_use"), "web_search_requests", 0),
        input_tokens=field(usage, "input_tokens", 0) + read + written,
        output_tokens=field(usage, "output_tokens", 0),
        cache_read_tokens=read,
        cache_write_tokens=max(0, five_min),
        cache_write_1h_tokens=one_hour,
        # fast mode (beta) is billed at a premium: the usage says which speed served it
        price_variant=price_variant("speed", field(usage, "speed")),
    )


def _marked(blocks: Any) -> bool:
    if not isinstance(blocks, list):
        return False
    for block in blocks:
        if isinstance(block, Mapping):
            if block.get("cache_control") is not None or _marked(block.get("content")):
                return True
    return False


def writes_cache(body: Mapping[str, Any]) -> bool:
    """The request has a ``cache_control`` breakpoint (top level, system, tools or messages)."""
    return (
        body.get("cache_control") is not None
        or _marked(body.get("system"))
        or _marked(body.get("tools"))
        or _marked(body.get("messages"))
    )


def _read(body: Mapping[str, Any]) -> CallSpec:
    return CallSpec(
        cache_writes=writes_cache(body),
        provider=PROVIDER,
        model=str(body.get("model", "")),
        messages=body.get("messages"),
        system=body.get("system"),
        tools=body.get("tools"),
        max_output_tokens=body.get("max_tokens"),
        # speed="fast" costs several times the standard price; standard is the default
        price_variant=price_variant("speed", body.get("speed")) or (),
        max_searches=web_search_uses(body.get("tools")),
    )


def _outcome(message: Any) -> Outcome:
    tool_calls = tuple(
        tool_signature(field(block, "name", ""), field(block, "input", {}))
        for block in field(message, "content", ())
        if field(block, "type") == "tool_use"
    )
    stop = field(message, "stop_reason")
    return Outcome(
        usage=message_usage(field(message, "usage")),
        response_model=field(message, "model"),
        finish_reasons=(str(stop),) if stop else (),
        tool_calls=tool_calls,
    )


# Usage counts a message_delta may restate (``cache_creation``: the 5-minute / 1-hour split).
_RESTATED = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation",
    "speed",
    "server_tool_use",
)


class MessageMeter(TokenCounter):
    """Raw message stream events: usage at ``message_start``, its final counts at
    ``message_delta``."""

    __slots__ = ("start",)

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        self.start: Any = None

    def feed(self, event: Any) -> bool:
        self.received = True
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            dtype = delta.type
            if dtype == "text_delta":
                self.count(delta.text)
            elif dtype == "input_json_delta":
                self.count(delta.partial_json)
                self.tool(event.index, None, delta.partial_json)
            elif dtype == "thinking_delta":
                self.count(delta.thinking)
        elif kind == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                self.tool(event.index, block.name, None)
        elif kind == "message_start":
            self.start = event.message.usage
            self.model = event.message.model
            self.usage = message_usage(self.start)
        elif kind == "message_delta":
            # Counts in message_delta are cumulative and final: server tools (web search) add
            # input after message_start. A count it restates replaces message_start's, one it
            # omits keeps it, as the SDK's own accumulator does.
            reported, start = event.usage, self.start
            usage = {name: field(reported, name, field(start, name)) for name in _RESTATED}
            usage["output_tokens"] = field(reported, "output_tokens", 0)
            self.usage = message_usage(usage)
            if event.delta.stop_reason:
                self.finish_reasons.append(str(event.delta.stop_reason))
        elif kind == "message_stop":
            self.complete = self.usage is not None
        return False


# Anthropic's floor for extended thinking's budget_tokens, which must stay below max_tokens.
_MIN_THINKING_TOKENS = 1024
_set_max_tokens = set_max_tokens("max_tokens")


def _limit(body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Strict mode's max_tokens, with extended thinking's budget kept below it: the API
    refuses a request whose ``thinking.budget_tokens`` is not under ``max_tokens``. A web
    search tool without ``max_uses`` gets the searches it is held for."""
    body = bound_web_searches(_set_max_tokens(body, tokens))
    thinking = body.get("thinking")
    if not isinstance(thinking, Mapping) or thinking.get("type") != "enabled":
        return body
    budget, max_tokens = thinking.get("budget_tokens"), body["max_tokens"]
    if not isinstance(budget, int) or budget < max_tokens:
        return body
    if max_tokens - 1 < _MIN_THINKING_TOKENS:
        raise BudgetExceededError.for_one_call(
            f"{body.get('model', '')} thinking",
            used=0,
            paid=max_tokens,
            requested=_MIN_THINKING_TOKENS + 1,
            scope="this call",
            detail=(
                f"The budget left pays for {max_tokens:,} output tokens; extended thinking "
                f"needs at least {_MIN_THINKING_TOKENS + 1:,} (budget_tokens of "
                f"{_MIN_THINKING_TOKENS:,} and a reply). Raise the budget or call without "
                "thinking."
            ),
        )
    return {**body, "thinking": {**thinking, "budget_tokens": max_tokens - 1}}


MESSAGES = Endpoint(
    operation="chat",
    read=_read,
    outcome=_outcome,
    limit=_limit,
    meter=MessageMeter,
)


# Message batches are billed when they finish, at batch prices; legacy text completions
# report no usage. Both stop with the agent, and their cost is not counted.
_BATCHES = Unmetered(PROVIDER, "batch")
_COMPLETE = Unmetered(PROVIDER, "text_completion")
# Managed Agents (beta): events sent to a session, or a deployment run now, set Claude to
# work at Anthropic, billed there; no usage comes back on the call.
_AGENT_RUN = Unmetered(PROVIDER, "agent_run")
# Dreams (beta): a job in which a model reads past sessions and rewrites a memory store,
# billed at Anthropic when it runs; the call that starts it reports no usage.
_DREAM = Unmetered(PROVIDER, "dream")


def _read_bedrock(body: Mapping[str, Any]) -> CallSpec:
    return dataclasses.replace(_read(body), provider=BEDROCK)


# Claude on Amazon Bedrock (``AnthropicBedrock``): Bedrock model ids
# (``us.anthropic.claude-...-v1:0``, inference profile ARNs) at Bedrock's prices, which
# genai-prices lists under AWS (regional endpoints 10% above Anthropic's). Read as
# Anthropic's, every call was refused: no Anthropic price has such a name.
BEDROCK = "aws.bedrock"
BEDROCK_MESSAGES = dataclasses.replace(MESSAGES, read=_read_bedrock)


def endpoint_for(
    method: str, path: str, messages: Endpoint = MESSAGES
) -> Endpoint | Unmetered | None:
    if method.lower() != "post":
        return None
    if path.endswith("/messages"):
        return messages
    if path.endswith("/messages/batches"):
        return _BATCHES
    if path.endswith("/complete"):
        return _COMPLETE
    if (
        path.endswith("/v1/sessions")  # a session may start with initial events
        or (path.endswith("/events") and "/sessions/" in path)
        or (path.endswith(("/run", "/unpause")) and "/deployments/" in path)
    ):
        return _AGENT_RUN
    if path.endswith("/dreams"):
        return _DREAM
    return None


def instrument(client: Any, guard: AgentKavach) -> None:
    # AsyncAnthropicVertex and AsyncAnthropicBedrock are no AsyncAnthropic: the SDK's async
    # clients share only their base, whose request is a coroutine function.
    is_async = inspect.iscoroutinefunction(type(client).request)
    route = endpoint_for
    if any(kind.__name__ == "BaseBedrockClient" for kind in type(client).__mro__):
        route = functools.partial(endpoint_for, messages=BEDROCK_MESSAGES)
    guard_request_method(client, guard, route, is_async=is_async)
