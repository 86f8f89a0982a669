"""The real mistralai SDK, guarded, against the loopback stand-in."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import httpx2
import pytest

try:  # mistralai 2.0 and later
    from mistralai.client import Mistral, errors, models
    from mistralai.client.basesdk import BaseSDK
except ImportError:  # mistralai 1.x (the older-SDK stage of scripts/test.sh)
    from mistralai import Mistral, models
    from mistralai import models as errors
    from mistralai.basesdk import BaseSDK

from kavach import AgentKavach, AgentKilledError, Budget, BudgetExceededError, KavachError, Usage
from kavach._devtools.standin import RecordedRequest, Reply, StandIn

from .conftest import Events

MODEL = "mistral-small-latest"
MSGS = [{"role": "user", "content": "Say hello"}]


_open: list[Mistral] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().__exit__(None, None, None)


def client(server: StandIn, guard: AgentKavach) -> Mistral:
    c = guard.wrap(Mistral(api_key="k", server_url=server.base_url))
    _open.append(c)
    return c


def test_complete_settles_and_strict_sets_max_tokens(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.001), mode="strict")
    server.script(Reply(input_tokens=100, output_tokens=20))
    response = client(server, guard).chat.complete(model=MODEL, messages=MSGS)
    assert isinstance(response, models.ChatCompletionResponse)
    assert 16 <= server.last.body["max_tokens"] <= 4096
    assert events.settled[0].usage == Usage(input_tokens=100, output_tokens=20)
    assert guard.status()[0].spent == events.settled[0].cost_nanos


def test_refusal_before_request(server: StandIn, make_guard: Any) -> None:
    with pytest.raises(BudgetExceededError):
        client(server, make_guard(budget=Budget.daily(0.000001))).chat.complete(
            model=MODEL, messages=MSGS, max_tokens=1000
        )
    assert server.requests == []


def test_stream_usage_on_the_finishing_chunk_and_cut(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=40, output_tokens=6))
    with client(server, guard).chat.stream(model=MODEL, messages=MSGS) as stream:
        texts = [event.data.choices[0].delta.content for event in stream]
    assert (
        "".join(t for t in texts if isinstance(t, str))
        == "Hello from the kavach stand-in provider."
    )
    assert events.settled[-1].usage == Usage(input_tokens=40, output_tokens=6)
    assert events.settled[-1].status == "ok"

    strict = make_guard(agent_name="s", budget=Budget.daily(0.0001), mode="strict")
    server.default = Reply(text="go", output_tokens=3000, honor_max_tokens=False)
    with pytest.raises(BudgetExceededError):
        for _ in client(server, strict).chat.stream(model=MODEL, messages=MSGS):
            pass
    assert events.settled[-1].status == "cut" and strict.ledger.open_holds == 0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["strict", "reserve"])
async def test_200_concurrent_calls_never_pass_the_budget(
    server: StandIn, make_guard: Any, mode: str
) -> None:
    limit = 0.002
    guard = make_guard(budget=Budget.daily(limit), mode=mode, default_max_output_tokens=300)
    server.default = Reply(output_tokens=300, input_tokens=8)
    c = client(server, guard)
    extra = {} if mode == "strict" else {"max_tokens": 300}

    async def call() -> Any:
        return await c.chat.complete_async(model=MODEL, messages=MSGS, **extra)

    results = await asyncio.gather(*(call() for _ in range(200)), return_exceptions=True)
    assert all(isinstance(r, models.ChatCompletionResponse | KavachError) for r in results)
    admitted = sum(isinstance(r, models.ChatCompletionResponse) for r in results)
    total = guard.status()[0].spent
    print(f"\nmistral {mode}: admitted {admitted}/200, spent ${total / 1e9:.6f} of ${limit}")
    assert 0 < admitted < 200
    assert total <= Budget.daily(limit).limit and guard.ledger.open_holds == 0
    stream = await c.chat.stream_async(model=MODEL, messages=MSGS, max_tokens=5)
    async for _ in stream:
        pass
    await c.__aexit__(None, None, None)


# -- FIM (codestral), against an httpx2 mock transport (the stand-in has no FIM route) ------

FIM_MODEL = "codestral-latest"  # genai-prices: $0.30 in, $0.90 out per million tokens


class FimProvider:
    """``POST /v1/fim/completions``: records requests; answers with ``output_tokens`` tokens
    (capped at the request's ``max_tokens`` when ``honor_max_tokens``), streamed one a chunk."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.input_tokens = 100
        self.output_tokens = 20
        self.honor_max_tokens = True

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/fim/completions"
        body = json.loads(request.content)
        self.requests.append(body)
        if self.status != 200:
            return httpx2.Response(self.status, json={"message": "upstream failed"})
        n = self.output_tokens
        if self.honor_max_tokens and body.get("max_tokens") is not None:
            n = min(n, body["max_tokens"])
        usage = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": n,
            "total_tokens": self.input_tokens + n,
        }
        head = {"id": "fim-1", "object": "chat.completion", "model": body["model"], "created": 1}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "x" * n}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return httpx2.Response(200, json={**head, "usage": usage, "choices": [choice]})
        chunks = []
        for i in range(n):
            last = i == n - 1
            choice = {
                "index": 0,
                "delta": {"content": "x"},
                "finish_reason": "stop" if last else None,
            }
            chunk = {**head, "choices": [choice], **({"usage": usage} if last else {})}
            chunks.append(f"data: {json.dumps(chunk)}\n\n")
        chunks.append("data: [DONE]\n\n")
        return httpx2.Response(
            200, content="".join(chunks).encode(), headers={"content-type": "text/event-stream"}
        )

    def client(self, guard: AgentKavach) -> Mistral:
        transport = httpx2.MockTransport(self.handle)
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


