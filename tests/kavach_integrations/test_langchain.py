"""KavachHandler with real ChatOpenAI / ChatAnthropic talking HTTP to a loopback server."""

from __future__ import annotations

import importlib
import operator
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from kavach import (
    AgentKavach,
    Budget,
    BudgetExceededError,
    CallLimitError,
    KavachConfigError,
    LoopDetectedError,
    MissingDependencyError,
    Usage,
)
from kavach._devtools.standin import Reply, StandIn, ToolCall
from kavach_integrations.langchain import KavachHandler, usage_from_metadata
from tests.kavach_integrations.conftest import Recorder

Factory = Callable[..., BaseChatModel]


@pytest.fixture
def server() -> Iterator[StandIn]:
    # A fresh server (so a fresh port) per test: langchain-openai caches its default async
    # HTTP client per base URL, and a client cached in an earlier test's event loop breaks.
    with StandIn() as standin:
        yield standin


def openai_model(server: StandIn, handler: KavachHandler, **kw: Any) -> BaseChatModel:
    kw.setdefault("max_tokens", 100)
    kw.setdefault("stream_usage", True)
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=server.openai_url,
        api_key="sk-loopback",  # type: ignore[arg-type]
        max_retries=0,
        callbacks=[handler],
        **kw,
    )


def anthropic_model(server: StandIn, handler: KavachHandler, **kw: Any) -> BaseChatModel:
    kw.setdefault("max_tokens", 100)
    return ChatAnthropic(  # type: ignore[call-arg]
        model="claude-sonnet-4-0",
        base_url=server.anthropic_url,
        api_key="sk-ant-loopback",  # type: ignore[arg-type]
        max_retries=0,
        callbacks=[handler],
        **kw,
    )


MODELS = pytest.mark.parametrize(
    "make", [openai_model, anthropic_model], ids=["openai", "anthropic"]
)


def guard(recorder: Recorder, **kw: Any) -> AgentKavach:
    kw.setdefault("budget", Budget.daily(1))
    return AgentKavach(agent_name="lc", observers=[recorder], **kw)


# -- settlement ------------------------------------------------------------------------


def test_openai_invoke_settles_at_reported_usage_with_cache_and_reasoning(
    server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    server.script(
        Reply(text="hi", input_tokens=120, output_tokens=30, cached_tokens=100, reasoning_tokens=12)
    )
    openai_model(server, handler).invoke("hello")
    (event,) = recorder.calls
    assert event.status == "ok"
    assert (event.provider, event.model, event.max_output_tokens) == ("openai", "gpt-4o-mini", 100)
    assert event.usage == Usage(
        input_tokens=120, output_tokens=30, cache_read_tokens=100, reasoning_tokens=12
    )
    assert event.cost_nanos > 0
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_priority_tier_is_charged_at_priority_prices_with_its_cache_reads(
    server: StandIn, recorder: Recorder, stream: bool
) -> None:
    handler = KavachHandler(guard(recorder))
    server.script(Reply(input_tokens=1000, output_tokens=40, cached_tokens=800))
    model = openai_model(server, handler, service_tier="priority")
    if stream:
        list(model.stream("hello"))
    else:
        model.invoke("hello")
    (event,) = recorder.calls
    assert server.requests[0].body["service_tier"] == "priority"
    # langchain-openai reports a priority answer's cache reads as "priority_cache_read".
    assert event.usage.cache_read_tokens == 800
    # gpt-4o-mini at priority: $0.25 input, $0.125 cached input, $1 output per million.
    assert event.cost_nanos == 200 * 250 + 800 * 125 + 40 * 1000
    assert handler.guard.ledger.open_holds == 0


def test_anthropic_web_searches_are_charged(server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder))
    server.script(Reply(input_tokens=1000, output_tokens=40, web_searches=2))
    anthropic_model(server, handler).invoke("hello")
    (event,) = recorder.calls
    assert event.usage.web_searches == 2
    # claude-sonnet-4-0: $3 input and $15 output per million tokens, $10 per 1000 searches.
    assert event.cost_nanos == 1000 * 3000 + 40 * 15_000 + 2 * 10_000_000


