"""Every guardrail refuses before the call, with its own error, and (by default) stops the agent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from kavach import (
    AgentKavach,
    AgentKilledError,
    Budget,
    CallLimitError,
    CallSpec,
    CostPerCallError,
    KavachConfigError,
    LoopDetectedError,
    RuntimeLimitError,
    TokenLimitError,
    Usage,
    VelocityError,
)
from kavach.guardrails import find_cycle

from .conftest import Recorder, spec

Make = Callable[..., AgentKavach]


def test_max_calls_per_run_counts_per_run(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), max_calls_per_run=3, kill_on_guardrail=False)
    with guard.run("first"):
        for i in range(3):
            guard.reserve(spec(content=str(i))).commit(Usage(10, 10))
        with pytest.raises(CallLimitError) as info:
            guard.reserve(spec(content="4"))
        assert "max_calls_per_run=3" in str(info.value)
    with guard.run("second"):
        guard.reserve(spec(content="fresh run")).commit(Usage(10, 10))


def test_guardrail_trip_stops_the_agent_by_default(make_guard: Make) -> None:
    reasons: list[str] = []
    recorder = Recorder()
    guard = make_guard(
        budget=Budget.daily(10), max_calls_per_run=1, on_kill=reasons.append, observers=[recorder]
    )
    with guard.run():
        guard.reserve(spec()).commit(Usage(10, 10))
        with pytest.raises(CallLimitError):
            guard.reserve(spec(content="again"))
    with guard.run(), pytest.raises(AgentKilledError):
        guard.reserve(spec(content="new run"))
    assert len(reasons) == 1 and "max_calls_per_run" in reasons[0]
    assert recorder.calls[1].refusal_reason == "max_calls_per_run"


def test_max_tokens_per_run_holds_worst_case_tokens(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), max_tokens_per_run=5000, kill_on_guardrail=False)
    with guard.run():
        first = guard.reserve(spec(input_tokens=1000, max_output=1000))
        second = guard.reserve(spec(input_tokens=1000, max_output=1000, content="b"))
        with pytest.raises(TokenLimitError):  # 4000 held + 2000 > 5000
            guard.reserve(spec(input_tokens=1000, max_output=1000, content="c"))
        first.commit(Usage(1000, 100))
        second.commit(Usage(1000, 100))
        guard.reserve(spec(input_tokens=1000, max_output=1000, content="d")).release()


def test_max_runtime(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), max_runtime_seconds=0.05, kill_on_guardrail=False)
    with guard.run():
        guard.reserve(spec()).commit(Usage(1, 1))
        time.sleep(0.1)
        with pytest.raises(RuntimeLimitError):
            guard.reserve(spec(content="late"))


def test_max_cost_per_call_refuses_in_reserve_mode_and_caps_in_strict(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), max_cost_per_call=0.0015, kill_on_guardrail=False)
    with pytest.raises(CostPerCallError) as info:
        guard.reserve(spec(input_tokens=1000, max_output=1000))  # worst case $0.002
    assert "max_cost_per_call=$0.0015" in str(info.value)
    strict = make_guard(budget=Budget.daily(10), max_cost_per_call=0.0015, mode="strict")
    r = strict.reserve(spec(input_tokens=1000, max_output=1000))
    assert r.max_output_tokens == 500
    r.release()


def test_loop_detection_on_identical_requests(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), loop_threshold=3, kill_on_guardrail=False)
    with guard.run():
        guard.reserve(spec(content="same")).commit(Usage(1, 1))
        guard.reserve(spec(content="same")).commit(Usage(1, 1))
        with pytest.raises(LoopDetectedError) as info:
            guard.reserve(spec(content="same"))
        assert "same request 3 times" in str(info.value)
        guard.reserve(spec(content="different")).commit(Usage(1, 1))


def test_loop_detection_on_tool_call_cycles(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), loop_threshold=3, kill_on_guardrail=False)
    with guard.run():
        for i in range(3):
            r = guard.reserve(spec(content=f"step {i}"))
            r.commit(Usage(1, 1), tool_calls=["search:{'q': 'x'}", "read:{'id': 1}"])
        with pytest.raises(LoopDetectedError) as info:
            guard.reserve(spec(content="step 4"))
        assert "search:{'q': 'x'} -> read:{'id': 1}" in str(info.value)


def test_find_cycle() -> None:
    assert find_cycle(["a", "a", "a"], 3) == ("a",)
    assert find_cycle(["x", "a", "b", "a", "b"], 2) == ("a", "b")
    assert find_cycle(["a", "b", "a", "c"], 2) is None


def test_velocity_limit(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), max_spend_per_minute=0.005, kill_on_guardrail=False)
    with guard.run():
        for i in range(3):
            guard.reserve(spec(content=str(i))).commit(Usage(1000, 1000))  # $0.002 each
        with pytest.raises(VelocityError) as info:
            guard.reserve(spec(content="fast"))
        assert "/minute" in str(info.value)


def test_velocity_counts_calls_in_flight(make_guard: Make) -> None:
    # Concurrent calls all passed on spend not yet settled: fifty $0.002 calls went through
    # a $0.01/minute limit. Calls in flight count at their worst case until they settle.
    guard = make_guard(budget=Budget.daily(10), max_spend_per_minute=0.01, kill_on_guardrail=False)
    held = [guard.reserve(spec(content=str(i))) for i in range(5)]  # $0.002 worst case each
    with pytest.raises(VelocityError) as info:
        guard.reserve(spec(content="sixth"))
    assert "held by calls in flight" in str(info.value)
    for r in held[:4]:
        r.commit(Usage(100, 100))  # $0.0002 each, not the $0.002 held
    held[4].release()  # a failed call spends nothing
    guard.reserve(spec(content="after")).commit(Usage(100, 100))  # $0.0008 spent: room


def test_velocity_holds_under_concurrent_calls(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), max_spend_per_minute=0.01, kill_on_guardrail=False)
    barrier = threading.Barrier(20)
    admitted: list[int] = []

    def call(i: int) -> None:
        barrier.wait()
        try:
            r = guard.reserve(spec(content=f"call {i}"))
        except VelocityError:
            return
        admitted.append(i)
        time.sleep(0.01)
        r.commit(Usage(1000, 1000))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 5  # $0.01 a minute pays for five $0.002 calls
    assert guard.guardrails._spend_sum == 5 * 2_000_000


def test_refused_request_does_not_count_toward_a_loop(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(0.0001), loop_threshold=2, kill_on_guardrail=False)
    for _ in range(3):
        with pytest.raises(Exception) as info:
            guard.reserve(spec(content="same"))
        assert type(info.value).__name__ == "BudgetExceededError"


def test_retrying_a_request_the_provider_failed_is_not_a_loop(make_guard: Make) -> None:
    # A 429 or 500 retried with backoff: nothing was billed, and the agent is not stuck.
    guard = make_guard(budget=Budget.daily(10), loop_threshold=3)
    with guard.run():
        for _ in range(5):
            with pytest.raises(TimeoutError), guard.reserve(spec(content="same")):
                raise TimeoutError("provider timed out")
        guard.reserve(spec(content="same")).commit(Usage(1, 1))
        guard.reserve(spec(content="same")).commit(Usage(1, 1))
        with pytest.raises(LoopDetectedError):  # answered twice: the third is a loop
            guard.reserve(spec(content="same"))
    assert guard.killed  # kill_on_guardrail: the real loop stops the agent


def test_bad_guardrail_values() -> None:
    with pytest.raises(KavachConfigError):
        AgentKavach("a", loop_threshold=1)
    with pytest.raises(KavachConfigError):
        AgentKavach("a", max_calls_per_run=0)


def test_loop_detection_sees_identical_long_histories_and_their_differences(
    make_guard: Make,
) -> None:
    guard = make_guard(budget=Budget.daily(10), loop_threshold=3, kill_on_guardrail=False)
    history = [
        {"role": "user" if i % 2 else "assistant", "content": f"turn {i} " * 50} for i in range(40)
    ]
    history.append({"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]})

    def call(messages: list[dict[str, object]]) -> None:
        guard.reserve(
            CallSpec(
                provider="openai",
                model="test-model",
                messages=messages,
                max_output_tokens=10,
                input_tokens=100,
            )
        ).commit(Usage(1, 1))

    with guard.run():
        call(list(history))
        changed = [dict(m) for m in history]
        changed[3]["content"] = "an edited turn"  # one message differs: not a loop
        call(changed)
        changed_tool = [dict(m) for m in history]
        changed_tool[-1]["tool_calls"] = [{"id": "c2"}]  # a nested value differs
        call(changed_tool)
        call([dict(m) for m in history])  # equal content in new objects: the same request
        with pytest.raises(LoopDetectedError):
            call(list(history))


def test_a_tool_call_cycle_stays_detected_until_the_agent_breaks_it(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(10), loop_threshold=2, kill_on_guardrail=False)
    with guard.run():
        for i in range(2):
            guard.reserve(spec(content=f"step {i}")).commit(Usage(1, 1), tool_calls=["a", "b"])
        for attempt in range(2):  # the refusal does not clear the detected cycle
            with pytest.raises(LoopDetectedError):
                guard.reserve(spec(content=f"retry {attempt}"))
    with guard.run():  # a new run starts with a clean history
        guard.reserve(spec(content="fresh")).commit(Usage(1, 1))


def test_a_long_run_remembers_a_bounded_number_of_requests(make_guard: Make) -> None:
    from kavach.guardrails import _MAX_FINGERPRINTS

    guard = make_guard(budget=Budget.daily(100), loop_threshold=3, kill_on_guardrail=False)
    with guard.run() as run_id:
        for i in range(_MAX_FINGERPRINTS + 500):
            guard.reserve(spec(content=f"distinct {i}")).commit(Usage(1, 1))
        run = guard.guardrails._runs[run_id]
        assert _MAX_FINGERPRINTS <= len(run.requests) + len(run.older) <= 2 * _MAX_FINGERPRINTS
        for i in range(3 * _MAX_FINGERPRINTS):
            guard.reserve(spec(content=f"more {i}")).commit(Usage(1, 1))
        assert len(run.requests) + len(run.older) <= 2 * _MAX_FINGERPRINTS
        # A loop is still caught: the latest requests are the ones remembered.
        for _ in range(2):
            guard.reserve(spec(content="stuck")).commit(Usage(1, 1))
        with pytest.raises(LoopDetectedError):
            guard.reserve(spec(content="stuck"))


def test_a_repeat_is_counted_across_the_remembered_generations(make_guard: Make) -> None:
    from kavach.guardrails import _MAX_FINGERPRINTS

    guard = make_guard(budget=Budget.daily(100), loop_threshold=3, kill_on_guardrail=False)
    with guard.run():
        guard.reserve(spec(content="stuck")).commit(Usage(1, 1))
        for i in range(_MAX_FINGERPRINTS):  # fills a generation: "stuck" is now the older one
            guard.reserve(spec(content=f"distinct {i}")).commit(Usage(1, 1))
        guard.reserve(spec(content="stuck")).commit(Usage(1, 1))
        with pytest.raises(LoopDetectedError, match="3 times"):
            guard.reserve(spec(content="stuck"))
