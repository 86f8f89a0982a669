"""Exactly one settlement per reservation, whatever happens."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import anyio
import pytest

from kavach import AgentKavach, Budget, BudgetExceededError, Usage
from kavach.ledger import MemoryLedger

from .conftest import Recorder, spec

Make = Callable[..., AgentKavach]


def held(guard: AgentKavach) -> int:
    return guard.status()[0].reserved


def test_commit_then_release_is_one_settlement(make_guard: Make) -> None:
    recorder = Recorder()
    guard = make_guard(budget=Budget.daily(1), observers=[recorder])
    r = guard.reserve(spec())
    assert held(guard) == r.reserved_nanos == 2_000_000
    r.commit(Usage(1000, 10))
    r.commit(Usage(1000, 999))
    r.release()
    assert guard.status()[0].spent == 1_010_000 and held(guard) == 0
    assert [e.status for e in recorder.calls] == ["ok"]


def test_exception_in_block_releases(make_guard: Make) -> None:
    recorder = Recorder()
    guard = make_guard(budget=Budget.daily(1), observers=[recorder])
    with pytest.raises(RuntimeError), guard.reserve(spec()):
        raise RuntimeError("provider 500")
    assert held(guard) == 0 and guard.status()[0].spent == 0
    assert recorder.calls[-1].status == "error" and "provider 500" in (
        recorder.calls[-1].error or ""
    )


def test_a_commit_with_bad_usage_leaves_the_hold_to_be_released(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(1))
    with pytest.raises(AttributeError), guard.reserve(spec()) as r:
        r.commit({"input_tokens": 10})  # type: ignore[arg-type]  # a dict, not a Usage
    assert held(guard) == 0 and guard.ledger.open_holds == 0  # given back, not leaked
    assert r.settled


def test_block_without_commit_releases(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(1))
    with guard.reserve(spec()):
        pass
    assert held(guard) == 0


@pytest.mark.anyio
async def test_task_cancellation_releases(make_guard: Make) -> None:
    recorder = Recorder()
    guard = make_guard(budget=Budget.daily(1), observers=[recorder])
    started = anyio.Event()

    async def call() -> None:
        async with await guard.areserve(spec()):
            started.set()
            await anyio.sleep(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await started.wait()
        assert held(guard) == 2_000_000
        tg.cancel_scope.cancel()
    assert held(guard) == 0
    assert recorder.calls[-1].status == "cancelled"
    assert isinstance(guard.ledger, MemoryLedger) and guard.ledger.open_holds == 0


@pytest.mark.anyio
async def test_async_commit_and_release(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(1))
    async with await guard.areserve(spec()) as r:
        await r.acommit(Usage(500, 500))
    assert guard.status()[0].spent == 1_000_000
    r2 = await guard.areserve(spec(content="b"))
    await r2.arelease()
    await r2.arelease()
    assert held(guard) == 0


def test_repr_names_the_call(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(1))
    r = guard.reserve(spec())
    assert "test-model" in repr(r) and "open" in repr(r)
    r.release()
    assert "settled" in repr(r)


def test_several_choices_are_held_at_max_output_tokens_each(make_guard: Make) -> None:
    # n choices may each run to max output tokens, all billed; the input is billed once.
    guard = make_guard(budget=Budget.daily(1))
    r = guard.reserve(dataclasses.replace(spec(max_output=1000), choices=3))
    assert r.max_output_tokens == 3000  # every choice's output together, as streams meter it
    assert r.reserved_nanos == held(guard) == 1000 * 1000 + 3 * 1000 * 1000
    r.release()

    # Strict mode sizes each choice to what is left: 10,000 nanos after the input pay for
    # 10 output tokens, three for each choice.
    budget = Budget.daily(0.001010)
    strict = make_guard(agent_name="s", budget=budget, mode="strict", min_output_tokens=2)
    r = strict.reserve(dataclasses.replace(spec(max_output=None), choices=3))
    assert r.max_output_tokens // 3 == 3 and r.reserved_nanos <= budget.limit
    r.release()
    # ... and never fewer than min_output_tokens per choice: 6 choices need 12.
    with pytest.raises(BudgetExceededError):
        strict.reserve(dataclasses.replace(spec(max_output=None), choices=6))