def test_anthropic_web_searches_are_held_before_the_call(
    server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder, budget=Budget.daily(0.03)))
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    with pytest.raises(BudgetExceededError):  # five searches: $0.05
        anthropic_model(server, handler).bind_tools([tool]).invoke("hello")
    assert server.requests == []
    server.script(Reply(input_tokens=10, output_tokens=5, web_searches=1))
    anthropic_model(server, handler).bind_tools([{**tool, "max_uses": 1}]).invoke("hello")
    assert len(server.requests) == 1
    assert handler.guard.ledger.open_holds == 0


def test_anthropic_invoke_counts_cache_reads_and_writes_once(
    server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    # The server reports Anthropic-style: input_tokens excludes the 50 + 30 cache tokens.
    server.script(Reply(input_tokens=100, output_tokens=7, cached_tokens=50, cache_write_tokens=30))
    anthropic_model(server, handler).invoke("hello")
    (event,) = recorder.calls
    assert event.usage.input_tokens == 100
    assert (event.usage.cache_read_tokens, event.usage.cache_write_tokens) == (50, 30)
    assert event.usage.uncached_input_tokens == 20
    assert handler.guard.ledger.open_holds == 0


@MODELS
def test_stream_settles_at_streamed_usage(
    make: Factory, server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    server.script(Reply(text="one two three", input_tokens=33, output_tokens=3))
    chunks = list(make(server, handler).stream("hello"))
    assert "".join(str(c.content) for c in chunks if isinstance(c.content, str)) or chunks
    (event,) = recorder.calls
    assert event.status == "ok"
    assert event.usage.output_tokens == 3
    if make is openai_model:
        assert event.usage.input_tokens == 33
    else:
        # The stand-in reports usage like Anthropic's older API: output tokens only in
        # message_delta, so LangChain sees no input; the handler bills its input estimate.
        assert event.usage.input_tokens > 0
    assert server.requests[0].body["stream"] is True
    assert handler.guard.ledger.open_holds == 0


def test_stream_without_usage_is_billed_at_an_estimate_not_zero(
    server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler, stream_usage=False)
    server.script(Reply(text="alpha beta gamma delta"))
    list(model.stream("hello"))
    (event,) = recorder.calls
    assert event.usage.input_tokens > 0 and event.usage.output_tokens > 0
    assert event.cost_nanos > 0


def test_provider_error_releases_the_hold(server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder))
    server.script(Reply(status=500))
    with pytest.raises(Exception, match="stand-in error 500"):
        openai_model(server, handler).invoke("hello")
    (event,) = recorder.calls
    assert event.status == "error" and event.cost_nanos == 0
    assert handler.guard.ledger.open_holds == 0
    assert handler.guard.spent == 0


def test_usage_from_metadata_maps_anthropic_cache_lifetimes() -> None:
    usage = usage_from_metadata(
        {
            "input_tokens": 500,
            "output_tokens": 40,
            "input_token_details": {
                "cache_read": 100,
                "cache_creation": 0,
                "ephemeral_5m_input_tokens": 200,
                "ephemeral_1h_input_tokens": 150,
            },
            "output_token_details": {"reasoning": 25},
        }
    )
    assert usage == Usage(
        input_tokens=500,
        output_tokens=40,
        cache_read_tokens=100,
        cache_write_tokens=200,
        cache_write_1h_tokens=150,
        reasoning_tokens=25,
    )


def test_usage_from_metadata_counts_cache_writes_once_with_langchain_anthropic_0_3() -> None:
    # langchain-anthropic 0.3 keeps the writes' total in "cache_creation" beside the same
    # writes by lifetime (1.x zeroes it): they were counted twice, 700 writes for 350.
    usage = usage_from_metadata(
        {
            "input_tokens": 800,
            "output_tokens": 40,
            "input_token_details": {
                "cache_read": 100,
                "cache_creation": 350,
                "ephemeral_5m_input_tokens": 200,
                "ephemeral_1h_input_tokens": 150,
            },
        }
    )
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (200, 150)
    assert usage.uncached_input_tokens == 800 - 100 - 350
    # Without lifetimes (langchain-openai, older Anthropic answers): the total, 5-minute.
    plain = usage_from_metadata(
        {"input_tokens": 80, "output_tokens": 4, "input_token_details": {"cache_creation": 30}}
    )
    assert (plain.cache_write_tokens, plain.cache_write_1h_tokens) == (30, 0)


# -- refusal on every path ---------------------------------------------------------------


def broke(recorder: Recorder) -> KavachHandler:
    # $0.000001 cannot pay for 100 output tokens of either model.
    return KavachHandler(guard(recorder, budget=Budget.daily(0.000001)))


@MODELS
def test_refusal_on_invoke_and_stream(make: Factory, server: StandIn, recorder: Recorder) -> None:
    model = make(server, broke(recorder))
    with pytest.raises(BudgetExceededError):
        model.invoke("hello")
    with pytest.raises(BudgetExceededError):
        list(model.stream("hello"))
    with pytest.raises(BudgetExceededError):
        model.batch(["a", "b"])
    assert server.requests == []
    assert len(recorder.calls) >= 3
    assert {e.status for e in recorder.calls} == {"refused"}


def test_every_reply_of_n_is_held(server: StandIn, recorder: Recorder) -> None:
    # $0.0005 pays for 100 output tokens of gpt-4o-mini ($0.60/M) but not for 3 x 300.
    handler = KavachHandler(guard(recorder, budget=Budget.daily(0.0005)))
    server.default = Reply(input_tokens=8, output_tokens=300)
    with pytest.raises(BudgetExceededError):
        openai_model(server, handler, n=3, max_tokens=300).invoke("hello")
    assert server.requests == []
    assert recorder.calls[-1].reserved_nanos == 0
    openai_model(server, handler, n=1, max_tokens=300).invoke("hello")
    assert recorder.calls[-1].status == "ok"
    assert handler.guard.ledger.open_holds == 0


@MODELS
@pytest.mark.anyio
async def test_refusal_on_ainvoke_and_astream(
    make: Factory, server: StandIn, recorder: Recorder
) -> None:
    handler = broke(recorder)
    model = make(server, handler)
    with pytest.raises(BudgetExceededError):
        await model.ainvoke("hello")
    with pytest.raises(BudgetExceededError):
        async for _ in model.astream("hello"):
            pass
    with pytest.raises(BudgetExceededError):
        await model.abatch(["a", "b"])
    assert server.requests == []
    assert handler.guard.ledger.open_holds == 0


def test_refusal_when_the_handler_is_on_the_config_not_the_model(
    server: StandIn, recorder: Recorder
) -> None:
    handler = broke(recorder)
    model = openai_model(server, KavachHandler(AgentKavach(agent_name="other")))
    model.callbacks = None
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | model
    with pytest.raises(BudgetExceededError):
        chain.invoke({"q": "hello"}, config={"callbacks": [handler]})
    assert server.requests == []


def test_generate_refused_midway_gives_back_the_earlier_prompts_holds(
    server: StandIn, recorder: Recorder
) -> None:
    # Room for one worst case (100 output tokens of gpt-4o-mini), not two.
    handler = KavachHandler(guard(recorder, budget=Budget.daily(0.00009)))
    model = openai_model(server, handler)
    with pytest.raises(BudgetExceededError):
        model.generate([[HumanMessage("a")], [HumanMessage("b")]])
    assert server.requests == []
    assert handler.guard.ledger.open_holds == 0
    assert handler.open_calls == 0


# -- concurrency: one reservation per run ----------------------------------------------


def test_batch_runs_hold_separately_and_the_budget_holds_under_concurrency(
    server: StandIn, recorder: Recorder
) -> None:
    # Each call's worst case is ~ $0.0000640; the budget pays for two in flight, not three.
    handler = KavachHandler(guard(recorder, budget=Budget.daily(0.00013)))
    server.default = Reply(delay=0.3)
    results = openai_model(server, handler).batch(["a", "b", "c"], return_exceptions=True)
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(refused) == 1
    assert len(server.requests) == 2
    assert len(recorder.by_status("ok")) == 2
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.anyio
async def test_abatch_runs_hold_separately(server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder, budget=Budget.daily(0.00013)))
    server.default = Reply(delay=0.3, output_tokens=10)
    results = await openai_model(server, handler).abatch(["a", "b", "c"], return_exceptions=True)
    assert sum(isinstance(r, BudgetExceededError) for r in results) == 1
    assert len(server.requests) == 2
    ok = recorder.by_status("ok")
    assert len(ok) == 2 and all(e.usage.output_tokens == 10 for e in ok)
    assert handler.guard.ledger.open_holds == 0


