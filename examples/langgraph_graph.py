"""A LangGraph ReAct graph under kavach: per-run guardrails stop an agent stuck in a loop.

    pip install 'agentkavach[anthropic,langchain]' langchain-anthropic langgraph
    python examples/langgraph_graph.py

Runs against Anthropic when ANTHROPIC_API_KEY is set; otherwise against the local stand-in
provider (no network, no key), which is scripted to keep asking for the same tool call.

Pass the handler in the graph's config: the whole graph invocation is then one kavach run,
so ``max_calls_per_run`` and loop detection apply to one agent invocation.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from langchain_anthropic import ChatAnthropic
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from kavach import AgentKavach, Budget, GuardrailError
from kavach_integrations.langchain import KavachHandler


@tool
def search(query: str) -> str:
    """Search the docs."""
    return "no results"


def build_graph(model: Any) -> Any:
    bound = model.bind_tools([search])

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([search]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def main() -> None:
    with ExitStack() as stack:
        connection: dict[str, Any] = {}
        if not os.environ.get("ANTHROPIC_API_KEY"):
            from kavach._devtools.standin import Reply, StandIn, ToolCall

            server = stack.enter_context(StandIn())
            # A stuck agent: the model asks for the same search forever.
            server.default = Reply(text="", tool_calls=[ToolCall("search", {"query": "kavach"})])
            connection = {"base_url": server.anthropic_url, "api_key": "stand-in"}
            print("ANTHROPIC_API_KEY is not set: using the local stand-in provider.")

        guard = AgentKavach(
            agent_name="docs-agent",
            budget=Budget.daily(1.00),
            loop_threshold=3,
            max_calls_per_run=20,
            kill_on_guardrail=False,
        )
        handler = KavachHandler(guard)
        model = ChatAnthropic(model="claude-sonnet-4-0", max_tokens=300, **connection)  # type: ignore[call-arg]
        graph = build_graph(model)
        try:
            result = graph.invoke(
                {"messages": [("user", "How do I set a daily budget?")]},
                config={"callbacks": [handler], "recursion_limit": 100},
            )
            print("answer:", result["messages"][-1].content)
        except GuardrailError as stop:
            print(f"stopped ({stop.reason}): {stop}")
        print(f"spent ${guard.spent:.6f}; holds still open: {guard.ledger.open_holds}")


if __name__ == "__main__":
    main()