@pytest.fixture
def fim() -> FimProvider:
    return FimProvider()


def test_fim_complete_settles_and_strict_sets_max_tokens(
    fim: FimProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.001), mode="strict")
    c = fim.client(guard)
    response = c.fim.complete(model=FIM_MODEL, prompt="def add(a, b):\n", suffix="\n    return s")
    assert isinstance(response, models.FIMCompletionResponse)
    assert 16 <= fim.requests[-1]["max_tokens"] <= 4096
    [event] = events.settled
    assert (event.operation, event.status) == ("fim", "ok")
    assert event.usage == Usage(input_tokens=100, output_tokens=20)
    assert guard.status()[0].spent == event.cost_nanos == 48_000  # 100 x $0.30/M + 20 x $0.90/M

    c.fim.complete(model=FIM_MODEL, prompt="def f(", max_tokens=5)  # a lower max_tokens stays
    assert fim.requests[-1]["max_tokens"] == 5
    loose = fim.client(make_guard(agent_name="loose", budget=Budget.daily(1)))
    loose.fim.complete(model=FIM_MODEL, prompt="def f(")
    assert "max_tokens" not in fim.requests[-1]


def test_fim_refused_before_any_request(fim: FimProvider, make_guard: Any) -> None:
    c = fim.client(make_guard(budget=Budget.daily(0.0001)))
    with pytest.raises(BudgetExceededError):
        c.fim.complete(model=FIM_MODEL, prompt="def f(", suffix="pass", max_tokens=1000)
    with pytest.raises(BudgetExceededError):
        c.fim.stream(model=FIM_MODEL, prompt="x = ", max_tokens=1000)
    # The suffix is input: a huge one alone is refused, whatever max_tokens says.
    with pytest.raises(BudgetExceededError):
        c.fim.complete(model=FIM_MODEL, prompt="", suffix="word " * 100_000, max_tokens=1)
    assert fim.requests == []