# -- streams are metered and cut --------------------------------------------------------


@MODELS
def test_stream_is_cut_past_the_reservation(
    make: Factory, server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    model = make(server, handler, max_tokens=5)
    server.script(Reply(text="word", output_tokens=40, honor_max_tokens=False))
    received = []
    with pytest.raises(BudgetExceededError, match="cut after"):
        for chunk in model.stream("hello"):
            received.append(chunk)
    (event,) = recorder.calls
    assert event.status == "cut"
    assert 5 < event.usage.output_tokens < 40
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.anyio
async def test_astream_is_cut_past_the_reservation(server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler, max_tokens=5)
    server.script(Reply(text="word", output_tokens=40, honor_max_tokens=False))
    with pytest.raises(BudgetExceededError):
        async for _ in model.astream("hello"):
            pass
    assert recorder.calls[0].status == "cut"
    assert handler.guard.ledger.open_holds == 0


# -- run trees map onto kavach runs ------------------------------------------------------


def test_each_chain_invocation_is_one_kavach_run(server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder, max_calls_per_run=2, kill_on_guardrail=False))
    model = openai_model(server, handler)
    model.callbacks = None

    def twice(inputs: dict[str, str]) -> str:
        model.invoke(inputs["q"])
        return str(model.invoke(inputs["q"] + "!").content)

    from langchain_core.runnables import RunnableLambda

    chain = RunnableLambda(twice)
    chain.invoke({"q": "a"}, config={"callbacks": [handler]})
    chain.invoke({"q": "b"}, config={"callbacks": [handler]})
    first, second, third, fourth = recorder.calls
    assert first.run_id == second.run_id != third.run_id == fourth.run_id

    def thrice(inputs: dict[str, str]) -> None:
        for i in range(3):
            model.invoke(f"{inputs['q']} {i}")

    with pytest.raises(CallLimitError):
        RunnableLambda(thrice).invoke({"q": "c"}, config={"callbacks": [handler]})
    assert len(server.requests) == 6
    assert handler.guard.ledger.open_holds == 0


