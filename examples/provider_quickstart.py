"""Guarded OpenAI and Anthropic calls, offline, against the local stand-in provider.

    pip install 'agentkavach[openai,anthropic]'
    python examples/provider_quickstart.py

Swap the stand-in's base URL for nothing (and set OPENAI_API_KEY / ANTHROPIC_API_KEY) to
run the same code against the real providers.
"""

from __future__ import annotations

import anthropic
import openai

from kavach import AgentKavach, Budget, BudgetExceededError
from kavach._devtools.standin import Reply, StandIn


def main() -> None:
    with StandIn() as server:
        guard = AgentKavach("quickstart", Budget.daily(0.01), mode="strict")

        # 1. The facade builds the provider client itself.
        facade = AgentKavach(
            "facade",
            Budget.daily(1),
            provider="openai",
            llm_key="sk-demo",
            base_url=server.openai_url,
        )
        reply = facade.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello!"}])
        print("facade:", reply.choices[0].message.content, f"(spent ${facade.spent:.6f})")

        # 2. Or wrap a client you already have: same types, every billable call guarded.
        client = guard.wrap(openai.OpenAI(base_url=server.openai_url, api_key="sk-demo"))
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Stream, please"}], stream=True
        ):
            print(chunk.choices[0].delta.content or "", end="")
        print(
            f"\nstrict mode asked for max_completion_tokens={server.last.body['max_completion_tokens']}"
        )

        claude = guard.wrap(anthropic.Anthropic(base_url=server.anthropic_url, api_key="demo"))
        message = claude.messages.create(
            model="claude-sonnet-4-0", max_tokens=200, messages=[{"role": "user", "content": "Hi"}]
        )
        print("anthropic:", message.content[0].text)

        # 3. A provider that ignores max tokens is cut when the stream outruns its reservation.
        server.default = Reply(output_tokens=50_000, honor_max_tokens=False)
        try:
            for _ in client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Go on forever"}], stream=True
            ):
                pass
        except BudgetExceededError as exc:
            print("cut:", exc)
        print(f"spent ${guard.spent:.6f} of $0.01; open holds: {guard.ledger.open_holds}")


if __name__ == "__main__":
    main()
