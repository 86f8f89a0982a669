"""Delivery: once per threshold and channel under concurrency, off the call path, retried, flushed."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kavach import AgentKavach, CallLimitError
from kavach.alerts import Alert, MemoryDedupStore
from kavach.events import GuardrailTrip
from tests.kavach.alerts.support import (
    SPEC,
    USAGE,
    HttpRecorder,
    Reply,
    alert_guard,
    spend,
)

SECRET = "whsec-0123456789abcdef"


def two_channel_guard(recorder: HttpRecorder) -> AgentKavach:
    return alert_guard(
        105,
        channels=[
            AgentKavach.channel(
                "slack", thresholds=[0.7, 0.9], webhook_url=recorder.url + "/slack"
            ),
            AgentKavach.channel(
                "webhook", thresholds=[0.7, 0.9], url=recorder.url + "/hook", secret=SECRET
            ),
        ],
    )


def thresholds_seen(recorder: HttpRecorder) -> dict[str, list[float]]:
    out = {
        "slack": sorted(
            0.7 if "70%" in r.json()["text"] else 0.9 if "90%" in r.json()["text"] else -1.0
            for r in recorder.at("/slack")
        ),
        "hook": sorted(r.json()["budget"]["threshold"] for r in recorder.at("/hook")),
    }
    return out


def test_100_concurrent_threads_send_one_alert_per_threshold_and_channel(
    recorder: HttpRecorder,
) -> None:
    guard = two_channel_guard(recorder)
    start = threading.Barrier(100)

    def call(_: int) -> None:
        start.wait()
        with guard.reserve(SPEC) as r:
            r.commit(USAGE)

    with ThreadPoolExecutor(max_workers=100) as pool:
        list(pool.map(call, range(100)))
    guard.close()
    assert thresholds_seen(recorder) == {"slack": [0.7, 0.9], "hook": [0.7, 0.9]}
    assert guard.alerts is not None and guard.alerts.stats.sent == 4


@pytest.mark.anyio
async def test_100_concurrent_tasks_send_one_alert_per_threshold_and_channel(
    recorder: HttpRecorder,
) -> None:
    guard = two_channel_guard(recorder)

    async def call() -> None:
        async with await guard.areserve(SPEC) as r:
            await asyncio.sleep(0)
            await r.acommit(USAGE)

    await asyncio.gather(*(call() for _ in range(100)))
    await guard.aclose()
    assert thresholds_seen(recorder) == {"slack": [0.7, 0.9], "hook": [0.7, 0.9]}


def test_duplicate_rules_and_a_shared_store_send_once(recorder: HttpRecorder) -> None:
    # Two guards (think: two processes) for one agent, each crossing the same budget period
    # on its own ledger, share one de-duplication store: one alert per threshold.
    store = MemoryDedupStore()
    rule = AgentKavach.channel("slack", threshold=0.7, webhook_url=recorder.url + "/slack")
    again = AgentKavach.channel("slack", threshold=0.7, webhook_url=recorder.url + "/slack")
    guards = [alert_guard(105, channels=[rule, rule], alert_dedup_store=store) for _ in range(2)]
    guards.append(alert_guard(105, channels=[again], alert_dedup_store=store))
    for g in guards:
        spend(g, 75)
        g.close()
    assert len(recorder.at("/slack")) == 1


def test_a_hanging_channel_does_not_slow_the_calls_and_is_retried(
    recorder: HttpRecorder,
) -> None:
    delay = 5.0
    recorder.script("/slow", Reply(delay=delay))
    baseline = alert_guard(1000)
    t0 = time.perf_counter()
    spend(baseline, 300)
    base_elapsed = time.perf_counter() - t0

    guard = alert_guard(
        1000,
        channels=[
            AgentKavach.channel(
                "webhook", thresholds=[0.05, 0.1, 0.2], url=recorder.url + "/slow", timeout=0.3
            )
        ],
    )
    assert guard.alerts is not None
    guard.alerts.backoff_seconds = 0.05
    guard.alerts.max_attempts = 3
    t0 = time.perf_counter()
    spend(guard, 300)  # crosses 5%, 10%, 20% early on
    elapsed = time.perf_counter() - t0
    first = recorder.wait_for("/slow", 1)
    # The calls finished while the channel was still hanging on its first request ...
    assert time.monotonic() < first[0].at + delay
    # ... and the alerts added almost nothing to them.
    assert elapsed - base_elapsed < 0.1 * delay, (elapsed, base_elapsed)
    # About 4 s of deliveries when idle; a loaded 2-core CI machine once needed more than 10.
    # close() returns as soon as they are done.
    guard.close(timeout=30)
    stats = guard.alerts.stats.channels["webhook"]
    assert len(recorder.at("/slow")) == 9  # 3 alerts x 3 attempts
    assert stats.retries == 6 and stats.failed == 3 and stats.sent == 0
    assert "no answer within 0.3s" in (stats.last_error or "")


def test_a_500_is_retried_until_delivered(recorder: HttpRecorder) -> None:
    recorder.script("/flaky", Reply(500, "oops"), Reply(503, "busy"), Reply(200))
    guard = alert_guard(
        105, channels=[AgentKavach.channel("webhook", threshold=0.7, url=recorder.url + "/flaky")]
    )
    assert guard.alerts is not None
    guard.alerts.backoff_seconds = 0.01
    spend(guard, 75)
    guard.close()
    stats = guard.alerts.stats.channels["webhook"]
    assert len(recorder.at("/flaky")) == 3
    assert (stats.sent, stats.retries, stats.failed) == (1, 2, 0)


def test_retry_after_is_honoured(recorder: HttpRecorder) -> None:
    recorder.script("/limited", Reply(429, "slow down", {"Retry-After": "1"}), Reply(200))
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel("slack", threshold=0.7, webhook_url=recorder.url + "/limited")
        ],
    )
    assert guard.alerts is not None
    guard.alerts.backoff_seconds = 0.01
    spend(guard, 75)
    guard.close()
    first, second = recorder.at("/limited")
    assert second.at - first.at >= 0.95
    assert guard.alerts.stats.channels["slack"].sent == 1


def test_guardrail_trips_alert_once_per_cooldown(recorder: HttpRecorder) -> None:
    def guard_with(cooldown: float, path: str) -> AgentKavach:
        return alert_guard(
            105,
            max_calls_per_run=1,
            kill_on_guardrail=False,
            channels=[
                AgentKavach.channel(
                    "webhook",
                    guardrails=True,
                    url=recorder.url + path,
                    cooldown=cooldown,
                    thresholds=[1.0],
                )
            ],
        )

    for cooldown, path, expected in ((300, "/cool", 1), (0, "/hot", 3)):
        guard = guard_with(cooldown, path)
        with guard.run():
            spend(guard, 1)
            for _ in range(3):
                with pytest.raises(CallLimitError):
                    spend(guard, 1)
                assert guard.alerts is not None and guard.alerts.flush(5)
        guard.close()
        bodies = [r.json() for r in recorder.at(path)]
        assert len(bodies) == expected
        assert all(
            b["type"] == "guardrail" and b["guardrail"] == "max_calls_per_run" for b in bodies
        )


def test_close_flushes_alerts_still_in_flight(recorder: HttpRecorder) -> None:
    recorder.script("/slowish", Reply(delay=0.5))
    guard = alert_guard(
        105, channels=[AgentKavach.channel("webhook", threshold=0.7, url=recorder.url + "/slowish")]
    )
    spend(guard, 75)
    guard.close()
    assert guard.alerts is not None and guard.alerts.stats.sent == 1


@pytest.mark.anyio
async def test_aclose_flushes_without_blocking_the_event_loop(recorder: HttpRecorder) -> None:
    recorder.script("/slowish", Reply(delay=0.5))
    guard = alert_guard(
        105, channels=[AgentKavach.channel("webhook", threshold=0.7, url=recorder.url + "/slowish")]
    )
    spend(guard, 75)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await guard.aclose()
    task.cancel()
    assert guard.alerts is not None and guard.alerts.stats.sent == 1
    assert ticks >= 20  # the loop kept running while the flush waited ~0.5s


def test_close_is_bounded_in_time(recorder: HttpRecorder, caplog: pytest.LogCaptureFixture) -> None:
    recorder.script("/stuck", Reply(delay=10))
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel("webhook", threshold=0.7, url=recorder.url + "/stuck", timeout=30)
        ],
    )
    spend(guard, 75)
    recorder.wait_for("/stuck", 1)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kavach.alerts"):
        guard.close(timeout=0.5)
    assert time.monotonic() - t0 < 1.5
    assert guard.alerts is not None and guard.alerts.stats.abandoned == 1
    assert "1 alert(s) were still undelivered" in caplog.text


def test_alerts_are_flushed_at_interpreter_exit(recorder: HttpRecorder) -> None:
    script = textwrap.dedent(
        f"""
        from kavach import AgentKavach
        from tests.kavach.alerts.support import alert_guard, spend

        guard = alert_guard(105, webhook_url={recorder.url + "/exit"!r})
        spend(guard, 75)
        # no close(): the atexit hook must deliver
        """
    )
    root = Path(__file__).resolve().parents[3]
    recorder.script("/exit", Reply(delay=0.3))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert [r.json()["budget"]["threshold"] for r in recorder.at("/exit")] == [0.7]


class BlockingStore:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def claim(self, key: str, ttl_seconds: float) -> bool:
        self.entered.set()
        self.release.wait(10)
        return True


def test_a_full_queue_drops_and_counts_but_never_blocks_or_raises(
    recorder: HttpRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    store = BlockingStore()
    guard = AgentKavach(
        "bot",
        budget=[],
        channels=[AgentKavach.channel("slack", threshold=0.5, webhook_url=recorder.url + "/q")],
        alert_dedup_store=store,
    )
    assert guard.alerts is not None
    guard.alerts.queue_size = 2

    def trip() -> None:
        guard.alerts.on_guardrail(  # type: ignore[union-attr]
            GuardrailTrip("bot", "run", "loop_detected", "same request 5 times", datetime.now(UTC))
        )

    with caplog.at_level(logging.WARNING, logger="kavach.alerts"):
        trip()
        assert store.entered.wait(5)  # the worker is now stuck in the store
        t0 = time.perf_counter()
        for _ in range(5):
            trip()
        # A trip that waited for room would wait until the store is released, below.
        assert time.perf_counter() - t0 < 1.0
        store.release.set()
        guard.close()
    assert guard.alerts.stats.dropped == 3
    assert caplog.text.count("alert queue full") == 1


class BrokenStore:
    def claim(self, key: str, ttl_seconds: float) -> bool:
        raise ConnectionError("redis is down")


def test_a_broken_dedup_store_does_not_silence_alerts(recorder: HttpRecorder) -> None:
    guard = alert_guard(
        105,
        channels=[AgentKavach.channel("slack", threshold=0.7, webhook_url=recorder.url + "/s")],
        alert_dedup_store=BrokenStore(),
    )
    spend(guard, 75)
    guard.close()
    assert len(recorder.at("/s")) == 1


def test_ordinary_calls_do_not_reach_the_dispatcher(recorder: HttpRecorder) -> None:
    guard = alert_guard(
        105, channels=[AgentKavach.channel("slack", threshold=0.9, webhook_url=recorder.url + "/s")]
    )
    with guard.reserve(SPEC) as r:
        r.commit(USAGE)
    assert r.event is None  # no call event is even built for the dispatcher
    spend(guard, 10)
    assert guard.alerts is not None and guard.alerts.stats.events == 0
    guard.close()


def test_a_guard_used_again_after_close_still_alerts(recorder: HttpRecorder) -> None:
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel("webhook", thresholds=[0.5, 0.7], url=recorder.url + "/again")
        ],
    )
    spend(guard, 55)
    guard.close()
    assert len(recorder.at("/again")) == 1
    spend(guard, 20)
    guard.close()
    assert [r.json()["budget"]["threshold"] for r in recorder.at("/again")] == [0.5, 0.7]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_alerts_on_its_own_thread(recorder: HttpRecorder) -> None:
    import os

    guard = alert_guard(
        105, channels=[AgentKavach.channel("webhook", threshold=0.5, url=recorder.url + "/fork")]
    )
    spend(guard, 10)  # the alert loop thread exists in the parent
    pid = os.fork()
    if pid == 0:  # the child: cross a threshold and flush, then leave without cleanup
        try:
            spend(guard, 45)
            guard.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert [r.json()["agent"] for r in recorder.wait_for("/fork", 1)] == ["bot"]
    guard.close()


@pytest.mark.anyio
async def test_a_hanging_channel_does_not_block_async_callers(recorder: HttpRecorder) -> None:
    hang = 3.0
    recorder.script("/slow", Reply(delay=hang))
    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel("slack", thresholds=[0.5, 0.7], webhook_url=recorder.url + "/slow")
        ],
    )

    async def call() -> None:
        async with await guard.areserve(SPEC) as r:
            await r.acommit(USAGE)

    t0 = time.perf_counter()
    await asyncio.gather(*(call() for _ in range(100)))
    elapsed = time.perf_counter() - t0
    first = await asyncio.to_thread(recorder.wait_for, "/slow", 2)
    assert len(first) == 2 and time.monotonic() < min(r.at for r in first) + hang
    # Calls that waited for the channel would take the whole hang; these did not. (Not a
    # speed bound: 100 calls took 0.8 s on a loaded 2-core CI machine, 0.1 s idle.)
    assert elapsed < hang - 0.5, elapsed
    await guard.aclose(timeout=5)
    assert guard.alerts is not None and guard.alerts.stats.sent == 2


def test_one_channel_shows_its_alerts_in_the_order_they_were_raised() -> None:
    # The 70% alert takes a while to deliver; the 90% one, raised a few calls later, waits for
    # it instead of overtaking it. Another channel does not wait.
    shown: list[tuple[str, float]] = []

    def slow_chat(alert: Alert) -> None:
        if alert.threshold == 0.7:
            time.sleep(0.3)
        shown.append(("chat", alert.threshold or 0.0))

    def pager(alert: Alert) -> None:
        shown.append(("pager", alert.threshold or 0.0))

    guard = alert_guard(
        105,
        channels=[
            AgentKavach.channel(slow_chat, thresholds=[0.7, 0.9], name="chat"),
            AgentKavach.channel(pager, threshold=0.9, name="pager"),
        ],
    )
    spend(guard, 95)
    guard.close()
    assert shown == [("pager", 0.9), ("chat", 0.7), ("chat", 0.9)]


def test_the_local_alerts_example_runs() -> None:
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "alerts_local.py")],
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("signature ok") == 2 and "BAD SIGNATURE" not in out
    assert "callable (error): demo-bot: daily budget passed 90%" in out
    assert "after 20 calls" in out


def test_a_failed_delivery_gives_its_claim_back_so_the_next_trip_alerts(
    recorder: HttpRecorder,
) -> None:
    recorder.script("/down", Reply(400, "bad hook"), Reply(200))
    guard = alert_guard(
        105,
        max_calls_per_run=1,
        kill_on_guardrail=False,
        channels=[
            AgentKavach.channel(
                "webhook", guardrails=True, thresholds=[1.0], url=recorder.url + "/down"
            )
        ],
    )
    assert guard.alerts is not None
    with guard.run():
        spend(guard, 1)
        for _ in range(3):
            with pytest.raises(CallLimitError):
                spend(guard, 1)
            assert guard.alerts.flush(5)
    guard.close()
    # the first trip's alert failed; the second trip sends it, the third is within the cooldown
    assert len(recorder.at("/down")) == 2
    stats = guard.alerts.stats.channels["webhook"]
    assert (stats.failed, stats.sent, stats.deduplicated) == (1, 1, 1)


def test_a_threshold_alert_one_process_failed_to_send_is_sent_by_the_next_once(
    recorder: HttpRecorder,
) -> None:
    # Three guards (think: processes) share one store, each crossing 70% on its own ledger.
    # The first one's delivery fails for good: the second sends it, the third does not.
    recorder.script("/s", Reply(404, "no_service"), Reply(200))
    store = MemoryDedupStore()
    sent = []
    for _ in range(3):
        guard = alert_guard(
            105,
            channels=[AgentKavach.channel("slack", threshold=0.7, webhook_url=recorder.url + "/s")],
            alert_dedup_store=store,
        )
        spend(guard, 75)
        guard.close()
        assert guard.alerts is not None
        sent.append(guard.alerts.stats.sent)
    assert len(recorder.at("/s")) == 2
    assert sent == [0, 1, 0]


def test_the_memory_store_releases_a_claim() -> None:
    store = MemoryDedupStore()
    assert store.claim("k", 60) and not store.claim("k", 60)
    store.release("k")
    assert store.claim("k", 60) and not store.claim("k", 60)
    store.release("unknown")