def test_guard_run_scope_wins_over_the_langchain_tree(server: StandIn, recorder: Recorder) -> None:
    g = guard(recorder)
    handler = KavachHandler(g)
    model = openai_model(server, handler)
    with g.run("ticket-42"):
        model.invoke("a")
        model.invoke("b")
    assert {e.run_id for e in recorder.calls} == {"ticket-42"}


# -- a LangGraph ReAct agent --------------------------------------------------------------


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"nothing found for {query}"


def react_agent(model: BaseChatModel) -> Any:
    bound = model.bind_tools([lookup])

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([lookup]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


@MODELS
def test_react_agent_stopped_when_it_loops(
    make: Factory, server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder, loop_threshold=3))
    model = make(server, handler)
    model.callbacks = None
    server.default = Reply(text="", tool_calls=[ToolCall("lookup", {"query": "same"})])
    agent = react_agent(model)
    with pytest.raises(LoopDetectedError, match="lookup"):
        agent.invoke(
            {"messages": [("user", "find it")]},
            config={"callbacks": [handler], "recursion_limit": 50},
        )
    assert len(server.requests) == 3
    assert handler.guard.killed  # kill_on_guardrail
    assert handler.guard.ledger.open_holds == 0


def test_react_agent_that_finishes_is_not_stopped(server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder, loop_threshold=3))
    model = openai_model(server, handler)
    model.callbacks = None
    server.script(
        Reply(text="", tool_calls=[ToolCall("lookup", {"query": "a"})]),
        Reply(text="", tool_calls=[ToolCall("lookup", {"query": "b"})]),
        Reply(text="", tool_calls=[ToolCall("lookup", {"query": "c"})]),
        Reply(text="done"),
    )
    out = react_agent(model).invoke(
        {"messages": [("user", "find it")]}, config={"callbacks": [handler]}
    )
    assert out["messages"][-1].content == "done"
    assert len({e.run_id for e in recorder.calls}) == 1
    assert len(recorder.by_status("ok")) == 4


