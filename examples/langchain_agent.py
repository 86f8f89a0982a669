"""A LangChain tool-calling agent under a kavach budget.

    pip install 'agentkavach[openai,langchain]' langchain-openai
    python examples/langchain_agent.py

Runs against OpenAI when OPENAI_API_KEY is set; otherwise against the local stand-in provider
(no network, no key).

The handler reserves each model call before it is made and settles it at the reported
usage. A second run with a budget too small for one call is refused before anything is sent.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from kavach import Budget, BudgetExceededError
from kavach_integrations.langchain import KavachHandler


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


def stand_in_model(stack: ExitStack) -> dict[str, Any]:
    """Start the stand-in: it calls the tool first, then answers from the tool's result."""
    from kavach._devtools.standin import RecordedRequest, Reply, StandIn, ToolCall

    server = stack.enter_context(StandIn())

    def respond(request: RecordedRequest) -> Reply:
        last = request.body["messages"][-1]
        if last["role"] == "tool":
            return Reply(text=f"Here is the forecast: {last['content']}")
        return Reply(text="", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])

    server.responder = respond
    return {"base_url": server.openai_url, "api_key": "stand-in"}


def run_agent(model: Any, question: str, max_steps: int = 5) -> str:
    """A minimal agent loop: call the model, run the tools it asks for, repeat."""
    messages: list[BaseMessage] = [HumanMessage(question)]
    tools = {"get_weather": get_weather}
    for _ in range(max_steps):
        answer = model.invoke(messages)
        messages.append(answer)
        if not answer.tool_calls:
            return str(answer.content)
        for call in answer.tool_calls:
            result = tools[call["name"]].invoke(call["args"])
            messages.append(ToolMessage(result, tool_call_id=call["id"]))
    return "(gave up)"


def main() -> None:
    with ExitStack() as stack:
        connection: dict[str, Any] = {}
        if not os.environ.get("OPENAI_API_KEY"):
            connection = stand_in_model(stack)
            print("OPENAI_API_KEY is not set: using the local stand-in provider.")

        handler = KavachHandler(agent_name="weather-agent", budget=Budget.daily(0.50))
        model = ChatOpenAI(
            model="gpt-4o-mini", max_tokens=200, callbacks=[handler], **connection
        ).bind_tools([get_weather])
        print("agent:", run_agent(model, "What's the weather in Paris?"))
        (status,) = handler.guard.status()
        print(f"spent ${status.spent / 1e9:.6f} of ${status.limit / 1e9:.2f} today")

        tiny = KavachHandler(agent_name="tiny-agent", budget=Budget.daily(0.000001))
        broke = ChatOpenAI(model="gpt-4o-mini", max_tokens=200, callbacks=[tiny], **connection)
        try:
            broke.invoke("Hello?")
        except BudgetExceededError as refusal:
            print("refused before the call:", refusal)


if __name__ == "__main__":
    main()
