"""Mistral reasoning models (Magistral) stream their deltas as lists of content chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

try:  # mistralai 2.0 and later
    from mistralai.client import Mistral
except ImportError:  # mistralai 1.x
    from mistralai import Mistral

from kavach import AgentKavach, Budget, BudgetExceededError

from .conftest import Events

MODEL = "magistral-medium-latest"  # genai-prices: $2 in, $5 out per million tokens
MSGS = [{"role": "user", "content": "Think it through."}]


class ReasoningProvider:
    """``POST /v1/chat/completions``, streamed: ``thinking`` deltas of one token each, then
    ``text`` deltas (as chunk lists and as strings), usage on the finishing chunk."""

    def __init__(self, thinking: int, text: int) -> None:
        self.thinking, self.text = thinking, text
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        head = {"id": "c-1", "object": "chat.completion.chunk", "model": MODEL, "created": 1}
        total = self.thinking + self.text
        frames = []
        for i in range(total):
            content: Any
            if i < self.thinking:
                content = [{"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]}]
            else:
                content = [{"type": "text", "text": "ok"}] if i % 2 else "ok"
            choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
            chunk: dict[str, Any] = {**head, "choices": [choice]}
            if i == total - 1:
                choice["finish_reason"] = "stop"
                chunk["usage"] = {
                    "prompt_tokens": 10,
                    "completion_tokens": total,
                    "total_tokens": 10 + total,
                }
            frames.append(f"data: {json.dumps(chunk)}\n\n")
        frames.append("data: [DONE]\n\n")
        return httpx2.Response(
            200, content="".join(frames).encode(), headers={"content-type": "text/event-stream"}
        )


_open: list[Mistral] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().__exit__(None, None, None)


def client(provider: ReasoningProvider, guard: AgentKavach) -> Mistral:
    transport = httpx2.MockTransport(provider.handle)
    c = guard.wrap(
        Mistral(
            api_key="k",
            server_url="http://127.0.0.1:9",
            client=httpx2.Client(transport=transport),
            async_client=httpx2.AsyncClient(transport=transport),
        )
    )
    _open.append(c)
    return c


def test_a_reasoning_stream_is_cut_at_its_reservation(make_guard: Any, events: Events) -> None:
    # No max_tokens: the guard holds 300 output tokens. The thinking deltas were not counted,
    # so the stream ran to its end, 1,000 tokens on a 300-token hold, never cut.
    guard = make_guard(budget=Budget.daily(1), default_max_output_tokens=300)
    provider = ReasoningProvider(thinking=800, text=200)
    seen = 0
    with pytest.raises(BudgetExceededError):
        for _ in client(provider, guard).chat.stream(model=MODEL, messages=MSGS):
            seen += 1
    assert seen == 300  # one token a delta: exactly the deltas the hold paid for
    [event] = events.calls
    # Settled at what arrived: the 300 paid for and the one that passed the hold.
    assert (event.status, event.usage.output_tokens) == ("cut", 301)
    assert guard.status()[0].spent == event.cost_nanos
    assert guard.ledger.open_holds == 0


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_reasoning_stream_stopped_early_is_charged_for_its_thinking(
    make_guard: Any, events: Events, is_async: bool
) -> None:
    # Closed after 200 thinking deltas, the stream was settled at 0 output tokens: input only.
    guard = make_guard(budget=Budget.daily(1))
    c = client(ReasoningProvider(thinking=800, text=200), guard)
    if is_async:
        stream = await c.chat.stream_async(model=MODEL, messages=MSGS, max_tokens=2000)
        async with stream:
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 200:
                    break
    else:
        with c.chat.stream(model=MODEL, messages=MSGS, max_tokens=2000) as sync_stream:
            for seen, _ in enumerate(sync_stream, 1):
                if seen == 200:
                    break
    [event] = events.calls
    assert (event.status, event.usage.output_tokens) == ("cancelled", 200)
    assert event.cost_nanos >= 200 * 5_000  # 200 output tokens at $5/M
    assert guard.status()[0].spent == event.cost_nanos
    if is_async:
        await c.__aexit__(None, None, None)


def test_a_reasoning_stream_read_to_its_end_settles_the_reported_usage(
    make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    provider = ReasoningProvider(thinking=30, text=10)
    chunks = list(client(provider, guard).chat.stream(model=MODEL, messages=MSGS))
    assert len(chunks) == 40
    [event] = events.calls
    assert (event.status, event.usage.input_tokens, event.usage.output_tokens) == ("ok", 10, 40)
    assert guard.status()[0].spent == event.cost_nanos == 10 * 2_000 + 40 * 5_000
