"""What the LangChain handler and the LlamaIndex instrumentation add to one model call.

Same process, same stand-in provider on loopback, same model: calls without and with the
guard, interleaved so drift affects both equally. Prints medians and the median added time
(of paired differences). Run: ``python benchmarks/framework_overhead.py [rounds]``.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_openai import ChatOpenAI
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI

from kavach import AgentKavach, Budget
from kavach._devtools import standin
from kavach._devtools.standin import Reply, StandIn
from kavach_integrations.langchain import KavachHandler
from kavach_integrations.llamaindex import instrument


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def paired(bare: Callable[[], Any], guarded: Callable[[], Any], rounds: int) -> dict[str, float]:
    for _ in range(max(10, rounds // 10)):  # warm up connections, caches, price lookups
        bare()
        guarded()
    a: list[float] = []
    b: list[float] = []
    for i in range(rounds):
        if i % 2:
            a.append(timed(bare))
            b.append(timed(guarded))
        else:
            b.append(timed(guarded))
            a.append(timed(bare))
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    return {
        "bare": statistics.median(a),
        "guarded": statistics.median(b),
        "added": statistics.median(diffs),
    }


def handler_alone(rounds: int) -> float:
    """The handler's own work per call (reserve + settle), with no model and no HTTP."""
    handler = KavachHandler(AgentKavach(agent_name="bench-direct", budget=Budget.daily(1000)))
    meta = {"ls_provider": "openai", "ls_model_name": "gpt-4o-mini", "ls_max_tokens": 64}
    message = AIMessage(
        "Paris.", usage_metadata={"input_tokens": 14, "output_tokens": 2, "total_tokens": 16}
    )
    result = LLMResult(generations=[[ChatGeneration(message=message)]])
    samples = []
    for i in range(rounds):
        run_id = uuid.uuid4()
        messages = [[HumanMessage(f"What is the capital of France? ({i})")]]
        start = time.perf_counter()
        handler.on_chat_model_start({}, messages, run_id=run_id, metadata=meta)
        handler.on_llm_end(result, run_id=run_id)
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    # The stand-in writes headers and body separately; with Nagle's algorithm on, delayed ACKs
    # add ~40 ms to every keep-alive request, which would drown the overhead being measured.
    standin._Handler.disable_nagle_algorithm = True
    with StandIn() as server:
        server.default = Reply(text="Paris.", input_tokens=14)
        big = Budget.daily(1000)

        bare_lc = ChatOpenAI(model="gpt-4o-mini", base_url=server.openai_url, api_key="x")
        handler = KavachHandler(AgentKavach(agent_name="bench-lc", budget=big))
        guarded_lc = ChatOpenAI(
            model="gpt-4o-mini", base_url=server.openai_url, api_key="x", callbacks=[handler]
        )
        counter = iter(range(10**9))

        def question() -> str:
            # A new question each call, as in real use (identical requests trip loop detection).
            return f"Capital of France? ({next(counter)})"

        lc = paired(
            lambda: bare_lc.invoke(question()), lambda: guarded_lc.invoke(question()), rounds
        )
        # LangChain itself does more work once any callback is attached; a handler that does
        # nothing shows how much of the added time is LangChain's and how much is kavach's.
        noop_lc = ChatOpenAI(
            model="gpt-4o-mini",
            base_url=server.openai_url,
            api_key="x",
            callbacks=[BaseCallbackHandler()],
        )
        noop = paired(
            lambda: bare_lc.invoke(question()), lambda: noop_lc.invoke(question()), rounds
        )

        # Instrumenting patches a class, so LlamaIndex is measured in alternating blocks
        # (bare, instrumented, bare, ...) rather than call by call.
        llm = OpenAI(model="gpt-4o-mini", api_base=server.openai_url, api_key="x")
        guard = AgentKavach(agent_name="bench-li", budget=big)

        def li_call() -> None:
            llm.chat([ChatMessage(role="user", content=question())])

        for _ in range(20):
            li_call()
        li_a: list[float] = []
        li_b: list[float] = []
        block = 10
        for _ in range(max(1, rounds // block)):
            li_a += [timed(li_call) for _ in range(block)]
            handle = instrument(guard)
            li_b += [timed(li_call) for _ in range(block)]
            handle.uninstrument()
        li = {
            "bare": statistics.median(li_a),
            "guarded": statistics.median(li_b),
            "added": statistics.median(li_b) - statistics.median(li_a),
        }
        assert guard.ledger.open_holds == 0 and handler.guard.ledger.open_holds == 0

    direct = handler_alone(rounds * 10)
    print(f"framework overhead, {rounds} rounds, stand-in provider on loopback (microseconds)")
    print(f"{'':<34}{'bare':>10}{'guarded':>10}{'added':>10}")
    print(
        f"{'LangChain ChatOpenAI.invoke':<34}{lc['bare']:>10.0f}{lc['guarded']:>10.0f}"
        f"{lc['added']:>10.0f}"
    )
    print(
        f"{'  LangChain, a no-op handler':<34}{noop['bare']:>10.0f}{noop['guarded']:>10.0f}"
        f"{noop['added']:>10.0f}"
    )
    print(
        f"{'LlamaIndex OpenAI.chat':<34}{li['bare']:>10.0f}{li['guarded']:>10.0f}"
        f"{li['added']:>10.0f}"
    )
    print(f"KavachHandler alone (reserve + settle, no model): {direct:.1f} us median")


if __name__ == "__main__":
    main()
