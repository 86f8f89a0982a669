"""The reporter ships every event exactly once, whatever the backend does."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kavach import Usage
from kavach.events import CallEvent
from kavach.reporting import BackendAPI, BackendConfig, Reporter

from .fakebackend import FakeBackend


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    server = FakeBackend()
    yield server
    server.close()


def make(backend: FakeBackend, tmp_path: Path, **kw: Any) -> Reporter:
    api = BackendAPI(BackendConfig(api_key="ak_test_abc", endpoint=backend.url))
    return Reporter(api, spool_root=tmp_path, flush_interval=0.02, **kw)


def event(i: int) -> dict[str, Any]:
    return {
        "id": f"e{i:05d}",
        "agent": "bot",
        "provider": "openai",
        "model": "gpt-4o",
        "status": "ok",
        "started_at": "2026-11-28T12:00:00+00:00",
        "cost_nanos": i,
    }


def test_events_arrive_in_batches(backend: FakeBackend, tmp_path: Path) -> None:
    reporter = make(backend, tmp_path, batch_size=50)
    for i in range(120):
        reporter.enqueue(event(i))
    assert reporter.flush(5)
    reporter.close()
    assert [e["id"] for e in backend.events] == [f"e{i:05d}" for i in range(120)]
    assert backend.batches >= 3
    assert reporter.stats.sent == 120


def test_backend_down_spools_to_disk_and_replays_in_order(
    backend: FakeBackend, tmp_path: Path
) -> None:
    backend.status = 503
    reporter = make(backend, tmp_path, batch_size=25)
    for i in range(100):
        reporter.enqueue(event(i))
    deadline = time.monotonic() + 5
    while reporter.stats.spooled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reporter.stats.spooled > 0
    assert list(tmp_path.glob("*/seg-*.jsonl"))  # on disk while the backend is away
    for i in range(100, 150):
        reporter.enqueue(event(i))
    backend.status = 202
    assert reporter.flush(10)
    reporter.close()
    assert [e["id"] for e in backend.events] == [f"e{i:05d}" for i in range(150)]
    assert not list(tmp_path.glob("*/seg-*.jsonl"))


def test_429_waits_for_retry_after(backend: FakeBackend, tmp_path: Path) -> None:
    backend.status = 429
    backend.retry_after = "0.6"
    reporter = make(backend, tmp_path)
    reporter.enqueue(event(1))
    deadline = time.monotonic() + 5
    while backend.refused == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    backend.status = 202
    started = time.monotonic()
    while not backend.events and time.monotonic() - started < 5:
        time.sleep(0.01)
    waited = time.monotonic() - started
    reporter.close()
    assert backend.events and waited >= 0.3  # it did not hammer the backend before then
    assert backend.refused == 1
    assert reporter.stats.last_error is not None and "rate limited" in reporter.stats.last_error


def test_refused_key_pauses_warns_once_and_keeps_events(
    backend: FakeBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend.status = 401
    reporter = make(backend, tmp_path)
    with caplog.at_level(logging.WARNING, logger="kavach.reporting"):
        for i in range(10):
            reporter.enqueue(event(i))
        assert not reporter.flush(1)
        reporter.close(timeout=0.5)
    warnings = [r for r in caplog.records if "refused the API key" in r.getMessage()]
    assert len(warnings) == 1
    assert "ak_test_abc" not in caplog.text  # the key never reaches the logs
    spooled = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("*/seg-*.jsonl"))
    assert spooled == 10


def test_events_left_by_a_dead_process_are_sent_by_the_next(
    backend: FakeBackend, tmp_path: Path
) -> None:
    code = f"""
        import os, time
        from pathlib import Path
        from kavach.reporting import BackendAPI, BackendConfig, Reporter
        api = BackendAPI(BackendConfig(api_key="ak_test_x", endpoint="http://127.0.0.1:9"))
        r = Reporter(api, spool_root=Path({str(tmp_path)!r}), flush_interval=0.01)
        for i in range(40):
            r.enqueue({{"id": f"d{{i:03d}}", "agent": "bot"}})
        deadline = time.monotonic() + 10
        while r.stats.spooled < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0)  # dies without closing: no flush, no cleanup
    """
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, cwd=root, timeout=60)
    reporter = make(backend, tmp_path)
    assert reporter.pending == 40
    assert reporter.flush(5)
    reporter.close()
    assert sorted(e["id"] for e in backend.events) == [f"d{i:03d}" for i in range(40)]


def test_a_bad_event_is_set_aside_and_the_rest_delivered(
    tmp_path: Path,
) -> None:
    import httpx

    received: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import gzip
        import json

        events = json.loads(gzip.decompress(request.content))["events"]
        if any(e["id"] == "bad" for e in events):
            return httpx.Response(400, json={"detail": "events[0].started_at: invalid"})
        received.extend(e["id"] for e in events)
        return httpx.Response(202, json={"accepted": len(events)})

    api = BackendAPI(
        BackendConfig(api_key="ak_test_x", endpoint="http://backend.test"),
        transport=httpx.MockTransport(handler),
    )
    reporter = Reporter(api, spool_root=tmp_path, flush_interval=0.01)
    for name in ["a", "b", "bad", "c"]:
        reporter.enqueue({"id": name})
    assert reporter.flush(5)
    reporter.close()
    assert received == ["a", "b", "c"]
    rejected = list(tmp_path.glob("*/rejected.jsonl"))
    assert rejected and "started_at" in rejected[0].read_text()


def test_a_replay_interrupted_midway_resumes_without_resending(
    backend: FakeBackend, tmp_path: Path
) -> None:
    backend.status = 503
    reporter = make(backend, tmp_path, batch_size=25)
    for i in range(100):
        reporter.enqueue(event(i))
    deadline = time.monotonic() + 5
    while reporter.stats.spooled < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.fail_after = 2  # the backend takes two batches of the replay, then fails again
    backend.status = 202
    deadline = time.monotonic() + 5
    while backend.status == 202 and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.status = 202
    assert reporter.flush(10)
    reporter.close()
    assert len(backend.events) == 100
    assert backend.received == 100  # nothing was sent twice


def call_event(i: int) -> CallEvent:
    return CallEvent(
        id=f"c{i:06d}",
        agent="bot",
        run_id="run",
        provider="openai",
        model="gpt-4o",
        operation="chat",
        status="ok",
        started_at=datetime(2026, 11, 28, 12, tzinfo=UTC),
        duration_ms=1.5,
        usage=Usage(input_tokens=i, output_tokens=1),
        cost_nanos=i,
        reserved_nanos=2 * i,
    )


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every microsecond, so a race between two of them shows."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_an_event_that_cannot_become_json_is_set_aside_and_the_sender_lives_on(
    backend: FakeBackend, tmp_path: Path
) -> None:
    reporter = make(backend, tmp_path, batch_size=3)
    broken = dataclasses.replace(call_event(2), started_at="yesterday")  # type: ignore[arg-type]
    for e in [call_event(1), broken, call_event(3)]:
        reporter.on_call(e)
    assert reporter.flush(5)
    reporter.on_call(call_event(4))  # the sender thread still runs
    assert reporter.flush(5)
    reporter.close()
    assert [e["id"] for e in backend.events] == ["c000001", "c000003", "c000004"]
    assert reporter.stats.rejected == 1
    [rejected] = tmp_path.glob("*/rejected.jsonl")
    assert "c000002" in rejected.read_text() and "isoformat" in rejected.read_text()


@pytest.mark.usefixtures("fast_switching")
def test_events_from_many_threads_arrive_once_each_in_wire_form(
    backend: FakeBackend, tmp_path: Path
) -> None:
    # The call path appends without a lock while the sender takes batches and, past the
    # memory cap, spills to disk: no event may be lost or sent twice.
    reporter = make(backend, tmp_path, batch_size=40, max_memory=60)

    def report(t: int) -> None:
        for i in range(500):
            reporter.on_call(call_event(t * 1000 + i))

    threads = [threading.Thread(target=report, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reporter.flush(10)
    reporter.close()
    ids = [e["id"] for e in backend.events]
    assert sorted(ids) == sorted(f"c{t * 1000 + i:06d}" for t in range(4) for i in range(500))
    assert backend.received == 2000  # none twice
    first = next(e for e in backend.events if e["id"] == "c000007")
    assert first["started_at"] == "2026-11-28T12:00:00+00:00"
    assert first["usage"]["input_tokens"] == 7 and first["reserved_nanos"] == 14
    for t in range(4):  # each thread's events keep their order
        mine = [i for i in ids if i.startswith(f"c00{t}")]
        assert mine == sorted(mine)


class ScriptedBackend:
    """An in-process backend: answers with ``answer(ids)``; a call can be held until released."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.answer = 202
        self.retry_after: str | None = None
        self.hold_next = False
        self.holding = threading.Event()
        self.release = threading.Event()

    def handler(self, request: Any) -> Any:
        import gzip
        import json

        import httpx

        ids = [e["id"] for e in json.loads(gzip.decompress(request.content))["events"]]
        if self.hold_next:
            self.hold_next = False
            self.holding.set()
            self.release.wait(10)
            return httpx.Response(503, json={"detail": "overloaded"})
        if self.answer != 202:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(self.answer, json={"detail": "no"}, headers=headers)
        self.received.extend(ids)
        return httpx.Response(202, json={"accepted": len(ids)})

    def reporter(self, root: Path, **kw: Any) -> Reporter:
        import httpx

        api = BackendAPI(
            BackendConfig(api_key="ak_test_x", endpoint="http://backend.test"),
            transport=httpx.MockTransport(self.handler),
        )
        return Reporter(api, spool_root=root, flush_interval=0.01, **kw)


