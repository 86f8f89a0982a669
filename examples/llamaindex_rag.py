"""A LlamaIndex RAG query engine with every LLM call guarded by kavach.

    pip install 'agentkavach[openai,llamaindex]' llama-index-llms-openai
    python examples/llamaindex_rag.py

Runs against OpenAI when OPENAI_API_KEY is set; otherwise against the local stand-in provider
and a mock embedding model (no network, no key).

``instrument(guard)`` guards every LlamaIndex LLM call in the process (``Settings.llm`` and
LLMs created later); each query is one kavach run.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from llama_index.core import Document, MockEmbedding, Settings, VectorStoreIndex
from llama_index.llms.openai import OpenAI

from kavach import (
    AgentKavach,
    AgentKilledError,
    Budget,
    BudgetExceededError,
    CallEvent,
    NullObserver,
)
from kavach_integrations.llamaindex import instrument

DOCS = [
    "AgentKavach reserves the worst-case cost of a call before it is made.",
    "A call that could break a budget is refused before any money is spent.",
    "Budgets can be daily, weekly, monthly, total or per run.",
]


class PrintCalls(NullObserver):
    def on_call(self, event: CallEvent) -> None:
        print(
            f"  [{event.status}] {event.model}: {event.usage.input_tokens} in / "
            f"{event.usage.output_tokens} out, ${event.cost_nanos / 1e9:.6f}"
        )


def main() -> None:
    with ExitStack() as stack:
        connection: dict[str, Any] = {}
        if not os.environ.get("OPENAI_API_KEY"):
            from kavach._devtools.standin import Reply, StandIn

            server = stack.enter_context(StandIn())
            server.default = Reply(text="It reserves the worst case before each call.")
            connection = {"api_base": server.openai_url, "api_key": "stand-in"}
            Settings.embed_model = MockEmbedding(embed_dim=64)
            print("OPENAI_API_KEY is not set: using the stand-in provider and mock embeddings.")

        guard = AgentKavach(agent_name="rag", budget=Budget.daily(0.01), observers=[PrintCalls()])
        handle = instrument(guard)
        stack.callback(handle.uninstrument)

        Settings.llm = OpenAI(model="gpt-4o-mini", max_tokens=256, **connection)
        index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS])
        engine = index.as_query_engine(similarity_top_k=2)
        print("answer:", engine.query("How does AgentKavach keep spend under a budget?"))
        print(f"spent ${guard.spent:.6f} of $0.01 today")

        guard.kill("paused by an operator")
        try:
            engine.query("And what about per-run budgets?")
        except AgentKilledError as refusal:
            print("refused:", refusal)
        guard.resume()

        Settings.llm = OpenAI(model="gpt-4o-mini", max_tokens=20_000, **connection)
        try:  # 20,000 output tokens could cost $0.012: more than the day's budget
            index.as_query_engine().query("Write a very long essay.")
        except BudgetExceededError as refusal:
            print("refused:", refusal)


if __name__ == "__main__":
    main()
