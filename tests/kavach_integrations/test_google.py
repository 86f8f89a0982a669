"""The real google-genai SDK, guarded, against the loopback stand-in."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from kavach import AgentKavach, AgentKilledError, Budget, BudgetExceededError, KavachError, Usage
from kavach._devtools.standin import RecordedRequest, Reply, StandIn, ToolCall
from kavach.tokens import estimate_input_tokens
from kavach_integrations import google as google_adapter

from .conftest import Events, guarded_gemini

MODEL = "gemini-2.0-flash"
IMAGE_MODEL = "gemini-2.5-flash-image"
# google-genai's async client subclasses aiohttp's ClientSession, which aiohttp warns about.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)


_open: list[genai.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client(server: StandIn, guard: AgentKavach) -> genai.Client:
    return guarded_gemini(server, guard)  # type: ignore[no-any-return]


def test_generate_content_settles_usage_with_thoughts_and_cache(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(
        Reply(input_tokens=1000, cached_tokens=600, output_tokens=50, reasoning_tokens=20)
    )
    c = client(server, guard)  # keep the Client: google-genai closes its transport on GC
    response = c.models.generate_content(model=MODEL, contents="hi")
    assert isinstance(response, types.GenerateContentResponse)
    [event] = events.settled
    assert event.usage == Usage(
        input_tokens=1000, output_tokens=50, cache_read_tokens=600, reasoning_tokens=20
    )
    assert guard.status()[0].spent == event.cost_nanos > 0


def _image_then_text_stream(request: httpx.Request) -> httpx.Response:
    # Gemini reports usage on every chunk: the image arrives first, with its 1290 tokens.
    usage = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 1290,
        "totalTokenCount": 1300,
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
    }
    image = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    chunks = [
        {"candidates": [{"content": {"role": "model", "parts": [image]}, "index": 0}]},
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "Here it is."}]},
                    "index": 0,
                    "finishReason": "STOP",
                }
            ],
        },
    ]
    body = "".join(
        f"data: {json.dumps({**chunk, 'usageMetadata': usage, 'modelVersion': IMAGE_MODEL})}\r\n\r\n"
        for chunk in chunks
    )
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def test_a_stream_stopped_after_its_image_is_charged_at_the_image_rate(
    make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    options = types.HttpOptions(
        base_url="http://127.0.0.1:9/",
        retry_options=None,
        httpx_client=httpx.Client(transport=httpx.MockTransport(_image_then_text_stream)),
    )
    c = guard.wrap(genai.Client(api_key="k", http_options=options))
    _open.append(c)
    stream = c.models.generate_content_stream(model=IMAGE_MODEL, contents="draw a cat")
    for _chunk in stream:
        break  # the image is here; the trailing text is not wanted
    stream.close()
    [event] = events.settled
    assert event.status == "cancelled"
    assert event.usage.output_image_tokens == 1290
    # Input at $0.30 and the image at $30 per MTok: the image is not priced as text.
    assert event.cost_nanos == 10 * 300 + 1290 * 30_000


def test_strict_mode_sets_generation_config_max_output_tokens(
    server: StandIn, make_guard: Any
) -> None:
    guard = make_guard(budget=Budget.daily(0.0002), mode="strict")
    c = client(server, guard)
    c.models.generate_content(model=MODEL, contents="hi")
    assert 16 <= server.last.body["generationConfig"]["maxOutputTokens"] < 4096
    c.models.generate_content(
        model=MODEL, contents="hi", config=types.GenerateContentConfig(max_output_tokens=20)
    )
    assert server.last.body["generationConfig"]["maxOutputTokens"] == 20
    loose = client(server, make_guard(agent_name="loose", budget=Budget.daily(1)))
    loose.models.generate_content(model=MODEL, contents="hi")
    assert "generationConfig" not in server.last.body


def test_refusal_and_provider_error(server: StandIn, make_guard: Any, events: Events) -> None:
    c = client(server, make_guard(budget=Budget.daily(0.0000001)))
    with pytest.raises(BudgetExceededError):
        c.models.generate_content(model=MODEL, contents="hi")
    assert server.requests == []
    c = client(server, make_guard(agent_name="b", budget=Budget.daily(1)))
    server.script(Reply(status=400))
    with pytest.raises(errors.ClientError):
        c.models.generate_content(model=MODEL, contents="hi")
    assert [e.status for e in events.calls] == ["refused", "error"]


def test_stream_records_function_calls_and_is_cut(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(tool_calls=[ToolCall("get_weather", {"city": "Pune"})]))
    c = client(server, guard)
    chunks = list(c.models.generate_content_stream(model=MODEL, contents="hi"))
    assert len(chunks) == 7
    assert events.settled[-1].tool_calls == ('get_weather({"city":"Pune"})',)
    assert events.settled[-1].status == "ok"

    strict = make_guard(agent_name="s", budget=Budget.daily(0.0001), mode="strict")
    server.default = Reply(text="go", output_tokens=3000, honor_max_tokens=False)
    seen = 0
    c = client(server, strict)
    with pytest.raises(BudgetExceededError):
        for _ in c.models.generate_content_stream(model=MODEL, contents="hi"):
            seen += 1
    assert events.settled[-1].status == "cut"
    granted = server.last.body["generationConfig"]["maxOutputTokens"]
    assert granted < seen <= 2 * granted + 16  # text estimates get a margin
    assert strict.ledger.open_holds == 0


def test_dropped_stream_settles_once(server: StandIn, make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    stream = c.models.generate_content_stream(model=MODEL, contents="hi")
    next(stream)
    del stream
    gc.collect()
    assert [e.status for e in events.calls] == ["cancelled"]


@pytest.mark.anyio
async def test_an_async_stream_stopped_and_closed_settles_at_once(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # A budget that holds one call's worst case at a time: the next call is admitted only if
    # the stopped stream gave its hold back when it was closed.
    guard = make_guard(budget=Budget.daily(0.0007))
    server.default = Reply(output_tokens=50)
    c = client(server, guard).aio
    config = {"max_output_tokens": 1000}
    stream = await c.models.generate_content_stream(model=MODEL, contents="hi", config=config)
    async for _ in stream:
        break
    await stream.aclose()
    assert guard.ledger.open_holds == 0
    [event] = events.calls
    assert event.status == "cancelled" and guard.status()[0].spent == event.cost_nanos > 0

    await c.models.generate_content(model=MODEL, contents="hi", config=config)
    stream = await c.models.generate_content_stream(model=MODEL, contents="hi", config=config)
    async for _ in stream:
        pass
    await stream.aclose()
    gc.collect()
    await asyncio.sleep(0)  # the loop's finalizers have run: nothing settles twice
    assert [e.status for e in events.calls] == ["cancelled", "ok", "ok"]
    assert guard.status()[0].spent == sum(e.cost_nanos for e in events.calls)
    assert guard.ledger.open_holds == 0
    await c.aclose()


@pytest.mark.anyio
async def test_a_stream_dropped_unread_is_not_charged(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # google-genai sends a stream's request on its first read: one never read cost nothing.
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    sent = len(server.requests)
    stream = c.models.generate_content_stream(model=MODEL, contents="word " * 5000)
    astream = await c.aio.models.generate_content_stream(model=MODEL, contents="more " * 5000)
    del stream, astream
    gc.collect()
    assert len(server.requests) == sent
    assert events.calls == [] and guard.status()[0].spent == 0
    assert guard.ledger.open_holds == 0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["strict", "reserve"])
async def test_200_concurrent_calls_never_pass_the_budget(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    limit = 0.001
    guard = make_guard(budget=Budget.daily(limit), mode=mode, default_max_output_tokens=300)
    server.default = Reply(output_tokens=300, input_tokens=2)
    sync = client(server, guard)
    c = sync.aio
    config = {} if mode == "strict" else {"config": {"max_output_tokens": 300}}

    async def call() -> Any:
        return await c.models.generate_content(model=MODEL, contents="hi", **config)

    results = await asyncio.gather(*(call() for _ in range(200)), return_exceptions=True)
    assert [
        r for r in results if not isinstance(r, types.GenerateContentResponse | KavachError)
    ] == []
    admitted = sum(isinstance(r, types.GenerateContentResponse) for r in results)
    total = guard.status()[0].spent
    print(f"\ngoogle {mode}: admitted {admitted}/200, spent ${total / 1e9:.6f} of ${limit}")
    assert 0 < admitted < 200
    assert total <= Budget.daily(limit).limit and guard.ledger.open_holds == 0
    await c.aclose()


# -- embed_content, against an httpx mock transport (the stand-in has no embeddings route) --

EMBED_MODEL = "gemini-embedding-001"  # genai-prices: $0.15 per million input tokens


class EmbedProvider:
    """The Gemini API's ``batchEmbedContents``: records requests, answers with ``reply``."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.status = 200
        self.usage: dict[str, int] | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.status != 200:
            error = {"code": self.status, "message": "bad request", "status": "INVALID_ARGUMENT"}
            return httpx.Response(self.status, json={"error": error})
        n = len(json.loads(request.content)["requests"])
        body: dict[str, Any] = {"embeddings": [{"values": [0.1, 0.2, 0.3]}] * n}
        if self.usage is not None:
            body["usageMetadata"] = self.usage
        return httpx.Response(200, json=body)

    def client(self, guard: AgentKavach) -> genai.Client:
        transport = httpx.MockTransport(self.handle)
        options = types.HttpOptions(
            base_url="http://127.0.0.1:9/",
            retry_options=None,
            httpx_client=httpx.Client(transport=transport),
            httpx_async_client=httpx.AsyncClient(transport=transport),
        )
        c = guard.wrap(genai.Client(api_key="k", http_options=options))
        _open.append(c)
        return c


