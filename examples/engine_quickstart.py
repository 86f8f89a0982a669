"""The budget engine on its own: a small agent loop under a hard daily budget, offline.

    python examples/engine_quickstart.py

A stand-in "model" answers every call with a made-up usage; the guard reserves each call's
worst case before it runs and stops the loop before the budget can be passed.
"""

from __future__ import annotations

import random

from kavach import AgentKavach, AgentKilledError, Budget, BudgetExceededError, CallSpec, Usage


def main() -> None:
    stops: list[str] = []
    guard = AgentKavach(
        agent_name="quickstart-bot",
        budget=Budget.daily(0.05),
        mode="strict",
        on_kill=stops.append,
    )
    rng = random.Random(7)
    history = [{"role": "user", "content": "Plan a three-day trip to Kyoto."}]
    calls = 0
    try:
        while True:
            spec = CallSpec(provider="openai", model="gpt-4o", messages=list(history))
            with guard.reserve(spec) as reservation:
                granted = reservation.max_output_tokens or 0
                produced = rng.randint(granted // 2, granted)  # the model stops when it likes
                # A real provider reports the input it counted; the guard counted it exactly too.
                input_tokens = reservation.plan.input_tokens if reservation.plan else 0
                reservation.commit(Usage(input_tokens=input_tokens, output_tokens=produced))
            calls += 1
            history.append({"role": "assistant", "content": f"step {calls}"})
            print(
                f"call {calls:2d}: max_tokens={granted:5d}  spent ${guard.spent:.5f}"
                f"  remaining ${guard.remaining:.5f}"
            )
    except (BudgetExceededError, AgentKilledError) as stop:
        print(f"\nstopped after {calls} calls: {stop}")
    status = guard.status()[0]
    print(
        f"spent {status.spent:,} of {status.limit:,} nano-dollars; never over the limit: "
        f"{status.spent <= status.limit}"
    )
    if stops:
        print(f"on_kill ran once: {stops[0]}")


if __name__ == "__main__":
    main()
