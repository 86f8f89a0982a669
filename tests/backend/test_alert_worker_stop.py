"""Stopping the alert worker (the backend shutting down) while it evaluates budgets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

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