@pytest.mark.anyio
async def test_react_agent_stopped_when_the_budget_runs_out(
    server: StandIn, recorder: Recorder
) -> None:
    # Each call holds ~$0.000064 and spends ~$0.000009: the budget pays for a few calls only.
    limit = 0.0001
    handler = KavachHandler(guard(recorder, budget=Budget.daily(limit), detect_loops=False))
    model = openai_model(server, handler)
    model.callbacks = None
    server.default = Reply(
        text="",
        tool_calls=[ToolCall("lookup", {"query": "more"})],
        input_tokens=200,
        output_tokens=50,
    )
    with pytest.raises(BudgetExceededError):
        await react_agent(model).ainvoke(
            {"messages": [("user", "find it")]},
            config={"callbacks": [handler], "recursion_limit": 200},
        )
    assert 1 <= len(server.requests) < 10
    assert handler.guard.spent <= limit
    assert handler.guard.ledger.open_holds == 0


# -- construction ---------------------------------------------------------------------------


def test_handler_from_guard_kwargs() -> None:
    handler = KavachHandler(agent_name="kw-bot", budget=Budget.daily(2))
    assert handler.guard.agent_name == "kw-bot"
    assert handler.raise_error and handler.run_inline
    assert KavachHandler("positional-bot", max_calls_per_run=3).guard.agent_name == "positional-bot"
    guard = AgentKavach(agent_name="g")
    assert KavachHandler(guard).guard is guard
    with pytest.raises(KavachConfigError):
        KavachHandler(guard, budget=Budget.daily(1))


def test_missing_langchain_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    monkeypatch.setitem(sys.modules, "langchain_core.callbacks", None)
    monkeypatch.delitem(sys.modules, "kavach_integrations.langchain")
    with pytest.raises(MissingDependencyError, match=r"agentkavach\[langchain\]"):
        importlib.import_module("kavach_integrations.langchain")
    monkeypatch.undo()
    importlib.import_module("kavach_integrations.langchain")


# -- more paths ----------------------------------------------------------------------------


def test_invoke_with_streaming_true_is_metered_and_cut(server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler, max_tokens=5, streaming=True)
    server.script(Reply(text="word", output_tokens=40, honor_max_tokens=False))
    with pytest.raises(BudgetExceededError, match="cut after"):
        model.invoke("hello")
    assert recorder.calls[0].status == "cut"
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_openai_responses_api(stream: bool, server: StandIn, recorder: Recorder) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler, use_responses_api=True)
    server.script(Reply(text="a b c", input_tokens=50, cached_tokens=20, reasoning_tokens=2))
    if stream:
        list(model.stream("hello"))
    else:
        model.invoke("hello")
    assert server.requests[0].path.endswith("/responses")
    (event,) = recorder.calls
    assert (event.usage.input_tokens, event.usage.cache_read_tokens) == (50, 20)
    assert event.usage.reasoning_tokens == 2


def test_text_llm_on_llm_start_is_guarded(recorder: Recorder) -> None:
    from langchain_core.language_models.fake import FakeListLLM

    from kavach import ModelPrice

    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)
    handler = KavachHandler(guard(recorder, unknown_model_price=price))
    llm = FakeListLLM(responses=["a fairly long answer of several words"], callbacks=[handler])
    assert llm.invoke("question") == "a fairly long answer of several words"
    (event,) = recorder.calls
    assert event.operation == "text_completion" and event.status == "ok"
    assert event.usage.input_tokens > 0 and event.usage.output_tokens > 0  # estimated

    tiny = KavachHandler(
        guard(Recorder(), budget=Budget.daily(0.000000001), unknown_model_price=price)
    )
    with pytest.raises(BudgetExceededError):
        FakeListLLM(responses=["x"], callbacks=[tiny]).invoke("question")


class Answers(TypedDict):
    answers: Annotated[list[str], operator.add]


