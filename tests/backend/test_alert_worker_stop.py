"""Stopping the alert worker (the backend shutting down) while it evaluates budgets."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from backend.alert_worker import AlertWorker


def _worker(evaluate: object) -> AlertWorker:
    worker = AlertWorker(SimpleNamespace(settings=SimpleNamespace(alert_interval=60.0)))  # type: ignore[arg-type]
    worker.evaluate = evaluate  # type: ignore[method-assign]
    return worker


def test_stopping_lets_a_round_in_progress_finish_its_queries() -> None:
    # Cancelled mid-query, a round left aiosqlite's thread to answer a closed event loop
    # (an unhandled thread exception at the next test's setup, once a segfault).
    finished: list[int] = []

    async def main() -> None:
        entered, answered = asyncio.Event(), asyncio.Event()

        async def evaluate(org_id: int) -> None:
            entered.set()
            await answered.wait()  # a query in flight
            finished.append(org_id)

        worker = _worker(evaluate)
        await worker.start(SimpleNamespace(state=SimpleNamespace(hub=None)))
        worker.notify(7)
        await entered.wait()
        stopping = asyncio.create_task(worker.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the query, not cancelling it
        answered.set()
        await asyncio.wait_for(stopping, 5)

    asyncio.run(main())
    assert finished == [7]


def test_a_round_that_does_not_finish_is_cancelled_after_the_stop_timeout() -> None:
    cancelled: list[bool] = []

    async def main() -> None:
        entered = asyncio.Event()

        async def evaluate(org_id: int) -> None:
            entered.set()
            try:
                await asyncio.Event().wait()  # a query that never answers
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        worker = _worker(evaluate)
        worker.stop_timeout = 0.2
        await worker.start(SimpleNamespace(state=SimpleNamespace(hub=None)))
        worker.notify(7)
        await entered.wait()
        await asyncio.wait_for(worker.stop(), 5)

    asyncio.run(main())
    assert cancelled == [True]


def test_a_task_that_fails_while_stopping_is_logged_and_stopping_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from backend import db

    in_progress = "cannot perform operation: another operation is in progress"

    async def main() -> None:
        async def cut_query() -> None:
            try:
                await asyncio.sleep(60)  # a query in flight past the stop timeout
            except asyncio.CancelledError:
                raise RuntimeError(in_progress) from None  # as asyncpg fails a cut query

        async def failed() -> None:
            raise RuntimeError("the round failed")

        slow = asyncio.create_task(cut_query(), name="agentkavach-alerts")
        quick = asyncio.create_task(failed(), name="agentkavach-retention")
        await asyncio.sleep(0)
        await db.finish_or_cancel(slow, 0.05)  # raised into the shutdown, which stopped there
        await db.finish_or_cancel(quick, 5)  # left for asyncio to report at exit

    with caplog.at_level(logging.ERROR, logger="agentkavach.backend"):
        asyncio.run(main())
    assert [
        (r.getMessage(), str(r.exc_info[1]) if r.exc_info else None) for r in caplog.records
    ] == [
        ("agentkavach-alerts failed while stopping", in_progress),
        ("agentkavach-retention failed while stopping", "the round failed"),
    ]