def test_fim_stream_is_metered_and_settles_once(
    fim: FimProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    fim.input_tokens, fim.output_tokens = 40, 6
    with fim.client(guard).fim.stream(model=FIM_MODEL, prompt="def f(", suffix="pass") as stream:
        texts = [event.data.choices[0].delta.content for event in stream]
    assert texts == ["x"] * 6
    [event] = events.settled
    assert (event.operation, event.status) == ("fim", "ok")
    assert event.usage == Usage(input_tokens=40, output_tokens=6)
    assert guard.status()[0].spent == event.cost_nanos and guard.ledger.open_holds == 0

    strict = make_guard(agent_name="s", budget=Budget.daily(0.0001), mode="strict")
    fim.output_tokens, fim.honor_max_tokens = 3000, False
    seen = 0
    with pytest.raises(BudgetExceededError):
        for _ in fim.client(strict).fim.stream(model=FIM_MODEL, prompt="def f("):
            seen += 1
    # One token a chunk: the consumer gets exactly the chunks the reservation paid for.
    assert seen == fim.requests[-1]["max_tokens"]
    assert [e.status for e in events.settled] == ["ok", "cut"]
    assert strict.ledger.open_holds == 0


def test_fim_provider_error_releases_the_reservation(
    fim: FimProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    fim.status = 500
    with pytest.raises(errors.SDKError):
        fim.client(guard).fim.complete(model=FIM_MODEL, prompt="def f(", max_tokens=50)
    assert len(fim.requests) == 1
    assert [(e.operation, e.status) for e in events.calls] == [("fim", "error")]
    [status] = guard.status()
    assert (status.spent, status.reserved, guard.ledger.open_holds) == (0, 0, 0)


@pytest.mark.anyio
async def test_async_fim_complete_and_stream_are_guarded(
    fim: FimProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = fim.client(guard)
    await c.fim.complete_async(model=FIM_MODEL, prompt="def f(", suffix="pass", max_tokens=50)
    stream = await c.fim.stream_async(model=FIM_MODEL, prompt="def f(", max_tokens=50)
    async for _ in stream:
        pass
    assert [(e.operation, e.status, e.usage) for e in events.settled] == [
        ("fim", "ok", Usage(input_tokens=100, output_tokens=20)),
        ("fim", "ok", Usage(input_tokens=100, output_tokens=20)),
    ]
    assert guard.status()[0].spent == 2 * 48_000 and guard.ledger.open_holds == 0

    tiny = fim.client(make_guard(agent_name="tiny", budget=Budget.daily(0.0001)))
    with pytest.raises(BudgetExceededError):
        await tiny.fim.complete_async(model=FIM_MODEL, prompt="def f(", max_tokens=1000)
    with pytest.raises(BudgetExceededError):
        await tiny.fim.stream_async(model=FIM_MODEL, prompt="def f(", max_tokens=1000)
    assert len(fim.requests) == 2
    await c.__aexit__(None, None, None)


def test_n_choices_are_held_and_limited_per_choice(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    def every_choice_at_its_limit(request: RecordedRequest) -> Reply:
        body = request.body
        n, limit = body.get("n") or 1, body.get("max_tokens") or 4096
        return Reply(output_tokens=n * limit, input_tokens=9, honor_max_tokens=False)

    budget = Budget.daily(0.001)
    server.responder = every_choice_at_its_limit
    strict = make_guard(budget=budget, mode="strict")
    client(server, strict).chat.complete(model=MODEL, messages=MSGS, n=4)
    per_choice = server.last.body["max_tokens"]
    assert events.settled[-1].usage.output_tokens == 4 * per_choice
    assert 0 < strict.status()[0].spent <= budget.limit

    loose = make_guard(agent_name="r", budget=budget, mode="reserve")
    with pytest.raises(BudgetExceededError):
        client(server, loose).chat.complete(model=MODEL, messages=MSGS, n=4, max_tokens=1000)
    assert loose.status()[0].spent == 0


# -- Responses (the stateless Responses API), against an httpx2 mock transport -------------

# genai-prices, mistral-small-latest: $0.15 in, $0.015 cached in, $0.60 out per million tokens.


class ResponsesProvider:
    """``POST /v1/responses``: records requests; answers with ``output_tokens`` tokens (capped
    at the request's ``max_output_tokens`` when ``honor_max_tokens``), streamed one a delta."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.input_tokens, self.cached_tokens, self.output_tokens = 100, 0, 20
        self.reasoning_tokens = 0
        self.honor_max_tokens = True

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/responses"
        body = json.loads(request.content)
        self.requests.append(body)
        n = self.output_tokens
        if self.honor_max_tokens and body.get("max_output_tokens") is not None:
            n = min(n, body["max_output_tokens"])
        text = "x" * max(0, n - self.reasoning_tokens)
        message = {
            "id": "msg-1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        response = {
            "id": "resp-1",
            "object": "response",
            "created_at": 1,
            "model": body["model"],
            "status": "completed",
            "output": [message],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {
                    "cached_tokens": self.cached_tokens,
                    "cache_write_tokens": 0,
                },
                "output_tokens": n,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.input_tokens + n,
            },
        }
        if not body.get("stream"):
            return httpx2.Response(200, json=response)
        events: list[dict[str, Any]] = []
        for i in range(n):
            kind = "reasoning_text" if i < self.reasoning_tokens else "output_text"
            delta = {"item_id": "msg-1", "output_index": 0, "content_index": 0, "delta": "x"}
            events.append(
                {"type": f"response.{kind}.delta", **delta}
                | ({"logprobs": []} if kind == "output_text" else {})
            )
        events.append({"type": "response.completed", "response": response})
        frames = "".join(
            f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n"
            for i, e in enumerate(events)
        )
        return httpx2.Response(
            200, content=frames.encode(), headers={"content-type": "text/event-stream"}
        )

    def client(self, guard: AgentKavach) -> Mistral:
        transport = httpx2.MockTransport(self.handle)
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


@pytest.fixture
def responses() -> ResponsesProvider:
    if not hasattr(Mistral(api_key="k"), "responses"):
        pytest.skip(f"mistralai {version('mistralai')} has no Responses API")
    return ResponsesProvider()


def test_responses_create_settles_at_the_models_rates_and_strict_sets_max_output_tokens(
    responses: ResponsesProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(0.001), mode="strict")
    responses.cached_tokens = 40
    c = responses.client(guard)
    response = c.responses.create(model=MODEL, input="Say hello", instructions="Be brief.")
    assert isinstance(response, models.CreateResponseResponse)
    assert 16 <= responses.requests[-1]["max_output_tokens"] <= 4096
    [event] = events.settled
    assert (event.operation, event.status) == ("chat", "ok")
    assert event.usage == Usage(input_tokens=100, output_tokens=20, cache_read_tokens=40)
    # 60 x $0.15/M + 40 cached x $0.015/M + 20 x $0.60/M
    assert guard.status()[0].spent == event.cost_nanos == 9_000 + 600 + 12_000

    c.responses.create(model=MODEL, input="Say hello", max_output_tokens=5)  # a lower one stays
    assert responses.requests[-1]["max_output_tokens"] == 5
    loose = responses.client(make_guard(agent_name="loose", budget=Budget.daily(1)))
    loose.responses.create(model=MODEL, input=[{"role": "user", "content": "Say hello"}])
    assert "max_output_tokens" not in responses.requests[-1]


def test_responses_refused_after_kill_and_over_budget_without_a_request(
    responses: ResponsesProvider, make_guard: Any
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = responses.client(guard)
    guard.kill("stop everything")
    with pytest.raises(AgentKilledError):
        c.responses.create(model=MODEL, input="Say hello")
    with pytest.raises(AgentKilledError):
        c.responses.create(model=MODEL, input="Say hello", stream=True)
    tiny = responses.client(make_guard(agent_name="tiny", budget=Budget.daily(0.0001)))
    with pytest.raises(BudgetExceededError):  # the input alone is over the budget
        tiny.responses.create(model=MODEL, input="word " * 100_000, max_output_tokens=1)
    assert responses.requests == []


def test_responses_stream_is_metered_settles_once_and_is_cut_in_strict_mode(
    responses: ResponsesProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    responses.input_tokens, responses.output_tokens, responses.reasoning_tokens = 40, 6, 2
    with responses.client(guard).responses.create(
        model=MODEL, input="Say hello", stream=True
    ) as stream:
        kinds = [frame.data.type for frame in stream]
    assert kinds[-1] == "response.completed" and len(kinds) == 7
    [event] = events.settled
    assert event.status == "ok"
    assert event.usage == Usage(input_tokens=40, output_tokens=6, reasoning_tokens=2)
    assert guard.status()[0].spent == event.cost_nanos and guard.ledger.open_holds == 0

    strict = make_guard(agent_name="s", budget=Budget.daily(0.0001), mode="strict")
    responses.output_tokens, responses.honor_max_tokens = 3000, False
    seen = 0
    with pytest.raises(BudgetExceededError):
        for _ in responses.client(strict).responses.create(
            model=MODEL, input="Say hello", stream=True
        ):
            seen += 1
    # Reasoning and text deltas, one token each: the consumer gets what the hold paid for.
    assert seen == responses.requests[-1]["max_output_tokens"]
    assert [e.status for e in events.settled] == ["ok", "cut"]
    # The mock ignores max_output_tokens: the cut settles what had arrived, as billed.
    assert strict.status()[0].spent == events.settled[-1].cost_nanos > 0
    assert strict.ledger.open_holds == 0


@pytest.mark.anyio
async def test_async_responses_create_and_stream_are_guarded(
    responses: ResponsesProvider, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = responses.client(guard)
    response = await c.responses.create_async(model=MODEL, input="Say hello")
    assert isinstance(response, models.CreateResponseResponse)
    stream = await c.responses.create_async(model=MODEL, input="Say hello", stream=True)
    async for _ in stream:
        pass
    assert [(e.status, e.usage) for e in events.settled] == [
        ("ok", Usage(input_tokens=100, output_tokens=20)),
        ("ok", Usage(input_tokens=100, output_tokens=20)),
    ]
    assert guard.status()[0].spent == 2 * (15_000 + 12_000) and guard.ledger.open_holds == 0

    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        await c.responses.create_async(model=MODEL, input="Say hello")
    with pytest.raises(AgentKilledError):
        await c.responses.create_async(model=MODEL, input="Say hello", stream=True)
    assert len(responses.requests) == 2
    await c.__aexit__(None, None, None)


# -- every billable method is guarded ------------------------------------------------------

# Methods that POST but bill nothing (configuration, uploads, searches of stored data, token
# counts, cancels), by resource. Anything else that POSTs must be guarded or unmetered: a new
# SDK resource fails this test until it is classified, instead of bypassing the guard.
FREE = {
    "beta.prompts": {"create", "create_version"},
    "beta.skills": {"create", "create_version"},
    "beta.service_accounts": {"create"},
    "beta.agents": {"create"},  # defines an agent; running it is agents.complete, guarded
    "beta.libraries": {"create"},
    "beta.observability.judges": {"create"},
    "beta.observability.datasets": {
        "create",
        "create_record",
        "import_from_dataset_records",
        "import_from_file",
        "import_from_playground",
        "import_from_spans",
    },
    "beta.observability.datasets.records": {"bulk_delete"},
    "beta.observability.evaluations": {"create_pipeline", "create_pipeline_config"},  # 2.x
    # defines an LLM-judge scorer (mistralai 3.8); evaluation runs are billed when they run
    "beta.observability.evaluations.scorers": {"create"},
    "beta.observability.evaluations.runs": {"compute_statistics", "search", "search_all"},
    "beta.observability.evaluations.records": {"search"},
    "beta.observability.logs": {"search"},
    "beta.observability.traces": {"aggregate", "search"},
    "beta.observability.spans": {
        "aggregate",
        "aggregate_span_evaluations",
        "search_latest_span_evaluations",
        "search_pipeline_results",
        "search_span_evaluations",
        "search_spans",
    },
    "beta.connectors": {
        "activate_for_consumer",
        "call_tool",  # an MCP tool, not a model
        "create",
        "create_credentials",
        "deactivate_for_consumer",
    },
    "beta.context.search_indexes": {"create", "grep", "navigate", "read"},
    "beta.rag.managed_indexes": {"create"},  # mistralai 2.x: search_indexes before 3.0
    "beta.triggers": {"create"},
    "beta.webhooks": {"create"},
    "audio.voices": {"create"},
    "audio.agents": {"create"},
    "models": {"archive"},
    "responses": {"count_input_tokens"},
    "files": {"upload"},
    "batch.jobs": {"cancel"},
    "fine_tuning.jobs": {"cancel"},  # mistralai 1.x
    "workflows": {"add_workflow_tags"},
    "workflows.executions": {
        "batch_cancel_workflow_executions",
        "batch_terminate_workflow_executions",
        "cancel_workflow_execution",
        "query_workflow_execution",
        "signal_workflow_execution",
        "terminate_workflow_execution",
        "update_workflow_execution",
    },
    "workflows.schedules": {"pause_schedule", "resume_schedule", "schedule_workflow"},
    "workflows.deployments": {
        "create_deployment",
        "restart_deployment",
        "start_deployment",
        "stop_deployment",
        "unharden_deployment",
    },
}


def _resources(owner: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every resource of a Mistral client, lazily loaded ones too, with its dotted path."""
    yield path, owner
    names = list(getattr(type(owner), "_sub_sdk_map", {}))
    names += [n for n, v in vars(owner).items() if isinstance(v, BaseSDK) and n[0] != "_"]
    for name in dict.fromkeys(names):
        child = getattr(owner, name)
        if isinstance(child, BaseSDK) and name != "parent_ref":
            yield from _resources(child, f"{path}.{name}" if path else name)


def test_every_method_that_posts_is_guarded_unmetered_or_declared_free(
    server: StandIn, make_guard: Any
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    posts = re.compile(r'method="POST"')
    unguarded, posting = [], 0
    for path, owner in _resources(c):
        for name, method in inspect.getmembers(type(owner), inspect.isfunction):
            if name[0] == "_" or not posts.search(inspect.getsource(method)):
                continue
            posting += 1
            guarded = name in vars(owner)  # patched on the instance by guard.wrap
            free = name.removesuffix("_async") in FREE.get(path, ())
            assert not (guarded and free), f"{path}.{name} is guarded and declared free"
            if not (guarded or free):
                unguarded.append(f"{path}.{name}")
    assert posting > 50  # the walk found the SDK's resources (1.x has 62, 3.x over 100)
    assert unguarded == []

    if hasattr(c, "responses"):
        assert "create" in vars(c.responses) and "create_async" in vars(c.responses)

    guard.kill("stop")  # the newly unmetered ones of this SDK stop with the agent, unsent
    unmetered: dict[str, Any] = {
        "workflows": lambda: c.workflows.execute_workflow(workflow_identifier="w"),
        # processing a document again is billed again
        "beta.libraries.documents": lambda: c.beta.libraries.documents.reprocess(
            library_id="l", document_id="d"
        ),
        "beta.rag.managed_indexes": lambda: c.beta.rag.managed_indexes.search(  # 2.x
            index_name="i", retriever={"type": "keyword", "query": "q"}
        ),
        # 1.x: starting a fine-tuning job created unstarted runs the training
        "fine_tuning.jobs": lambda: c.fine_tuning.jobs.start(job_id="j"),
    }
    present = {path for path, _ in _resources(c)} & unmetered.keys()
    assert present
    for path in present:
        with pytest.raises(AgentKilledError):
            unmetered[path]()
    assert server.requests == []