def test_parallel_graph_branches_hold_separately_in_one_run(
    server: StandIn, recorder: Recorder
) -> None:

    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    model.callbacks = None
    server.default = Reply(delay=0.2)
    in_flight: list[int] = []

    def branch(name: str) -> Any:
        def node(state: Answers) -> dict[str, list[str]]:
            answer = model.invoke(f"{name}?")
            return {"answers": [str(answer.content)]}

        return node

    graph = StateGraph(Answers)
    graph.add_node("left", branch("left"))
    graph.add_node("right", branch("right"))
    graph.add_edge(START, "left")
    graph.add_edge(START, "right")
    compiled = graph.compile()

    original = handler.guard.reserve

    def reserve(spec: Any) -> Any:
        r = original(spec)
        in_flight.append(handler.guard.ledger.open_holds)
        return r

    handler.guard.reserve = reserve  # type: ignore[method-assign]
    out = compiled.invoke({"answers": []}, config={"callbacks": [handler]})
    assert len(out["answers"]) == 2
    assert max(in_flight) == 2  # both branches held their own reservation at once
    left, right = recorder.calls
    assert left.run_id == right.run_id
    assert handler.guard.ledger.open_holds == 0


def test_handler_on_the_model_only_warns_that_runs_are_per_step(
    server: StandIn, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | model
    chain.invoke({"q": "a"})
    chain.invoke({"q": "b"})
    assert "config={'callbacks': [handler]}" in caplog.text
    assert caplog.text.count("KavachHandler sees model calls") == 1


def test_why_the_handler_is_sync_an_async_handler_cannot_refuse_sync_calls(
    server: StandIn, recorder: Recorder
) -> None:
    # Checked on the installed langchain-core: an AsyncCallbackHandler's exception is logged
    # and swallowed when LangChain drives it from sync code, so the call goes out anyway.
    from langchain_core.callbacks import AsyncCallbackHandler

    class AsyncRefuser(AsyncCallbackHandler):
        raise_error = True

        async def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            raise BudgetExceededError(
                budget="b",
                unit="usd",
                spent=0,
                reserved=0,
                limit=0,
                requested=1,
                period="daily",
                resets_at=None,
            )

    model = openai_model(server, KavachHandler(guard(recorder)))
    model.callbacks = [AsyncRefuser()]
    model.invoke("hello")
    assert len(server.requests) == 1  # not refused: hence KavachHandler is a sync handler


def test_a_settlement_failure_never_breaks_a_call_that_was_answered(
    server: StandIn, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kavach_integrations.langchain as lc

    def broken(*args: Any) -> None:
        raise RuntimeError("usage parser bug")

    monkeypatch.setattr(lc, "_usage", broken)
    handler = KavachHandler(guard(recorder))
    answer = openai_model(server, handler).invoke("hello")
    assert answer.content
    assert handler.guard.ledger.open_holds == 0
    assert recorder.calls[0].error == "settlement failed"


# -- calls LangChain never ends are settled all the same ----------------------------------


@pytest.mark.anyio
async def test_timed_out_ainvoke_settles_and_the_budget_stays_usable(
    server: StandIn, recorder: Recorder
) -> None:
    import asyncio

    # Room for two worst cases: two timed-out calls used to hold it forever.
    handler = KavachHandler(guard(recorder, budget=Budget.daily(0.00013)))
    model = openai_model(server, handler)
    server.script(Reply(delay=1.0), Reply(delay=1.0))
    for _ in range(2):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(model.ainvoke("hello"), timeout=0.2)
    # Settled on the event loop once the task waits again (since Python 3.12 wait_for runs
    # the call on this task, which goes on: its end cannot be what settles the call).
    await asyncio.sleep(0)
    assert handler.open_calls == 0
    assert handler.guard.ledger.open_holds == 0
    # Sent, maybe billed: the input estimate, as a stream cancelled before its first chunk.
    assert [(e.status, e.usage.output_tokens) for e in recorder.calls] == [("cancelled", 0)] * 2
    assert all(e.usage.input_tokens > 0 for e in recorder.calls)
    await model.ainvoke("hello")
    assert recorder.calls[-1].status == "ok"
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.anyio
@pytest.mark.parametrize("inside", ["coroutine", "async generator"])
async def test_an_ainvoke_left_by_asyncio_timeout_settles_while_its_task_goes_on(
    inside: str, server: StandIn, recorder: Recorder
) -> None:
    import asyncio

    # asyncio.timeout() cancels the call and resumes the same task, which goes on (an agent's
    # loop): the hold must not wait for that task to end.
    handler = KavachHandler(guard(recorder, budget=Budget.daily(0.00013)))
    model = openai_model(server, handler)
    server.script(Reply(delay=1.0), Reply(delay=1.0))

    async def ask() -> None:
        async with asyncio.timeout(0.2):
            await model.ainvoke("hello")

    async def steps() -> Any:  # the call made inside an async generator's step
        await ask()
        yield

    for _ in range(2):
        with pytest.raises(TimeoutError):
            if inside == "coroutine":
                await ask()
            else:
                async for _ in steps():
                    pass
        await asyncio.sleep(0)
        assert handler.open_calls == 0
        assert handler.guard.ledger.open_holds == 0
    assert [e.status for e in recorder.calls] == ["cancelled"] * 2
    assert (await model.ainvoke("hello")).content  # the budget is whole again


@pytest.mark.anyio
async def test_an_async_text_llm_call_settles_at_its_answer(recorder: Recorder) -> None:
    import asyncio

    from langchain_core.language_models.fake import FakeListLLM

    from kavach import ModelPrice

    # A text LLM's agenerate sends each start event from a task of its own, which ends at
    # once: that task's end is not the call's.
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)
    handler = KavachHandler(guard(recorder, unknown_model_price=price))
    llm = FakeListLLM(responses=["a fairly long answer of several words"], callbacks=[handler])
    assert await llm.ainvoke("question") == "a fairly long answer of several words"
    await asyncio.sleep(0)
    (event,) = recorder.calls
    assert (event.status, event.error) == ("ok", None)
    assert event.usage.output_tokens > 0
    assert handler.open_calls == 0


@pytest.mark.anyio
async def test_graph_branch_cancelled_by_a_failing_sibling_is_settled(
    server: StandIn, recorder: Recorder
) -> None:
    import asyncio

    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    model.callbacks = None
    server.responder = lambda req: (
        Reply(status=500) if req.body["messages"][-1]["content"] == "left?" else Reply(delay=1.0)
    )

    def branch(name: str) -> Any:
        async def node(state: Answers) -> dict[str, list[str]]:
            if name == "left":
                await asyncio.sleep(0.2)
            answer = await model.ainvoke(f"{name}?")
            return {"answers": [str(answer.content)]}

        return node

    graph = StateGraph(Answers)
    graph.add_node("left", branch("left"))
    graph.add_node("right", branch("right"))
    graph.add_edge(START, "left")
    graph.add_edge(START, "right")
    with pytest.raises(Exception, match="500"):
        await graph.compile().ainvoke({"answers": []}, config={"callbacks": [handler]})
    await asyncio.sleep(0.1)
    assert sorted(e.status for e in recorder.calls) == ["cancelled", "error"]
    assert handler.open_calls == 0
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.anyio
async def test_a_failed_branch_does_not_settle_its_sibling_still_in_flight(
    server: StandIn, recorder: Recorder
) -> None:
    import asyncio

    from langchain_core.runnables import RunnableParallel

    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    model.callbacks = None
    server.responder = lambda req: (
        Reply(status=500)
        if req.body["messages"][-1]["content"] == "fail"
        else Reply(delay=0.4, input_tokens=50, output_tokens=7)
    )
    both = RunnableParallel(a=(lambda _: "fail") | model, b=(lambda _: "slow") | model)
    with pytest.raises(Exception, match="500"):
        await both.ainvoke({}, config={"callbacks": [handler]})
    await asyncio.sleep(0.8)  # asyncio.gather raised first; the other branch still answers
    assert sorted((e.status, e.usage.output_tokens) for e in recorder.calls) == [
        ("error", 0),
        ("ok", 7),
    ]
    assert handler.guard.ledger.open_holds == 0


def test_a_second_guard_refusing_gives_back_the_first_guards_hold(
    server: StandIn, recorder: Recorder
) -> None:
    agent = KavachHandler(guard(recorder))
    team = KavachHandler(guard(Recorder(), budget=Budget.daily(0.000001)))
    model = openai_model(server, agent)
    model.callbacks = [agent, team]
    for _ in range(3):
        with pytest.raises(BudgetExceededError):
            model.invoke("hello")
    with pytest.raises(BudgetExceededError):
        model.generate([[HumanMessage("a")], [HumanMessage("b")]])
    assert server.requests == []
    assert agent.open_calls == 0
    assert agent.guard.ledger.open_holds == 0
    assert agent.guard.spent == 0


class Policy(BaseCallbackHandler):
    """Another handler that rejects a call as it starts."""

    raise_error = True

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("policy: blocked")


class Validator(BaseCallbackHandler):
    """Another handler that rejects the answer, listed before ours."""

    raise_error = True

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("validator: bad answer")


def test_another_handler_refusing_the_start_releases_our_hold(
    server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    model.callbacks = None
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | model
    with pytest.raises(ValueError, match="policy"):
        chain.invoke({"q": "hi"}, config={"callbacks": [handler, Policy()]})
    assert server.requests == []
    assert [e.status for e in recorder.calls] == ["error"]
    assert handler.guard.spent == 0
    assert handler.open_calls == 0
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.anyio
@pytest.mark.parametrize("task", ["its own, which ends", "this one, which goes on"])
async def test_another_handler_refusing_an_ainvoke_releases_our_hold(
    task: str, server: StandIn, recorder: Recorder
) -> None:
    import asyncio

    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    model.callbacks = [handler, Policy()]
    with pytest.raises(ValueError, match="policy"):
        if task.startswith("its own"):
            await asyncio.create_task(model.ainvoke("hi"))
        else:
            await model.ainvoke("hi")
    await asyncio.sleep(0)
    assert server.requests == []
    assert handler.guard.spent == 0  # released, never sent: not billed
    assert handler.open_calls == 0
    assert handler.guard.ledger.open_holds == 0


def test_an_answer_rejected_before_our_handler_saw_it_is_billed_at_the_worst_case(
    server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    model.callbacks = None
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | model
    with pytest.raises(ValueError, match="validator"):
        chain.invoke({"q": "hi"}, config={"callbacks": [Validator(), handler]})
    assert len(server.requests) == 1
    (event,) = recorder.calls
    assert event.status == "error"
    assert event.usage.input_tokens > 0 and event.usage.output_tokens == 100  # max_tokens
    assert handler.open_calls == 0
    assert handler.guard.ledger.open_holds == 0


@pytest.mark.parametrize("failing", [0, 1])
def test_generate_with_a_failing_prompt_settles_every_prompt(
    failing: int, server: StandIn, recorder: Recorder
) -> None:
    handler = KavachHandler(guard(recorder))
    model = openai_model(server, handler)
    server.script(*[Reply(output_tokens=5)] * failing, Reply(status=500))
    with pytest.raises(Exception, match="500"):
        model.generate([[HumanMessage("a")], [HumanMessage("b")], [HumanMessage("c")]])
    assert len(server.requests) == failing + 1
    # The failed prompt and those never sent are released; one answered before the failure
    # (its on_llm_end never comes) is billed at the most it could have cost.
    billed = [e for e in recorder.calls if e.cost_nanos > 0]
    assert len(recorder.calls) == 3
    assert [e.usage.output_tokens for e in billed] == [100] * failing
    assert handler.open_calls == 0
    assert handler.guard.ledger.open_holds == 0


def test_a_refusal_is_raised_without_langchains_callback_error_warning(
    server: StandIn, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # LangChain logs "Error in KavachHandler.on_chat_model_start callback: ..." for every
    # error a handler raises; a refusal reaches the caller, so that line only alarmed.
    class Failing(BaseCallbackHandler):
        raise_error = False

        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("a broken handler of the application")

    model = openai_model(server, broke(recorder))
    with caplog.at_level("WARNING"), pytest.raises(BudgetExceededError):
        model.invoke("hello", config={"callbacks": [Failing()]})
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("langchain_core")]
    # Another handler's error is still logged, as LangChain does.
    assert warnings == [
        "Error in Failing.on_chat_model_start callback: "
        "RuntimeError('a broken handler of the application')"
    ]
