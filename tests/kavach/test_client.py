"""The guard end to end on the memory ledger: budgets, strict mode, kill switch, thresholds."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import pytest

from kavach import (
    AgentKavach,
    AgentKilledError,
    Budget,
    BudgetExceededError,
    CallSpec,
    KavachConfigError,
    MemoryLedger,
    ModelPrice,
    UnknownModelPriceError,
    Usage,
)

from .conftest import Clock, Recorder, spec

Make = Callable[..., AgentKavach]
CALL_COST = 2_000_000  # 1000 in + 1000 out at $1/Mtok each, in nano-dollars


@pytest.mark.anyio
async def test_1000_tasks_and_16_threads_never_pass_the_limit(make_guard: Make) -> None:
    limit_calls = 100
    guard = make_guard(
        budget=Budget.daily(limit_calls * CALL_COST / 1e9),
        detect_loops=False,
        kill_on_guardrail=False,
    )
    admitted = 0
    refused = 0
    lock = threading.Lock()

    async def task(i: int) -> None:
        nonlocal admitted, refused
        try:
            async with await guard.areserve(spec(content=f"t{i}")) as r:
                await anyio.lowlevel.checkpoint()
                await r.acommit(Usage(input_tokens=1000, output_tokens=1000))
            with lock:
                admitted += 1
        except (BudgetExceededError, AgentKilledError):
            with lock:
                refused += 1

    def thread(n: int) -> None:
        nonlocal admitted, refused
        for i in range(20):
            try:
                with guard.reserve(spec(content=f"th{n}-{i}")) as r:
                    r.commit(Usage(input_tokens=1000, output_tokens=1000))
                with lock:
                    admitted += 1
            except (BudgetExceededError, AgentKilledError):
                with lock:
                    refused += 1

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    async with anyio.create_task_group() as tg:
        for i in range(1000):
            tg.start_soon(task, i)
    for t in threads:
        t.join()

    status = guard.status()[0]
    print(f"admitted={admitted} refused={refused} spent={status.spent} limit={status.limit}")
    assert status.spent <= status.limit
    assert abs(admitted - limit_calls) <= 1
    assert admitted + refused == 1000 + 16 * 20
    assert status.reserved == 0
    assert isinstance(guard.ledger, MemoryLedger) and guard.ledger.open_holds == 0


def test_strict_mode_sizes_max_output_to_the_budget_left(make_guard: Make) -> None:
    # $0.0015 left: 1000 input tokens cost $0.001, so 500 output tokens fit.
    guard = make_guard(budget=Budget.daily(0.0015), mode="strict")
    r = guard.reserve(spec(max_output=None))
    assert r.max_output_tokens == 500
    r.commit(Usage(input_tokens=1000, output_tokens=500))
    assert guard.status()[0].spent == guard.status()[0].limit
    with pytest.raises(AgentKilledError):  # 100% reached: the kill switch is on
        guard.reserve(spec())


def test_strict_mode_refuses_when_the_minimum_output_does_not_fit(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(0.001005), mode="strict", min_output_tokens=16)
    with pytest.raises(BudgetExceededError) as info:
        guard.reserve(spec(max_output=None))
    assert "at least 16 output tokens" in str(info.value)
    assert guard.status()[0].reserved == 0


@pytest.mark.anyio
async def test_strict_mode_spend_cannot_pass_the_limit_under_concurrency(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(0.05), mode="strict", detect_loops=False)

    async def call(i: int) -> None:
        try:
            r = await guard.areserve(spec(content=str(i), max_output=4000))
        except (BudgetExceededError, AgentKilledError):
            return
        await anyio.sleep(0.001)
        # The provider honours the max tokens the guard set; it uses all of it.
        await r.acommit(Usage(input_tokens=1000, output_tokens=r.max_output_tokens or 0))

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(call, i)
    status = guard.status()[0]
    assert status.spent <= status.limit
    assert status.spent >= status.limit - 1_016_000  # it used what it could
    assert status.reserved == 0


def test_budget_error_says_what_when_and_how_much(make_guard: Make, clock: Clock) -> None:
    guard = make_guard(budget=Budget.daily(0.003), clock=clock)
    guard.reserve(spec()).commit(Usage(1000, 1000))
    with pytest.raises(BudgetExceededError) as info:
        guard.reserve(spec(content="other"))
    err = info.value
    assert err.budget == "daily" and err.spent == CALL_COST and err.limit == 3_000_000
    message = str(err)
    assert "$0.002" in message and "$0.003" in message and "over" in message
    assert "2026-11-29 00:00 UTC" in message


def test_shared_budget_is_drawn_by_several_agents() -> None:
    ledger = MemoryLedger()
    team = Budget.daily(CALL_COST * 5 / 1e9, shared="team")
    prices = {"test-model": ModelPrice(1.0, 1.0)}
    guards = [
        AgentKavach(f"agent{i}", [Budget.daily(1), team], ledger=ledger, prices=prices)
        for i in range(5)
    ]
    admitted = []
    for round_ in range(3):
        for g in guards:
            try:
                g.reserve(spec(content=f"{round_}")).commit(Usage(1000, 1000))
                admitted.append(g.agent_name)
            except (BudgetExceededError, AgentKilledError):
                pass
    assert len(admitted) == 5
    assert ledger.read(team.key("x", guards[0]._clock())[0]).spent == 5 * CALL_COST
    # Each agent's own daily budget saw only its own call.
    assert guards[0].status()[0].spent == CALL_COST


def test_org_budget_refuses_even_when_the_agent_budget_has_room(make_guard: Make) -> None:
    guard = make_guard(budget=[Budget.daily(10), Budget.monthly(0.0025, org=True)])
    guard.reserve(spec()).commit(Usage(1000, 1000))
    with pytest.raises(BudgetExceededError) as info:
        guard.reserve(spec(content="again"))
    assert info.value.budget == "org monthly"


def test_token_and_call_budgets(make_guard: Make) -> None:
    guard = make_guard(budget=[Budget.daily(tokens=5000), Budget.daily(calls=10)])
    guard.reserve(spec()).commit(Usage(1000, 1000))
    guard.reserve(spec(content="b")).commit(Usage(1000, 1000))
    with pytest.raises(BudgetExceededError) as info:
        guard.reserve(spec(content="c"))  # 4000 used + 2000 worst case > 5000
    assert info.value.unit == "tokens"
    guard2 = make_guard(budget=Budget.daily(calls=2), kill_on_guardrail=False)
    guard2.reserve(spec()).commit(Usage(1, 1))
    guard2.reserve(spec(content="b")).release()
    guard2.reserve(spec(content="c")).commit(Usage(1, 1))
    with pytest.raises((BudgetExceededError, AgentKilledError)):
        guard2.reserve(spec(content="d"))


def test_period_rollover_gives_a_fresh_daily_budget_and_lifts_the_stop(
    make_guard: Make, clock: Clock
) -> None:
    kills: list[str] = []
    guard = make_guard(budget=Budget.daily(0.002), clock=clock, on_kill=kills.append)
    guard.reserve(spec()).commit(Usage(1000, 1000))
    assert kills == ["daily budget reached 100%"]
    with pytest.raises(AgentKilledError):
        guard.reserve(spec(content="x"))
    clock.now += timedelta(hours=12)  # past midnight UTC
    guard.reserve(spec(content="y")).commit(Usage(1000, 1000))
    assert guard.status()[0].period_id == "2026-11-29"
    assert guard.spent == pytest.approx(0.002)


def test_a_budget_stop_lifted_by_the_reset_is_reported_as_a_resume(
    make_guard: Make, clock: Clock
) -> None:
    # Anything that tracks the agent from its events (a dashboard, a pager) sees it run
    # again: every on_kill is followed by an on_resume, once.
    recorder = Recorder()
    guard = make_guard(budget=Budget.daily(0.002), clock=clock, observers=[recorder])
    guard.reserve(spec()).commit(Usage(1000, 1000))
    assert guard.killed and recorder.kills == ["daily budget reached 100%"]
    clock.now += timedelta(hours=12)  # past midnight UTC
    assert not guard.killed  # reading it lifts the stop, as the next call would
    guard.reserve(spec(content="next day")).commit(Usage(1000, 1000))
    assert recorder.resumes == ["bot"]  # reported once
    clock.now += timedelta(days=1)
    guard.reserve(spec(content="the call lifts it")).commit(Usage(10, 10))
    assert recorder.kills == ["daily budget reached 100%"] * 2
    assert recorder.resumes == ["bot", "bot"]


def test_unknown_model_is_refused_with_how_to_fix(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(1))
    with pytest.raises(UnknownModelPriceError) as info:
        guard.reserve(spec().__class__(provider="openai", model="no-such-model-xyz"))
    assert "no-such-model-xyz" in str(info.value) and "prices=" in str(info.value)


def test_unknown_model_allowed_with_explicit_worst_case_price(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(1), unknown_model_price=ModelPrice(5.0, 20.0))
    r = guard.reserve(
        spec().__class__(
            provider="openai", model="no-such-model-xyz", input_tokens=1000, max_output_tokens=100
        )
    )
    assert r.reserved_nanos == 5_000_000 + 2_000_000
    r.release()


def test_kill_and_resume_run_on_kill_once(make_guard: Make) -> None:
    reasons: list[str] = []
    recorder = Recorder()
    guard = make_guard(budget=Budget.daily(1), on_kill=reasons.append, observers=[recorder])
    assert guard.kill("manual stop")
    assert not guard.kill("again")
    with pytest.raises(AgentKilledError) as info:
        guard.reserve(spec())
    assert "manual stop" in str(info.value) and "resume" in str(info.value)
    assert reasons == ["manual stop"]
    assert guard.resume()
    guard.reserve(spec()).commit(Usage(10, 10))
    assert recorder.kills == ["manual stop"] and recorder.resumes == ["bot"]
    assert [e.status for e in recorder.calls] == ["refused", "ok"]
    assert recorder.calls[0].refusal_reason == "killed"


def test_a_stop_pressed_while_the_budget_holds_the_agent_outlasts_the_reset(
    make_guard: Make, clock: Clock
) -> None:
    reasons: list[str] = []
    guard = make_guard(budget=Budget.daily(CALL_COST / 1e9), on_kill=reasons.append, clock=clock)
    guard.reserve(spec()).commit(Usage(1000, 1000))  # the daily budget reaches 100%
    assert reasons == ["daily budget reached 100%"]
    # An operator stops the agent (guard.kill, or Stop in the dashboard) during the incident.
    assert guard.kill("incident: stopped until investigated")
    clock.now += timedelta(days=1)  # the daily budget resets
    with pytest.raises(AgentKilledError) as info:
        guard.reserve(spec(content="next day"))
    assert "incident" in str(info.value)
    assert reasons == ["daily budget reached 100%"]  # on_kill ran once: one stop
    assert guard.resume()
    guard.reserve(spec(content="after resume")).commit(Usage(10, 10))


def test_a_longer_budget_stop_is_not_shortened_by_a_shorter_one(
    make_guard: Make, clock: Clock
) -> None:
    limit = CALL_COST / 1e9
    guard = make_guard(budget=[Budget.daily(limit), Budget.monthly(limit)], clock=clock)
    guard.reserve(spec()).commit(Usage(1000, 1000))  # both reach 100% in one settle
    clock.now += timedelta(days=1)  # the day resets, the month does not
    with pytest.raises(AgentKilledError) as info:
        guard.reserve(spec(content="next day"))
    assert "monthly" in str(info.value)
    # A shorter stop leaves the longer one as it is.
    assert not guard.kill("daily again", until=clock.now + timedelta(hours=1))


@pytest.mark.anyio
async def test_async_on_kill_runs_once_when_concurrent_calls_reach_100_percent(
    make_guard: Make,
) -> None:
    calls: list[str] = []

    async def on_kill(reason: str) -> None:
        await anyio.lowlevel.checkpoint()
        calls.append(reason)

    guard = make_guard(budget=Budget.daily(0.02), on_kill=on_kill, detect_loops=False)

    async def call(i: int) -> None:
        try:
            r = await guard.areserve(spec(content=str(i), max_output=100))
        except (BudgetExceededError, AgentKilledError):
            return
        await anyio.lowlevel.checkpoint()
        await r.acommit(Usage(1000, 1000))  # more than reserved: spend reaches the limit

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(call, i)
    for _ in range(5):
        await asyncio.sleep(0)
    assert calls == ["daily budget reached 100%"]
    assert guard.killed


def test_sync_program_with_async_on_kill(make_guard: Make) -> None:
    seen: list[str] = []

    async def on_kill(reason: str) -> None:
        seen.append(reason)

    guard = make_guard(budget=Budget.daily(1), on_kill=on_kill)
    guard.kill("stop")
    assert seen == ["stop"]


def test_thresholds_are_reported_once_each_per_period(make_guard: Make, clock: Clock) -> None:
    recorder = Recorder()
    guard = make_guard(
        budget=Budget.daily(CALL_COST * 10 / 1e9),
        observers=[recorder],
        clock=clock,
        detect_loops=False,
    )
    for _ in range(10):
        guard.reserve(spec()).commit(Usage(1000, 1000))
    assert [c.threshold for c in recorder.crossings] == [0.5, 0.7, 0.9, 1.0]
    first = recorder.crossings[0]
    assert first.budget == "daily" and first.period_id == "2026-11-28" and first.unit == "usd"
    assert first.spent == 5 * CALL_COST


def test_one_call_that_jumps_several_thresholds_reports_each(
    make_guard: Make, clock: Clock
) -> None:
    recorder = Recorder()
    guard = make_guard(
        # Given out of order; each is reported once, in order, when spend reaches it exactly.
        budget=dataclasses.replace(Budget.daily(CALL_COST * 10 / 1e9), thresholds=(0.9, 0.2, 0.4)),
        observers=[recorder],
        clock=clock,
        detect_loops=False,
    )
    guard.reserve(spec()).commit(Usage(1000, 1000))  # 10%: none
    assert recorder.crossings == []
    guard.reserve(spec(input_tokens=5000)).commit(Usage(5000, 1000))  # 10% -> 40%
    assert [c.threshold for c in recorder.crossings] == [0.2, 0.4]
    assert recorder.crossings[-1].spent == 4 * CALL_COST
    guard.reserve(spec(input_tokens=9000)).commit(Usage(9000, 1000))  # 40% -> 90%
    assert [c.threshold for c in recorder.crossings] == [0.2, 0.4, 0.9]


def test_thresholds_under_concurrency_fire_exactly_once(make_guard: Make) -> None:
    recorder = Recorder()
    guard = make_guard(
        budget=Budget.daily(CALL_COST * 100 / 1e9), observers=[recorder], detect_loops=False
    )

    def worker() -> None:
        for _ in range(10):
            try:
                guard.reserve(spec()).commit(Usage(1000, 1000))
            except (BudgetExceededError, AgentKilledError):
                return

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.threshold for c in recorder.crossings) == [0.5, 0.7, 0.9, 1.0]


def test_passthrough_only_when_asked(make_guard: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = make_guard(budget=Budget.daily(0.000001), enabled=False)
    r = guard.reserve(spec())
    assert r.max_output_tokens is None
    r.commit(Usage(1000, 1000))
    assert guard.status()[0].spent == 0
    monkeypatch.setenv("AGENTKAVACH_DISABLED", "1")
    assert not make_guard(budget=Budget.daily(1)).enabled
    monkeypatch.delenv("AGENTKAVACH_DISABLED")
    monkeypatch.delenv("AGENTKAVACH_API_KEY", raising=False)
    assert make_guard(budget=Budget.daily(1)).enabled  # no backend key: still enforcing


def test_spent_remaining_and_status(make_guard: Make) -> None:
    guard = make_guard(budget=[Budget.daily(1), Budget.monthly(tokens=10_000)])
    r = guard.reserve(spec())
    assert guard.remaining == pytest.approx(1 - 0.002)  # the hold counts against remaining
    r.commit(Usage(1000, 500))
    assert guard.spent == pytest.approx(0.0015)
    assert guard.remaining == pytest.approx(0.9985)
    daily, monthly = guard.status()
    assert monthly.unit == "tokens" and monthly.spent == 1500 and monthly.remaining == 8500
    assert 0 < daily.utilization < 0.01


def test_save_prompts_is_off_by_default(make_guard: Make) -> None:
    recorder = Recorder()
    guard = make_guard(budget=Budget.daily(1), observers=[recorder])
    guard.reserve(spec(content="secret plan")).commit(Usage(1, 1))
    assert recorder.calls[-1].prompt is None
    guard2 = make_guard(budget=Budget.daily(1), observers=[recorder], save_prompts=True)
    guard2.reserve(spec(content="keep me")).commit(Usage(1, 1))
    assert recorder.calls[-1].prompt is not None and "keep me" in recorder.calls[-1].prompt


def test_saved_prompts_keep_the_text_of_every_provider_shape(make_guard: Make) -> None:
    recorder = Recorder()
    guard = make_guard(budget=Budget.daily(1), observers=[recorder], save_prompts=True)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}
    shapes = {
        "gemini parts": [{"role": "user", "parts": [{"text": "gemini text"}]}],
        "content blocks": [
            {"role": "user", "content": [{"type": "text", "text": "block text"}, image]}
        ],
    }
    for label, messages in shapes.items():
        r = guard.reserve(CallSpec(provider="openai", model="test-model", messages=messages))
        r.commit(Usage(1, 1))
        assert recorder.calls[-1].prompt in ("user: gemini text", "user: block text\n[image_url]")
        assert "AAAA" not in recorder.calls[-1].prompt, label  # the image is named, not dumped
    ids = CallSpec(provider="openai", model="test-model", prompt=[[1, 2, 3]], operation="e")
    guard.reserve(ids).commit(Usage(3, 0))
    assert recorder.calls[-1].prompt == "[3 token ids]"


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(KavachConfigError):
        AgentKavach("a:b")
    with pytest.raises(KavachConfigError):
        AgentKavach("a", mode="yolo")  # type: ignore[arg-type]
    with pytest.raises(KavachConfigError):
        AgentKavach("a", budget=[50])  # type: ignore[list-item]


def test_cache_writes_reserve_input_at_the_cache_write_price(make_guard: Make) -> None:
    prices = {
        "cached": ModelPrice(
            input_per_mtok=3.0,
            output_per_mtok=15.0,
            cache_write_per_mtok=3.75,
            cache_write_1h_per_mtok=6.0,
        )
    }
    guard = make_guard(budget=Budget.daily(1), prices=prices)
    base = spec().__class__(
        provider="anthropic", model="cached", input_tokens=1000, max_output_tokens=0
    )
    plain = guard.reserve(base)
    assert plain.reserved_nanos == 3_000_000
    plain.release()
    writing = guard.reserve(dataclasses.replace(base, cache_writes=True))
    assert writing.reserved_nanos == 6_000_000
    writing.release()


def test_budgets_set_remotely_apply_to_the_next_call(make_guard: Make) -> None:
    guard = make_guard(budget=Budget.daily(1))
    guard.reserve(spec()).commit(Usage(1000, 1000))
    guard.set_remote_budgets([Budget.daily(0.003)])
    with pytest.raises(BudgetExceededError) as info:
        guard.reserve(spec(content="next"))
    assert info.value.limit == 3_000_000
    guard.set_remote_budgets([])
    guard.reserve(spec(content="after removal")).release()


def test_current_run_id_follows_the_innermost_run_block_into_tasks() -> None:
    from kavach import current_run_id

    guard = AgentKavach("bot", Budget.daily(1))
    assert current_run_id() is None

    async def inside_a_task() -> str | None:
        await asyncio.sleep(0)
        return current_run_id()

    with guard.run("outer"):
        assert current_run_id() == "outer"
        with guard.run("inner"):
            assert asyncio.run(inside_a_task()) == "inner"
        assert current_run_id() == "outer"
    assert current_run_id() is None


# -- budgets on one ledger key, and alert thresholds after a dashboard update ------------------


def _calls_until_refused(guard: AgentKavach, run_id: str | None = None) -> int:
    calls = 0
    while calls < 100:
        try:
            guard.reserve(spec(content=f"c{calls}", run_id=run_id)).commit(Usage(1000, 1000))
        except (BudgetExceededError, AgentKilledError):
            return calls
        calls += 1
    raise AssertionError("never refused")


@pytest.mark.parametrize(("code_calls", "dashboard_calls"), [(10, 20), (20, 10)])
def test_a_code_and_a_dashboard_daily_budget_count_spend_once_and_the_smaller_holds(
    make_guard: Make, code_calls: int, dashboard_calls: int
) -> None:
    from kavach.reporting.control import budgets_from_backend

    recorder = Recorder()
    guard = make_guard(
        budget=Budget.daily(code_calls * CALL_COST / 1e9),
        observers=[recorder],
        detect_loops=False,
    )
    dashboard = {"scope": "agent", "kind": "usd", "period": "daily"}
    guard.set_remote_budgets(
        budgets_from_backend([{**dashboard, "limit": dashboard_calls * CALL_COST}])
    )
    assert _calls_until_refused(guard) == 10  # not 5: each call is charged once
    (daily,) = guard.status()
    assert daily.label == "daily"
    assert daily.spent == 10 * CALL_COST and daily.limit == 10 * CALL_COST
    assert [c.threshold for c in recorder.crossings] == [0.5, 0.7, 0.9, 1.0]
    assert guard.killed and recorder.kills == ["daily budget reached 100%"]


def test_two_budgets_on_one_key_in_code_are_one_line_alerting_at_each_threshold(
    make_guard: Make,
) -> None:
    recorder = Recorder()
    guard = make_guard(
        budget=[
            Budget.daily(CALL_COST * 20 / 1e9, thresholds=[0.5]),
            Budget.daily(CALL_COST * 10 / 1e9, thresholds=[0.3, 0.5]),
        ],
        observers=[recorder],
        detect_loops=False,
    )
    assert _calls_until_refused(guard) == 10
    assert [c.threshold for c in recorder.crossings] == [0.3, 0.5]
    assert [(s.spent, s.limit) for s in guard.status()] == [(10 * CALL_COST, 10 * CALL_COST)]


def test_status_of_two_daily_budgets_on_one_key_shows_the_reset_that_is_enforced(
    make_guard: Make, clock: Clock
) -> None:
    # At 12:00 UTC it is 17:30 in Kolkata, the same date: both days are one ledger line,
    # which resets with the earlier of them, midnight in Kolkata (18:30 UTC).
    guard = make_guard(
        budget=[Budget.daily(2), Budget.daily(1, tz="Asia/Kolkata")],
        clock=clock,
        detect_loops=False,
    )
    guard.reserve(spec()).commit(Usage(1000, 1000))
    (daily,) = guard.status()
    assert daily.resets_at == datetime(2026, 11, 28, 18, 30, tzinfo=UTC)
    assert (daily.spent, daily.limit) == (CALL_COST, Budget.daily(1).limit)


def test_two_per_run_budgets_in_code_charge_each_run_once(make_guard: Make) -> None:
    guard = make_guard(
        budget=[Budget.per_run(CALL_COST * 4 / 1e9), Budget.per_run(CALL_COST * 6 / 1e9)],
        detect_loops=False,
    )
    assert _calls_until_refused(guard, run_id="run-1") == 4
    assert _calls_until_refused(guard, run_id="run-2") == 4


def test_an_alert_rule_threshold_still_fires_after_the_dashboard_sends_budgets(
    make_guard: Make,
) -> None:
    from kavach.reporting.control import ControlApplier

    alerts: list[float] = []
    guard = make_guard(
        budget=Budget.daily(CALL_COST * 10 / 1e9),
        detect_loops=False,
        channels=[
            AgentKavach.channel(lambda alert: alerts.append(alert.threshold), threshold=0.8),
            AgentKavach.channel("kill", threshold=0.8),
        ],
    )
    applier = ControlApplier("bot", guard.kill, guard.resume, guard.set_remote_budgets)
    # State messages from the backend, as the control channel applies them: no budgets of
    # its own in the dashboard, then a weekly one.
    applier.apply({"type": "state", "agent": "bot", "status": "running", "budgets": []})
    weekly = {"scope": "agent", "kind": "usd", "period": "weekly", "limit": 20 * CALL_COST}
    applier.apply({"type": "state", "agent": "bot", "status": "running", "budgets": [weekly]})
    assert [b.label for b in guard.budgets] == ["daily", "weekly"]
    assert _calls_until_refused(guard) == 8  # the 80% kill stops the agent
    guard.close()
    assert alerts == [0.8]
    assert guard.killed and "80%" in (guard.kill_switch.reason or "")


def test_a_run_reaches_threads_only_through_its_context(make_guard: Make) -> None:
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    guard = make_guard(budget=Budget.per_run(CALL_COST * 2 / 1e9), detect_loops=False)

    def call() -> str:
        with guard.reserve(spec()) as r:
            r.commit(Usage(1000, 1000))
        return r.run_id

    with guard.run("run-1"), ThreadPoolExecutor(2) as pool:
        assert pool.submit(call).result() != "run-1"  # a bare worker: the session run
        assert pool.submit(contextvars.copy_context().run, call).result() == "run-1"
        assert asyncio.run(asyncio.to_thread(call)) == "run-1"


@pytest.mark.parametrize(
    "name", ["team,bot", "team/bot", "a?b", "a#b", "50%", "a:b", "a\tb", " bot", "bot ", ".", ".."]
)
def test_agent_names_that_break_dashboard_urls_or_the_control_stream_are_refused(
    name: str,
) -> None:
    with pytest.raises(KavachConfigError) as caught:
        AgentKavach(name)
    message = str(caught.value)
    assert repr(name) in message and ", / ? # % :" in message


def test_agent_names_with_spaces_dots_and_other_scripts_are_allowed() -> None:
    for name in ["research bot", "team.bot-2", "équipe_α", "a..b"]:
        assert AgentKavach(name).agent_name == name
