"""A guard with a backend key: events reported, Stop obeyed within a second, spend seeded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kavach import (
    AgentKavach,
    AgentKilledError,
    Budget,
    BudgetExceededError,
    KavachConfigError,
    ModelPrice,
    Usage,
)
from kavach.spec import CallSpec

from .fakebackend import FakeBackend

PRICES = {"test-model": ModelPrice(1.0, 1.0)}


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    server = FakeBackend()
    yield server
    server.close()


def spec(i: int) -> CallSpec:
    return CallSpec(
        provider="openai",
        model="test-model",
        input_tokens=1000,
        max_output_tokens=1000,
        messages=[{"role": "user", "content": str(i)}],
    )


def wait_for(predicate: object, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


def test_events_reach_the_backend_and_stop_arrives_within_a_second(
    backend: FakeBackend, tmp_path: Path
) -> None:
    kills: list[str] = []
    guard = AgentKavach(
        "bot",
        Budget.daily(1),
        prices=PRICES,
        api_key="ak_test_123",
        endpoint=backend.url,
        spool_dir=tmp_path,
        on_kill=kills.append,
    )
    assert guard.backend is not None
    wait_for(guard.backend.control.connected.is_set)
    for i in range(5):
        guard.reserve(spec(i)).commit(Usage(1000, 10))
    wait_for(lambda: len(backend.events) == 5)
    first = backend.events[0]
    assert first["agent"] == "bot" and first["cost_nanos"] == 1_010_000
    assert first["prompt"] is None

    pressed = time.monotonic()
    backend.push(
        {
            "type": "kill",
            "agent": "bot",
            "status": "stopped",
            "reason": "stopped from the dashboard",
            "version": 1,
            "budgets": [],
        }
    )
    wait_for(lambda: guard.killed, timeout=1.0)
    assert time.monotonic() - pressed < 1.0
    with pytest.raises(AgentKilledError):
        guard.reserve(spec(99))
    assert kills == ["stopped from the dashboard"]

    backend.push(
        {
            "type": "resume",
            "agent": "bot",
            "status": "running",
            "reason": None,
            "version": 2,
            "budgets": [],
        }
    )
    wait_for(lambda: not guard.killed)
    guard.reserve(spec(100)).commit(Usage(1, 1))
    guard.close()
    assert any(e["status"] == "refused" for e in backend.events)
    assert len(backend.events) == 7  # 5 ok, 1 refused, 1 ok: all delivered before close ends


def test_budget_set_in_the_dashboard_is_enforced(backend: FakeBackend, tmp_path: Path) -> None:
    guard = AgentKavach(
        "bot", prices=PRICES, api_key="ak_test_123", endpoint=backend.url, spool_dir=tmp_path
    )
    assert guard.backend is not None
    wait_for(guard.backend.control.connected.is_set)
    backend.push(
        {
            "type": "budget",
            "agent": "bot",
            "status": "running",
            "version": 3,
            "budgets": [{"scope": "agent", "kind": "usd", "period": "daily", "limit": 3_000_000}],
        }
    )
    wait_for(lambda: len(guard.budgets) == 1)
    guard.reserve(spec(1)).commit(Usage(1000, 1000))
    with pytest.raises(Exception) as info:
        guard.reserve(spec(2))
    assert type(info.value).__name__ == "BudgetExceededError"
    guard.close()


def test_restart_is_seeded_with_the_periods_spend(backend: FakeBackend, tmp_path: Path) -> None:
    today = datetime.now(UTC).date().isoformat()
    backend.spend = {
        "agent": "bot",
        "daily": {"period_id": today, "cost_nanos": 700_000_000, "tokens": 5, "calls": 3},
        "weekly": {"period_id": "1999-W01", "cost_nanos": 1, "tokens": 1, "calls": 1},
        "monthly": {"period_id": today[:7], "cost_nanos": 900_000_000, "tokens": 5, "calls": 3},
        "total": {"period_id": "total", "cost_nanos": 900_000_000, "tokens": 5, "calls": 3},
    }
    guard = AgentKavach(
        "bot",
        [Budget.daily(1), Budget.weekly(1), Budget.monthly(5)],
        prices=PRICES,
        api_key="ak_test_123",
        endpoint=backend.url,
        spool_dir=tmp_path,
    )
    daily, weekly, monthly = guard.status()
    assert daily.spent == 700_000_000 and daily.remaining == 300_000_000
    assert weekly.spent == 0  # the backend's week is not this one: not applied
    assert monthly.spent == 900_000_000
    assert guard.remaining == pytest.approx(0.3)
    guard.close()


def test_a_budget_added_in_the_dashboard_starts_from_todays_spend(
    backend: FakeBackend, tmp_path: Path
) -> None:
    # The agent spent $0.70 today with no daily budget of its own; then a $1 daily budget
    # is set in the dashboard. It must not hand out another full dollar.
    today = datetime.now(UTC).date().isoformat()
    backend.spend = {
        "agent": "bot",
        "daily": {"period_id": today, "cost_nanos": 700_000_000, "tokens": 5, "calls": 3},
    }
    guard = AgentKavach(
        "bot",
        Budget.monthly(5),
        prices=PRICES,
        api_key="ak_test_123",
        endpoint=backend.url,
        spool_dir=tmp_path,
    )
    assert guard.backend is not None
    wait_for(guard.backend.control.connected.is_set)
    backend.push(
        {
            "type": "budget",
            "agent": "bot",
            "status": "running",
            "version": 3,
            "budgets": [
                {"scope": "agent", "kind": "usd", "period": "daily", "limit": 1_000_000_000}
            ],
        }
    )
    wait_for(lambda: len(guard.budgets) == 2)
    daily = next(s for s in guard.status() if s.period == "daily")
    assert daily.spent == 700_000_000 and daily.remaining == 300_000_000
    admitted = 0
    with pytest.raises((BudgetExceededError, AgentKilledError)):
        while admitted < 1000:  # $0.002 a call: 150 calls fill the $0.30 left
            guard.reserve(spec(admitted)).commit(Usage(1000, 1000))
            admitted += 1
    assert admitted == 150
    guard.close()


def test_key_without_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTKAVACH_BACKEND_URL", raising=False)
    with pytest.raises(KavachConfigError) as info:
        AgentKavach("bot", api_key="ak_test_123")
    assert "AGENTKAVACH_BACKEND_URL" in str(info.value)
    with pytest.raises(KavachConfigError):
        AgentKavach("bot", api_key="sk-not-ours", endpoint="http://127.0.0.1:1")


def test_backend_down_never_blocks_or_breaks_calls(tmp_path: Path) -> None:
    guard = AgentKavach(
        "bot",
        Budget.daily(1),
        prices=PRICES,
        api_key="ak_test_123",
        endpoint="http://127.0.0.1:9",
        spool_dir=tmp_path,
    )
    started = time.monotonic()
    for i in range(50):
        guard.reserve(spec(i)).commit(Usage(10, 10))
    assert time.monotonic() - started < 2.0
    assert guard.status()[0].spent == 50 * 20_000
    guard.close(timeout=0.5)
    spooled = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("*/seg-*.jsonl"))
    assert spooled == 50


def test_yaml_api_key_and_endpoint_turn_reporting_on(
    backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAVACH_KEY", "ak_test_fromenv")
    monkeypatch.setenv("AGENTKAVACH_SPOOL_DIR", str(tmp_path))
    path = tmp_path / "kavach.yaml"
    path.write_text(
        "api_key: ${KAVACH_KEY}\n"
        f"endpoint: {backend.url}\n"
        "defaults:\n  prices: {test-model: {input_per_mtok: 1, output_per_mtok: 1}}\n"
        "agents:\n  bot:\n    budget: {daily: 1}\n"
    )
    guard = AgentKavach.from_yaml(path, agent="bot")
    assert guard.backend is not None
    guard.reserve(spec(1)).commit(Usage(5, 5))
    guard.close()
    assert [e["agent"] for e in backend.events] == ["bot"]
