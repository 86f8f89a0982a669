"""google-genai's automatic continuation resumes a stream from its checkpoints in new
requests: the guard's cut and refusals must stop it, not be resumed or retried."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types

from kavach import AgentKavach, Budget, BudgetExceededError

from .conftest import Events

MODEL = "gemini-2.0-flash"  # $0.10 input, $0.40 output per million tokens
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)


class CheckpointedProvider:
    """``streamGenerateContent`` answering ``chunks`` chunks of ten tokens each, every one with
    a checkpoint (a ``continuationToken``), and at the end ``finish`` with a last token."""

    def __init__(self, chunks: int, finish: str) -> None:
        self.chunks = chunks
        self.finish = finish
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        frames = []
        for i in range(self.chunks):
            token = base64.b64encode(f"checkpoint-{len(self.requests)}-{i}".encode()).decode()
            candidate: dict[str, Any] = {
                "content": {"role": "model", "parts": [{"text": "word " * 10}]},
                "index": 0,
                "continuationToken": token,
            }
            if i == self.chunks - 1:
                candidate["finishReason"] = self.finish
            usage = {"promptTokenCount": 10, "candidatesTokenCount": 10 * (i + 1)}
            chunk = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": MODEL}
            frames.append(f"data: {json.dumps(chunk)}\r\n\r\n")
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content="".join(frames)
        )


_open: list[genai.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client(provider: CheckpointedProvider, guard: AgentKavach) -> genai.Client:
    transport = httpx.MockTransport(provider.handle)
    options = types.HttpOptions(
        base_url="http://127.0.0.1:9/",
        retry_options=None,
        httpx_client=httpx.Client(transport=transport),
        httpx_async_client=httpx.AsyncClient(transport=transport),
    )
    c = guard.wrap(genai.Client(api_key="k", http_options=options))
    _open.append(c)
    return c


async def read(c: genai.Client, is_async: bool, config: Any = None) -> int:
    """Read a stream to its end (or its error); returns how many chunks arrived."""
    seen = 0
    if is_async:
        stream = await c.aio.models.generate_content_stream(
            model=MODEL, contents="Write a long story.", config=config
        )
        try:
            async for _ in stream:
                seen += 1
        finally:
            await stream.aclose()
    else:
        for _ in c.models.generate_content_stream(
            model=MODEL, contents="Write a long story.", config=config
        ):
            seen += 1
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_cut_stream_is_not_resumed_from_its_checkpoint(
    make_guard: Any, events: Events, is_async: bool
) -> None:
    # No max_output_tokens: the guard holds 300 and cuts the stream past them. The SDK caught
    # the cut's BudgetExceededError and resumed from the last checkpoint, in a new request,
    # cut again, and so on: a $1 budget was spent to the last cent in 8,000 requests.
    guard = make_guard(budget=Budget.daily(1), default_max_output_tokens=300)
    provider = CheckpointedProvider(chunks=200, finish="STOP")
    c = client(provider, guard)
    with pytest.raises(BudgetExceededError):
        await read(c, is_async)
    assert len(provider.requests) == 1
    [event] = events.calls
    assert event.status == "cut" and 300 < event.usage.output_tokens <= 2 * 300 + 16
    assert guard.status()[0].spent == event.cost_nanos
    assert guard.ledger.open_holds == 0
    if is_async:
        await c.aio.aclose()


@pytest.mark.skipif(
    not hasattr(types.FinishReason, "CONTINUATION"),
    reason=f"google-genai {genai.__version__} does not continue a stream on its own",
)
@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [False, True])
async def test_a_refused_continuation_is_raised_once_and_not_retried(
    make_guard: Any, events: Events, is_async: bool
) -> None:
    # The first request (900 of 1,000 output tokens, $0.00036) ends with CONTINUATION; the
    # next one's worst case ($0.0004) is more than the $0.00014 left, so it is refused. The
    # SDK retried the refusal three times before it gave up.
    guard = make_guard(budget=Budget.daily(0.0005))
    provider = CheckpointedProvider(chunks=90, finish="CONTINUATION")
    c = client(provider, guard)
    config = types.GenerateContentConfig(max_output_tokens=1000)
    with pytest.raises(BudgetExceededError):
        await read(c, is_async, config)
    assert len(provider.requests) == 1
    assert [e.status for e in events.calls] == ["ok", "refused"]
    assert guard.status()[0].spent == events.calls[0].cost_nanos == 10 * 100 + 900 * 400
    assert guard.ledger.open_holds == 0
    if is_async:
        await c.aio.aclose()
