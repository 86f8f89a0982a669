"""Exactly one settlement per reservation, whatever happens."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from kavach import AgentKavach, Budget, Usage
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