def ids(numbers: range) -> list[str]:
    return [f"e{i:05d}" for i in numbers]


def test_a_batch_on_its_way_when_the_program_exits_is_kept_for_the_next_process(
    tmp_path: Path,
) -> None:
    slow = ScriptedBackend()
    slow.hold_next = True
    reporter = slow.reporter(tmp_path)
    for i in range(5):
        reporter.enqueue(event(i))
    assert slow.holding.wait(5)
    assert reporter.pending == 5
    reporter.close(timeout=0.2)  # the backend has not answered yet
    slow.release.set()
    good = ScriptedBackend()
    nxt = good.reporter(tmp_path)
    assert nxt.pending == 5
    assert nxt.flush(5)
    nxt.close()
    assert good.received == ids(range(5))


def test_overflow_while_a_batch_is_on_its_way_keeps_the_order(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    backend.hold_next = True
    reporter = backend.reporter(tmp_path, batch_size=5, max_memory=10)
    for i in range(5):
        reporter.enqueue(event(i))
    assert backend.holding.wait(5)
    for i in range(5, 20):  # past max_memory: spilled to disk while 0-4 are on their way
        reporter.enqueue(event(i))
    assert reporter.stats.spooled > 0
    backend.release.set()  # ... and then 0-4 fail
    assert reporter.flush(5)
    reporter.close()
    assert backend.received == ids(range(20))


def test_an_unexpected_error_while_sending_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = ScriptedBackend()
    reporter = backend.reporter(tmp_path)
    ingest = reporter.api.ingest
    calls = 0

    def ingest_failing_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return ingest(*args)

    reporter.api.ingest = ingest_failing_once  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="kavach.reporting"):
        for i in range(3):
            reporter.enqueue(event(i))
        assert reporter.flush(5)
        reporter.enqueue(event(3))  # the sender thread lives on
        assert reporter.flush(5)
    reporter.close()
    assert backend.received == ids(range(4))
    assert "a bug" in caplog.text