@pytest.fixture
def embedder() -> EmbedProvider:
    return EmbedProvider()


def test_an_image_model_is_held_and_charged_at_its_image_rate(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # Gemini 2.5 Flash Image bills the images it makes at $30/MTok, twelve times its text
    # rate: one 1024x1024 image (1290 tokens) is $0.039. A $0.05 budget pays for one image.
    # Held and charged at the text rate, it let through fifteen.
    guard = make_guard(budget=Budget.daily(0.05))
    server.default = Reply(text="Here it is.", output_tokens=1300, image_output_tokens=1290)
    c = client(server, guard)
    config = types.GenerateContentConfig(max_output_tokens=1300)
    made = 0
    with pytest.raises(BudgetExceededError):
        for _ in range(20):
            c.models.generate_content(model=IMAGE_MODEL, contents="a cat", config=config)
            made += 1
    assert made == 1
    [event] = events.settled
    assert event.usage.output_image_tokens == 1290
    input_tokens = event.usage.input_tokens
    # Input at $0.30, the image at $30 and ten text tokens at $2.50 per MTok, in nano-dollars.
    assert event.cost_nanos == input_tokens * 300 + 1290 * 30_000 + 10 * 2_500
    assert guard.status()[0].spent == event.cost_nanos <= 50_000_000
    # Asking for a text reply holds the text rate: text calls still fit in what is left.
    text_only = types.GenerateContentConfig(max_output_tokens=1300, response_modalities=["TEXT"])
    server.default = Reply(text="A cat.", output_tokens=3)
    c.models.generate_content(model=IMAGE_MODEL, contents="describe a cat", config=text_only)
    assert events.settled[-1].status == "ok"


reports_embedding_usage = pytest.mark.skipif(
    "usage_metadata" not in types.EmbedContentResponse.model_fields,
    reason=f"google-genai {genai.__version__} does not read the tokens an embedding reports",
)


@reports_embedding_usage
def test_embed_content_settles_the_reported_tokens(
    embedder: EmbedProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    embedder.usage = {"promptTokenCount": 1000, "totalTokenCount": 1000}
    c = embedder.client(guard)
    response = c.models.embed_content(model=EMBED_MODEL, contents=["What is your name?", "Hi"])
    assert isinstance(response, types.EmbedContentResponse) and len(response.embeddings or ()) == 2
    [event] = events.settled
    assert (event.operation, event.status, event.usage) == (
        "embeddings",
        "ok",
        Usage(input_tokens=1000),
    )
    assert guard.status()[0].spent == event.cost_nanos == 150_000  # 1000 x $0.15/M
    assert guard.ledger.open_holds == 0


def test_embed_content_without_usage_settles_at_the_reserved_estimate(
    embedder: EmbedProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    text = "the quick brown fox jumps over the lazy dog " * 200
    embedder.client(guard).models.embed_content(model=EMBED_MODEL, contents=text)
    [event] = events.settled
    estimate = estimate_input_tokens("google", EMBED_MODEL, prompt=text)
    assert estimate >= 1800  # at least the ~1,800 tokens the text has: never billed as free
    assert event.usage == Usage(input_tokens=estimate)
    assert guard.status()[0].spent == event.cost_nanos > 0


def test_embed_content_refused_before_any_request_and_error_releases(
    embedder: EmbedProvider, make_guard: Any, events: Events
) -> None:
    # $0.0000001 is less than one input token costs ($0.00000015).
    c = embedder.client(make_guard(budget=Budget.daily(0.0000001)))
    with pytest.raises(BudgetExceededError):
        c.models.embed_content(model=EMBED_MODEL, contents="hi")
    assert embedder.requests == []

    guard = make_guard(agent_name="b", budget=Budget.daily(1))
    embedder.status = 400
    with pytest.raises(errors.ClientError):
        embedder.client(guard).models.embed_content(model=EMBED_MODEL, contents="hi")
    assert len(embedder.requests) == 1
    assert [e.status for e in events.calls] == ["refused", "error"]
    [status] = guard.status()
    assert (status.spent, status.reserved, guard.ledger.open_holds) == (0, 0, 0)


@reports_embedding_usage
@pytest.mark.anyio
async def test_async_embed_content_is_guarded(
    embedder: EmbedProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    embedder.usage = {"promptTokenCount": 40}
    c = embedder.client(guard).aio
    await c.models.embed_content(model=f"models/{EMBED_MODEL}", contents=["a", "b"])
    [event] = events.settled
    assert (event.operation, event.usage) == ("embeddings", Usage(input_tokens=40))
    assert guard.status()[0].spent == event.cost_nanos == 6_000  # 40 x $0.15/M

    c = embedder.client(make_guard(agent_name="tiny", budget=Budget.daily(0.0000001))).aio
    with pytest.raises(BudgetExceededError):
        await c.models.embed_content(model=EMBED_MODEL, contents="hi")
    assert len(embedder.requests) == 1


# -- automatic function calling: one generate_content, several billed requests --------------


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


AFC = types.GenerateContentConfig(tools=[get_weather], max_output_tokens=100)


def script_afc(server: StandIn) -> None:
    server.script(
        Reply(
            input_tokens=3000,
            output_tokens=40,
            tool_calls=[ToolCall("get_weather", {"city": "Paris"})],
        ),
        Reply(input_tokens=3100, output_tokens=30, text="It is sunny."),
    )


def assert_each_request_settled(server: StandIn, guard: AgentKavach, events: Events) -> None:
    assert len(server.requests) == 2
    assert [(e.status, e.usage.input_tokens, e.usage.output_tokens) for e in events.calls] == [
        ("ok", 3000, 40),
        ("ok", 3100, 30),
    ]
    assert events.calls[0].tool_calls == ('get_weather({"city":"Paris"})',)
    # Gemini 2.0 Flash: $0.10 input, $0.40 output per million tokens.
    assert guard.status()[0].spent == 6100 * 100 + 70 * 400
    assert guard.ledger.open_holds == 0


@pytest.mark.parametrize("streamed", [False, True])
def test_automatic_function_calling_settles_every_request(
    server: StandIn, make_guard: Any, events: Events, streamed: bool
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    script_afc(server)
    c = client(server, guard)
    if streamed:
        chunks = list(
            c.models.generate_content_stream(model=MODEL, contents="Weather in Paris?", config=AFC)
        )
        assert "".join(chunk.text or "" for chunk in chunks).endswith("It is sunny.")
    else:
        response = c.models.generate_content(model=MODEL, contents="Weather in Paris?", config=AFC)
        assert (response.text or "").endswith("It is sunny.")
    assert_each_request_settled(server, guard, events)


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [False, True])
async def test_async_automatic_function_calling_settles_every_request(
    server: StandIn, make_guard: Any, events: Events, streamed: bool
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    script_afc(server)
    c = client(server, guard).aio
    if streamed:
        stream = await c.models.generate_content_stream(
            model=MODEL, contents="Weather in Paris?", config=AFC
        )
        assert "".join([chunk.text or "" async for chunk in stream]).endswith("It is sunny.")
    else:
        response = await c.models.generate_content(
            model=MODEL, contents="Weather in Paris?", config=AFC
        )
        assert (response.text or "").endswith("It is sunny.")
    assert_each_request_settled(server, guard, events)
    await c.aclose()


def test_budget_stops_automatic_function_calling_between_requests(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The first request spends $0.000316 of $0.00035; the second one's 100 output tokens
    # alone hold $0.00004, more than is left, so it is refused before it is sent.
    guard = make_guard(budget=Budget.daily(0.00035))
    script_afc(server)
    c = client(server, guard)
    with pytest.raises(BudgetExceededError):
        c.models.generate_content(model=MODEL, contents="Weather in Paris?", config=AFC)
    assert len(server.requests) == 1
    assert [e.status for e in events.calls] == ["ok", "refused"]
    assert guard.status()[0].spent == 3000 * 100 + 40 * 400
    assert guard.ledger.open_holds == 0


def _every_candidate_at_its_limit(request: RecordedRequest) -> Reply:
    # The stand-in sends one candidate; candidatesTokenCount sums over all of them.
    config = request.body.get("generationConfig") or {}
    limit = config.get("maxOutputTokens", 8192)
    return Reply(
        output_tokens=config.get("candidateCount", 1) * limit,
        input_tokens=10,
        honor_max_tokens=False,
    )


def test_strict_mode_sends_max_output_tokens_per_candidate_and_stays_in_budget(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    budget = Budget.daily(0.001)
    guard = make_guard(budget=budget, mode="strict")
    server.responder = _every_candidate_at_its_limit
    c = client(server, guard)
    c.models.generate_content(model=MODEL, contents="hi", config={"candidate_count": 4})
    per_candidate = server.last.body["generationConfig"]["maxOutputTokens"]
    # $0.001 pays for ~2,500 output tokens at $0.40/M: about 625 for each of 4 candidates.
    assert 600 <= per_candidate <= 625
    assert events.settled[-1].usage.output_tokens == 4 * per_candidate
    assert 0 < guard.status()[0].spent <= budget.limit


def test_reserve_mode_holds_max_output_tokens_for_every_candidate(
    server: StandIn, make_guard: Any
) -> None:
    budget = Budget.daily(0.001)
    guard = make_guard(budget=budget, mode="reserve")
    server.responder = _every_candidate_at_its_limit
    c = client(server, guard)
    config = types.GenerateContentConfig(candidate_count=4, max_output_tokens=1000)
    with pytest.raises(BudgetExceededError):  # 4 x 1,000 tokens: $0.0016 at $0.40/M
        c.models.generate_content(model=MODEL, contents="hi", config=config)
    assert server.requests == []
    config = types.GenerateContentConfig(candidate_count=4, max_output_tokens=500)
    c.models.generate_content(model=MODEL, contents="hi", config=config)
    assert 0 < guard.status()[0].spent <= budget.limit


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_request_naming_a_context_cache_is_held_for_its_tokens(
    server: StandIn, make_guard: Any, is_async: bool
) -> None:
    # gemini-2.5-flash input is $0.30 per million: a 10,000-token cache is $0.003 a call.
    guard = make_guard(budget=Budget.daily(0.002))
    c = client(server, guard)
    report = "x" * 40_000
    config = {"contents": [report], "system_instruction": "You answer questions on it."}

    async def acreate() -> Any:
        try:
            return await c.aio.caches.create(model="gemini-2.5-flash", config=config)
        finally:
            await c.aio.aclose()

    cache = (
        asyncio.run(acreate())
        if is_async
        else c.caches.create(model="gemini-2.5-flash", config=config)
    )
    assert cache.usage_metadata.total_token_count >= 10_000
    with pytest.raises(BudgetExceededError):
        c.models.generate_content(
            model="gemini-2.5-flash",
            contents="Hi",
            config={"cached_content": cache.name, "max_output_tokens": 100},
        )
    assert not [r for r in server.requests if r.path.endswith(":generateContent")]
    # Without the cache the same question fits.
    c.models.generate_content(
        model="gemini-2.5-flash", contents="Hi", config={"max_output_tokens": 100}
    )
    assert guard.ledger.open_holds == 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_context_cache_made_by_another_worker_is_looked_up_before_the_call_is_held(
    server: StandIn, make_guard: Any, is_async: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    maker = genai.Client(api_key="k", http_options={"base_url": server.google_url})
    _open.append(maker)
    config = {"contents": ["x" * 40_000], "system_instruction": "You answer questions on it."}
    cache = maker.caches.create(model="gemini-2.5-flash", config=config)
    monkeypatch.setattr(google_adapter, "_CACHED", {})  # this process never saw it made
    guard = make_guard(budget=Budget.daily(0.002))
    c = client(server, guard)
    request = {
        "model": "gemini-2.5-flash",
        "contents": "Hi",
        "config": {"cached_content": cache.name, "max_output_tokens": 100},
    }

    async def agenerate() -> Any:
        try:
            return await c.aio.models.generate_content(**request)
        finally:
            await c.aio.aclose()

    with pytest.raises(BudgetExceededError):
        asyncio.run(agenerate()) if is_async else c.models.generate_content(**request)
    [lookup] = server.requests[1:]  # the call itself was never sent
    assert lookup.method == "GET" and lookup.path.endswith(f"/{cache.name}")
    assert guard.ledger.open_holds == 0


@pytest.mark.skipif(
    not hasattr(genai.client.Client, "decisions"),
    reason=f"google-genai {genai.__version__} has no Decisions API",
)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_decisions_are_charged_held_and_stop_with_the_agent(
    server: StandIn, make_guard: Any, events: Events, is_async: bool
) -> None:
    # google-genai 3.x decisions.create bills tokens (usage in the Interactions form, thinking
    # apart); it went through unguarded: not counted, not refused over budget or stopped.
    question = {"is_spam": {"type": "noul", "instructions": "Is this spam? " * 50}}
    request: Any = {"model": "gemini-2.5-flash", "input": "Buy now!!!", "questions": question}
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)

    def decide(target: genai.Client) -> Any:
        if not is_async:
            return target.decisions.create(**request)

        async def adecide() -> Any:
            try:
                return await target.aio.decisions.create(**request)
            finally:
                await target.aio.aclose()

        return asyncio.run(adecide())

    server.script(Reply(input_tokens=300, output_tokens=32, reasoning_tokens=20))
    decide(c)
    [event] = events.settled
    assert (event.usage.input_tokens, event.usage.output_tokens) == (300, 32)
    assert event.usage.reasoning_tokens == 20
    price = guard.pricing.resolve("google", "gemini-2.5-flash")
    assert guard.status()[0].spent == event.cost_nanos == price.cost(event.usage) > 0
    assert event.reserved_nanos > price.cost(Usage(input_tokens=150))  # the questions count
    poor = make_guard(agent_name="poor", budget=Budget.daily(event.reserved_nanos / 2e9))
    with pytest.raises(BudgetExceededError):
        decide(client(server, poor))
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        decide(client(server, guard))
    assert len(server.requests) == 1
