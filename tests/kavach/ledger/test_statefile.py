"""Restart-safe spend with the in-process ledger: a state file, and guard.seed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kavach import AgentKavach, Budget, BudgetExceededError, KavachConfigError, Usage
from kavach.ledger.base import LedgerLine, Refusal
from kavach.ledger.statefile import PersistentMemoryLedger
from tests.kavach.conftest import PRICES, spec

ROOT = Path(__file__).resolve().parents[3]


def spend(guard: AgentKavach, output_tokens: int) -> None:
    with guard.reserve(spec(input_tokens=1000, max_output=output_tokens)) as r:
        r.commit(Usage(input_tokens=1000, output_tokens=output_tokens))


def test_a_restarted_guard_keeps_the_days_spend(tmp_path: Path) -> None:
    state = tmp_path / "bot.json"
    guard = AgentKavach("bot", Budget.daily(1), prices=PRICES, state_file=state)
    spend(guard, 2000)  # $0.003
    spend(guard, 4000)  # $0.005
    assert guard.remaining == pytest.approx(1 - 0.008)
    assert isinstance(guard.ledger, PersistentMemoryLedger)
    guard.ledger.close()  # what interpreter exit does
    entries = json.loads(state.read_text())["keys"].values()
    assert all(entry["expires_at"] for entry in entries)  # the day's key is dropped later

    restarted = AgentKavach("bot", Budget.daily(1), prices=PRICES, state_file=state)
    assert restarted.spent == pytest.approx(0.008)
    assert restarted.remaining == pytest.approx(1 - 0.008)
    spend(restarted, 1000)
    assert restarted.remaining == pytest.approx(1 - 0.010)
    restarted.ledger.close()  # type: ignore[attr-defined]


def test_a_crash_right_after_spending_the_budget_does_not_give_it_back(tmp_path: Path) -> None:
    state = tmp_path / "bot.json"
    code = textwrap.dedent(
        f"""
        import time
        from kavach import AgentKavach, Budget, KavachError, Usage
        from tests.kavach.conftest import PRICES, spec
        guard = AgentKavach(
            "bot", Budget.daily(0.01), prices=PRICES, state_file={str(state)!r}, detect_loops=False
        )
        try:
            while True:  # $0.002 a call until refused
                with guard.reserve(spec(input_tokens=1000, max_output=1000)) as r:
                    r.commit(Usage(input_tokens=1000, output_tokens=1000))
        except KavachError:  # over budget, or stopped at 100%
            pass
        print("spent", guard.spent, flush=True)
        time.sleep(600)
        """
    )
    for _crash in range(2):  # a crash loop: each life starts from what the file says
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        proc.send_signal(signal.SIGKILL)  # at once: no atexit, no background write
        proc.wait(timeout=10)
        proc.stdout.close()
        assert line[0] == "spent"
        assert float(line[1]) <= 0.01 if _crash == 0 else float(line[1]) == pytest.approx(0.01)

    restarted = AgentKavach("bot", Budget.daily(0.01), prices=PRICES, state_file=state)
    assert restarted.spent == pytest.approx(0.01)
    with pytest.raises(BudgetExceededError):
        spend(restarted, 1000)
    restarted.close()


def test_far_from_the_limit_calls_do_not_write_and_near_it_each_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (writes.append(str(b)), replace(a, b)))
    ledger = PersistentMemoryLedger(tmp_path / "s.json", debounce_seconds=600)
    line = (LedgerLine("k", 1_000_000, 100, 0),)
    for _ in range(5000):  # half the limit: claims a tenth of what is left ahead
        ledger.settle(ledger.reserve(line, 0, 0), (100,))  # type: ignore[arg-type]
    far = len(writes)
    assert far <= 10
    while not isinstance(hold := ledger.reserve(line, 0, 0), Refusal):
        ledger.settle(hold, (100,))
    assert len(writes) - far >= 20  # the last calls before the limit wait for a write
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["keys"]["k"]["claimed"] == 1_000_000  # the limit, not past it
    ledger.close()
    assert json.loads((tmp_path / "s.json").read_text())["keys"]["k"]["claimed"] == 1_000_000


def test_a_clean_close_writes_exact_figures_and_a_crash_counts_the_claim(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    ledger = PersistentMemoryLedger(state)
    line = (LedgerLine("k", 1_000_000, 1000, 0),)
    ledger.settle(ledger.reserve(line, 0, 0), (1000,))  # type: ignore[arg-type]
    entry = json.loads(state.read_text())["keys"]["k"]  # written before the call went out
    assert entry["claimed"] == 1000 + (1_000_000 - 1000) // 10
    ledger.close()
    assert json.loads(state.read_text())["keys"]["k"] == {
        "spent": 1000,
        "claimed": 1000,
        "expires_at": None,
    }
    state.write_text(json.dumps({"version": 2, "keys": {"k": {"spent": 1000, "claimed": 5000}}}))
    reloaded = PersistentMemoryLedger(state)  # as after a crash with a claim ahead
    assert reloaded.read("k").spent == 5000
    reloaded.close()


def test_writes_are_atomic_and_past_periods_are_dropped(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    ledger = PersistentMemoryLedger(state, debounce_seconds=0.01)
    ledger.add_spent("agent:bot:daily:2026-11-28", 5, ttl_seconds=3600)
    ledger.add_spent("agent:bot:daily:2026-11-27", 7, ttl_seconds=3600)
    ledger.close()
    data = json.loads(state.read_text())
    assert data["keys"]["agent:bot:daily:2026-11-28"]["spent"] == 5
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["s.json", "s.json.lock"]  # no temp file left behind
    data["keys"]["agent:bot:daily:2026-11-27"]["expires_at"] = time.time() - 1
    state.write_text(json.dumps(data))
    reloaded = PersistentMemoryLedger(state)
    assert reloaded.read("agent:bot:daily:2026-11-28").spent == 5
    assert reloaded.read("agent:bot:daily:2026-11-27").spent == 0
    reloaded.close()


def test_a_torn_file_refuses_to_start_and_is_left_as_it_was(tmp_path: Path) -> None:
    state = tmp_path / "bot.json"
    guard = AgentKavach("bot", Budget.daily(1), prices=PRICES, state_file=state)
    spend(guard, 4000)
    guard.ledger.close()  # type: ignore[attr-defined]
    torn = state.read_text()[:40]  # e.g. a copy cut short by a full disk
    state.write_text(torn)

    with pytest.raises(KavachConfigError) as caught:
        AgentKavach("bot", Budget.daily(1), prices=PRICES, state_file=state)
    message = str(caught.value)
    assert str(state) in message
    assert "not a valid state file" in message
    assert "move it aside" in message
    assert state.read_text() == torn  # not overwritten with zero spend


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[]", "expected a JSON object"),
        ('{"version": 7, "keys": {}}', "unknown version 7"),
        ('{"version": 2, "keys": {"k": {"spent": 5, "claimed": 1.5}}}', "claimed must be"),
        ('{"version": 1, "keys": []}', '"keys" is not an object'),
        ('{"version": 1, "keys": {"k": {"spent": "5"}}}', "spent must be an integer"),
        ('{"version": 1, "keys": {"k": {"spent": -5}}}', "spent must be an integer"),
        ('{"version": 1, "keys": {"k": 5}}', "spent must be an integer"),
        ('{"version": 1, "keys": {"k": {"spent": 5, "expires_at": "soon"}}}', "expires_at"),
        (b"\xff\xfe", "not a valid state file"),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused(
    tmp_path: Path, content: str | bytes, problem: str
) -> None:
    state = tmp_path / "s.json"
    if isinstance(content, bytes):
        state.write_bytes(content)
    else:
        state.write_text(content)
    with pytest.raises(KavachConfigError, match=problem):
        PersistentMemoryLedger(state)


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.mkdir()  # reading it fails with an OSError, as a file without permission would
    with pytest.raises(KavachConfigError, match="cannot be read"):
        PersistentMemoryLedger(state)


def test_a_missing_file_is_a_fresh_start(tmp_path: Path) -> None:
    ledger = PersistentMemoryLedger(tmp_path / "new" / "s.json")
    assert ledger.read("k").spent == 0
    ledger.close()


def test_two_guards_on_one_file_share_its_budget_and_both_spends_are_kept(
    tmp_path: Path,
) -> None:
    state = tmp_path / "team.json"
    a = AgentKavach("a", Budget.daily(1, shared="team"), prices=PRICES, state_file=state)
    b = AgentKavach(
        "b", Budget.daily(1, shared="team"), prices=PRICES, state_file=tmp_path / "." / "team.json"
    )
    spend(a, 4000)  # $0.005
    assert b.remaining == pytest.approx(1 - 0.005)  # b sees a's spend: one budget, not two
    a.close()
    spend(b, 2000)  # $0.003, after a let go of the file
    b.close()

    restarted = AgentKavach("a", Budget.daily(1, shared="team"), prices=PRICES, state_file=state)
    assert restarted.spent == pytest.approx(0.008)  # the file kept both, not the last writer's
    restarted.close()


def test_a_second_process_on_the_file_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    state = tmp_path / "bot.json"
    code = textwrap.dedent(
        f"""
        import time
        from kavach import AgentKavach, Budget
        guard = AgentKavach("bot", Budget.daily(1), state_file={str(state)!r})
        print("open", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with pytest.raises(KavachConfigError) as caught:
            AgentKavach("bot", Budget.daily(1), prices=PRICES, state_file=state)
        message = str(caught.value)
        assert f"{state} belongs to another process (pid {proc.pid}" in message
        assert "Redis ledger" in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    guard = AgentKavach("bot", Budget.daily(1), prices=PRICES, state_file=state)  # lock gone
    guard.close()


def test_seed_raises_spent_to_the_given_figures_and_is_idempotent() -> None:
    guard = AgentKavach("bot", Budget.daily(1), prices=PRICES)
    spend(guard, 1000)  # $0.002 here already
    key = guard.status()[0].key
    guard.seed({key: 5_000_000})  # the backend saw $0.005 this period
    assert guard.spent == pytest.approx(0.005)
    guard.seed({key: 5_000_000})
    guard.seed({key: 1_000_000})  # never lowers
    assert guard.spent == pytest.approx(0.005)


def test_state_file_with_a_redis_ledger_is_a_config_error() -> None:
    with pytest.raises(KavachConfigError, match="state_file"):
        AgentKavach("bot", ledger="redis://127.0.0.1:6379/0", state_file="x.json")


@pytest.mark.anyio
async def test_an_async_reserve_writes_its_claim_without_blocking_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write of a claim waits until the event loop has run another task: with the write
    # made on the loop's own thread, that task could never run and the gate stays shut.
    gate, waited = threading.Event(), []
    replace = os.replace

    def gated_replace(a: str, b: str) -> None:
        waited.append(gate.wait(timeout=5))
        replace(a, b)

    monkeypatch.setattr(os, "replace", gated_replace)
    state = tmp_path / "bot.json"
    guard = AgentKavach("bot", Budget.daily(1), prices=PRICES, state_file=state)

    async def open_the_gate() -> None:
        gate.set()

    opener = asyncio.get_running_loop().create_task(open_the_gate())
    async with await guard.areserve(spec(input_tokens=1000, max_output=2000)) as r:
        assert waited == [True]  # the loop ran the opener while the claim was written
        # ... and the claim was on disk before the call could go out
        claimed = json.loads(state.read_text())["keys"]
        held = 3_000_000  # $0.003 in nano-dollars, and a tenth of what the $1 has left
        assert [entry["claimed"] for entry in claimed.values()] == [
            held + (1_000_000_000 - held) // 10
        ]
        await r.acommit(Usage(input_tokens=1000, output_tokens=2000))
    await opener
    assert guard.spent == pytest.approx(0.003)
    guard.ledger.close()  # type: ignore[attr-defined]
    assert json.loads(state.read_text())["keys"].popitem()[1]["spent"] == 3_000_000