def test_a_full_disk_never_reaches_the_caller_and_bounds_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    backend = ScriptedBackend()
    backend.answer, backend.retry_after = 429, "60"
    reporter = backend.reporter(tmp_path, batch_size=5, max_memory=20)
    spool = reporter._spool
    append = spool.append
    full = True

    def append_to_a_full_disk(*args: Any, **kw: Any) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(*args, **kw)

    spool.append = append_to_a_full_disk  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="kavach.reporting"):
        reporter.enqueue(event(0))  # refused by the backend, then by the disk
        deadline = time.monotonic() + 5
        while "cannot take events" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.005)
        for i in range(1, 30):  # the sender waits for Retry-After; memory fills up
            reporter.enqueue(event(i))
        assert reporter.stats.dropped == 10
        assert reporter.pending == 20
        assert "dropping events" in caplog.text
        full = False
        backend.answer = 202
        assert reporter.flush(5)
    reporter.close()
    assert backend.received == ids(range(20))


def test_a_torn_line_left_by_a_crash_does_not_stall_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    dead = tmp_path / "99999-deadbeef"
    dead.mkdir()
    (dead / "lock").write_text("")
    lines = [json.dumps(event(i)) for i in range(3)] + ['{"id":"e00003","agent":"bo']
    (dead / "seg-000000000001.jsonl").write_text("\n".join(lines))
    backend = ScriptedBackend()
    with caplog.at_level(logging.WARNING, logger="kavach.reporting"):
        reporter = backend.reporter(tmp_path)
        assert reporter.pending == 3
        assert reporter.flush(1)
        started = time.monotonic()
        reporter.close()
    assert time.monotonic() - started < 1
    assert backend.received == ids(range(3))
    assert caplog.text.count("torn line") == 1
    assert not list(tmp_path.iterdir())


def test_a_rejected_event_is_kept_across_restarts_without_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = ScriptedBackend()
    backend.answer = 422
    reporter = backend.reporter(tmp_path)
    reporter.enqueue(event(1))
    assert reporter.flush(5)
    reporter.close()
    backend.answer = 202
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kavach.reporting"):
        for _ in range(2):
            backend.reporter(tmp_path).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [p.name for p in tmp_path.iterdir()] == ["rejected.jsonl"]
    assert '"e00001"' in (tmp_path / "rejected.jsonl").read_text()
