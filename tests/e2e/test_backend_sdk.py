"""The SDK and the backend together, over real HTTP on loopback.

- A guard with a key reports its calls; they appear through the API.
- Stop in the API makes the SDK refuse its next call within a second, on_kill once; Resume.
- The backend stopped during 10,000 guarded calls and started again: the SDK kept enforcing,
  and the backend ends with exactly 10,000 events, none lost, none twice.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kavach import AgentKavach, AgentKilledError, Budget, BudgetExceededError, ModelPrice, Usage
from kavach.spec import CallSpec
from tests.backend.conftest import SECRET, Account, _free_port, register

PRICES = {"test-model": ModelPrice(1.0, 1.0)}


class Backend:
    """A uvicorn-served backend on a fixed loopback port that can be stopped and restarted."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        from backend.app import create_app
        from backend.settings import Settings

        app = create_app(
            Settings(database_url=self.database_url, secret_key=SECRET, keepalive_seconds=1.0)
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "backend failed"
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(timeout=30)


@pytest.fixture
def account(backend: Backend) -> Iterator[Account]:
    acc = register(backend.url)
    yield acc
    acc.client.close()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    server = Backend(str(tmp_path / "agentkavach.sqlite"))
    server.start()
    yield server
    server.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


def spec(i: int) -> CallSpec:
    return CallSpec(
        provider="openai",
        model="test-model",
        input_tokens=100,
        max_output_tokens=100,
        messages=[{"role": "user", "content": f"task {i}"}],
    )


def test_stop_in_the_api_reaches_the_sdk_within_a_second(
    backend: Backend, account: Account, tmp_path: Path
) -> None:
    key = account.new_key()
    kills: list[str] = []
    guard = AgentKavach(
        "research-bot",
        Budget.daily(5),
        prices=PRICES,
        api_key=key,
        endpoint=backend.url,
        spool_dir=tmp_path / "spool",
        on_kill=kills.append,
    )
    assert guard.backend is not None
    wait_for(guard.backend.control.connected.is_set)
    for i in range(3):
        guard.reserve(spec(i)).commit(Usage(100, 50))
    assert guard.backend.reporter.flush(10)
    events = account.client.get("/v1/events", params={"agent": "research-bot"}).json()
    assert len(events) == 3 and {e["status"] for e in events} == {"ok"}

    pressed = time.monotonic()
    response = account.client.post(
        "/v1/agents/research-bot/kill", json={"reason": "runaway at 3am"}
    )
    assert response.status_code == 200, response.text
    heard = wait_for(lambda: guard.killed, timeout=1.0)
    with pytest.raises(AgentKilledError) as info:
        guard.reserve(spec(99))
    assert "runaway at 3am" in str(info.value)
    assert time.monotonic() - pressed < 1.0, heard
    assert kills == ["runaway at 3am"]

    assert account.client.post("/v1/agents/research-bot/resume").status_code == 200
    wait_for(lambda: not guard.killed, timeout=1.0)
    guard.reserve(spec(100)).commit(Usage(100, 50))
    guard.close()
    agent = account.client.get("/v1/agents/research-bot").json()
    assert agent["status"] == "running"
    statuses = [e["status"] for e in account.client.get("/v1/events").json()]
    assert sorted(statuses) == ["ok", "ok", "ok", "ok", "refused"]
    assert kills == ["runaway at 3am"]


def test_backend_outage_during_10000_calls_loses_nothing(
    backend: Backend, account: Account, tmp_path: Path
) -> None:
    key = account.new_key()
    call_cost = 200_000  # 100 in + 100 out at $1/Mtok (1,000 nano-dollars a token)
    ok_calls = 9_000
    guard = AgentKavach(
        "batch-bot",
        Budget.daily(ok_calls * call_cost / 1e9),
        prices=PRICES,
        api_key=key,
        endpoint=backend.url,
        spool_dir=tmp_path / "spool",
        detect_loops=False,
    )
    assert guard.backend is not None
    admitted = refused = 0

    def calls(n: int, start: int) -> None:
        nonlocal admitted, refused
        for i in range(start, start + n):
            try:
                r = guard.reserve(spec(i))
            except (BudgetExceededError, AgentKilledError):
                refused += 1
                continue
            r.commit(Usage(100, 100))
            admitted += 1

    calls(3_000, 0)
    backend.stop()  # the backend goes away mid-run
    calls(4_000, 3_000)
    spent_during_outage = guard.status()[0].spent
    assert spent_during_outage == 7_000 * call_cost  # enforcement never needed the backend
    backend.start()  # and comes back on the same address
    calls(3_000, 7_000)
    guard.close(timeout=60)

    assert admitted == ok_calls and refused == 1_000
    assert guard.status()[0].spent <= guard.status()[0].limit
    runs = account.client.get("/v1/agents/batch-bot/runs").json()
    assert sum(r["calls"] for r in runs) == ok_calls  # a run counts the calls that were made
    with sqlite3.connect(backend.database_url) as db:
        total, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM events"
        ).fetchone()
    assert total == distinct == 10_000
    assert guard.backend.reporter.stats.spooled > 0  # the outage really was ridden out on disk
