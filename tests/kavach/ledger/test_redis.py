"""The Redis ledger on the real Redis: the memory ledger's guarantees, shared across processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kavach import (
    AgentKavach,
    Budget,
    BudgetExceededError,
    KavachConfigError,
    LedgerUnavailableError,
)
from kavach.events import NullObserver
from kavach.ledger import Balance, Hold, HoldReclaimed, LedgerLine, MemoryLedger, Refusal
from kavach.ledger.redis import RedisDedupStore, RedisLedger
from kavach.usage import Usage
from tests.kavach.conftest import PRICES, Recorder, spec
from tests.kavach.ledger.conftest import REDIS_URL

pytestmark = pytest.mark.redis


def test_reserve_is_all_or_nothing_across_keys(
    redis_url: str, prefix: str, make_ledger: Any
) -> None:
    ledger = make_ledger()
    lines = [LedgerLine("a", 100, 10, 1), LedgerLine("b", 50, 10, 1)]
    hold = ledger.reserve(lines, 30, 30)
    assert isinstance(hold, Hold) and hold.amounts == (40, 40) and hold.units == 30
    refused = ledger.reserve(lines, 30, 30)  # b has 10 left
    assert refused == Refusal(index=1, spent=0, reserved=40, needed=40)
    assert ledger.read("a").reserved == 40  # nothing held on a by the refused call
    assert ledger.settle(hold, (25, 25)) == (25, 25)
    assert ledger.read("a").spent == 25 and ledger.read("a").reserved == 0


def test_strict_grant_sizes_to_the_tightest_line(
    redis_url: str, prefix: str, make_ledger: Any
) -> None:
    ledger = make_ledger()
    lines = [LedgerLine("a", 1000, 100, 3), LedgerLine("b", 1000, 0, 1)]
    hold = ledger.reserve(lines, 1, 10_000)
    assert isinstance(hold, Hold) and hold.units == 300 and hold.amounts == (1000, 300)
    ledger.release(hold)
    ledger.add_spent("a", 400)
    hold = ledger.reserve(lines, 1, 10_000)
    assert isinstance(hold, Hold) and hold.units == 166
    ledger.release(hold)
    ledger.add_spent("a", 498)  # 898 spent: 102 - 100 fixed leaves no output token
    assert isinstance(ledger.reserve(lines, 1, 10_000), Refusal)


def test_amounts_past_float_precision_of_lua_printing_stay_exact(
    redis_url: str, prefix: str, make_ledger: Any
) -> None:
    # Lua prints numbers with 14 significant digits; the scripts must not.
    ledger = make_ledger()
    big = 123_456_789_012_345
    hold = ledger.reserve([LedgerLine("k", 10**15, big, 7)], 3, 3)
    assert isinstance(hold, Hold)
    assert ledger.read("k") == ledger.read("k").__class__(0, big + 21)
    assert ledger.settle(hold, (big + 1,)) == (big + 1,)
    assert ledger.read("k").reserved == 0


def test_settle_and_release_are_idempotent(redis_url: str, prefix: str, make_ledger: Any) -> None:
    ledger = make_ledger()
    hold = ledger.reserve([LedgerLine("k", 100, 10, 0)], 0, 0)
    assert isinstance(hold, Hold)
    assert ledger.settle(hold, (7,)) == (7,)
    assert ledger.settle(hold, (7,)) == (7,)
    ledger.release(hold)
    assert ledger.read("k") == ledger.read("k").__class__(7, 0)


def test_a_budget_listed_twice_is_charged_on_both_lines(
    redis_url: str, prefix: str, make_ledger: Any
) -> None:
    ledger, memory = make_ledger(), MemoryLedger()
    lines = [LedgerLine("k", 100, 10, 1), LedgerLine("k", 100, 10, 1)]
    for each in (ledger, memory):
        hold = each.reserve(lines, 5, 20)
        assert isinstance(hold, Hold) and hold.units == 20
        each.settle(hold, (12, 12))
    assert ledger.read("k") == memory.read("k")


def test_keys_carry_the_prefix_and_expire_after_the_period(
    prefix: str, make_ledger: Any, raw: Any
) -> None:
    ledger = make_ledger(lease_seconds=30)
    hold = ledger.reserve([LedgerLine("agent:bot:daily:2026-11-28", 100, 1, 1, 3600)], 1, 5)
    assert isinstance(hold, Hold)
    client = raw
    base = prefix + "agent:bot:daily:2026-11-28"
    assert sorted(client.scan_iter(match=prefix + "*")) == [base, base + ":holds"]
    assert client.hgetall(base) == {"reserved": "6"}
    [(member, expiry)] = client.zrange(base + ":holds", 0, -1, withscores=True)
    assert member == f"{hold.id}:1:6"
    server_ms = client.time()[0] * 1000
    assert server_ms + 25_000 <= expiry <= server_ms + 31_000  # the 30 s lease
    for key in (base, base + ":holds"):
        assert 3590 <= client.ttl(key) <= 3600
    ledger.settle(hold, (4,))
    assert client.hgetall(base) == {"spent": "4", "reserved": "0"}
    assert client.exists(base + ":holds") == 0  # an empty sorted set vanishes


def test_scripts_reload_after_the_server_forgets_them(make_ledger: Any, raw: Any) -> None:
    ledger = make_ledger()
    line = [LedgerLine("k", 100, 1, 1)]
    assert isinstance(ledger.reserve(line, 1, 1), Hold)
    raw.script_flush()
    hold = ledger.reserve(line, 1, 1)
    assert isinstance(hold, Hold)
    assert ledger.settle(hold, (2,)) == (2,)

    async def again() -> None:
        raw.script_flush()
        assert isinstance(await ledger.areserve(line, 1, 1), Hold)
        await ledger.aclose()

    asyncio.run(again())


class RedisMatchesMemory(RuleBasedStateMachine):
    """Any interleaving of reserve, settle and release gives the Redis ledger exactly the
    memory ledger's answers and balances (the Lua script mirrors grantable_units)."""

    made: list[RedisLedger] = []

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"kavach-test:{uuid.uuid4().hex[:10]}:"
        self.redis = RedisLedger(REDIS_URL, prefix=self.prefix)
        RedisMatchesMemory.made.append(self.redis)
        self.memory = MemoryLedger()
        self.holds: list[tuple[Hold, Hold]] = []
        self.lines = [
            LedgerLine("x", 1_000, 0, 1),
            LedgerLine("y", 500, 5, 2),
            LedgerLine("z", 300, 17, 0),
        ]

    @rule(
        lo=st.integers(0, 60),
        extra=st.integers(0, 300),
        which=st.sets(st.integers(0, 2), min_size=1),
    )
    def reserve(self, lo: int, extra: int, which: set[int]) -> None:
        lines = [self.lines[i] for i in sorted(which)]
        got = self.redis.reserve(lines, lo, lo + extra)
        want = self.memory.reserve(lines, lo, lo + extra)
        if isinstance(want, Refusal):
            assert got == want
        else:
            assert isinstance(got, Hold)
            assert (got.units, got.amounts, got.keys) == (want.units, want.amounts, want.keys)
            self.holds.append((got, want))

    @rule(data=st.data(), release=st.booleans())
    def finish(self, data: st.DataObject, release: bool) -> None:
        if not self.holds:
            return
        got, want = self.holds.pop(data.draw(st.integers(0, len(self.holds) - 1)))
        if release:
            self.redis.release(got)
            self.memory.release(want)
        else:
            actual = tuple(data.draw(st.integers(0, a)) for a in want.amounts)
            assert self.redis.settle(got, actual) == self.memory.settle(want, actual)

    @invariant()
    def same_balances(self) -> None:
        for line in self.lines:
            assert self.redis.read(line.key) == self.memory.read(line.key)

    def teardown(self) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=self.prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
        self.redis.close()


@pytest.mark.usefixtures("redis_url")
def test_redis_ledger_matches_the_memory_ledger() -> None:
    RedisMatchesMemory.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    try:
        RedisMatchesMemory.TestCase().runTest()
    finally:
        for ledger in RedisMatchesMemory.made:
            ledger.close()
        RedisMatchesMemory.made.clear()


def test_threads_never_overcommit(redis_url: str, prefix: str, make_ledger: Any) -> None:
    ledger = make_ledger()
    line = LedgerLine("k", 1_000, 0, 1)
    granted: list[int] = []

    def worker() -> None:
        for _ in range(60):
            hold = ledger.reserve([line], 1, 7)
            if isinstance(hold, Hold):
                granted.append(hold.units)
                ledger.settle(hold, (hold.units,))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.read("k").spent == sum(granted) == 1_000
    assert ledger.read("k").reserved == 0


@pytest.mark.anyio
async def test_strict_guard_under_500_concurrent_tasks_spends_at_most_the_limit(
    redis_url: str, prefix: str, make_ledger: Any
) -> None:
    guard = AgentKavach(
        "bot",
        Budget.daily("0.5"),
        mode="strict",
        prices=PRICES,
        ledger=(ledger := make_ledger()),
        detect_loops=False,
    )
    admitted = 0

    async def call(i: int) -> None:
        nonlocal admitted
        try:
            r = await guard.areserve(spec(input_tokens=200, max_output=None, content=str(i)))
        except BudgetExceededError:
            return
        except Exception as exc:  # the kill switch at 100% refuses later calls
            assert exc.__class__.__name__ == "AgentKilledError"
            return
        admitted += 1
        await asyncio.sleep(random.random() / 100)
        used = r.max_output_tokens or 0
        await r.acommit(Usage(input_tokens=200, output_tokens=random.randint(used // 2, used)))

    await asyncio.gather(*(call(i) for i in range(500)))
    await ledger.aclose()
    status = guard.status()[0]
    print(f"\nadmitted {admitted} of 500, spent {status.spent} of {status.limit} nanos")
    assert admitted > 100
    assert status.spent <= status.limit and status.reserved == 0


@pytest.mark.anyio
async def test_unmetered_calls_of_two_async_workers_share_a_budget_in_calls(
    make_ledger: Any,
) -> None:
    # Two workers' async clients making calls the guard cannot price (DALL·E, video): each
    # counts as a call on Redis, awaited, and together they make no more than the budget.
    from kavach import AgentKilledError, CallSpec

    workers = [
        AgentKavach("bot", Budget.daily(calls=10), prices=PRICES, ledger=make_ledger())
        for _ in range(2)
    ]
    admitted = 0

    async def call(i: int) -> None:
        nonlocal admitted
        worker = workers[i % 2]
        image = CallSpec(provider="openai", model="dall-e-3", operation="image_generation")
        try:
            await worker.aadmit_unmetered(image, {"prompt": f"picture {i}"})
        except (BudgetExceededError, AgentKilledError):
            return
        admitted += 1

    await asyncio.gather(*(call(i) for i in range(100)))
    for worker in workers:
        await worker.ledger.aclose()  # type: ignore[attr-defined]
    status = workers[0].status()[0]
    print(f"\nadmitted {admitted} of 100 unmetered calls on a budget of 10 calls")
    assert admitted == 10
    assert (status.spent, status.reserved) == (10, 0)


def test_reserve_reclaims_an_expired_hold_and_reports_it(
    redis_url: str, prefix: str, make_ledger: Any
) -> None:
    reclaimed: list[HoldReclaimed] = []
    dead = make_ledger(lease_seconds=0.3)
    alive = make_ledger(lease_seconds=30, on_reclaim=reclaimed.append)
    line = [LedgerLine("k", 100, 0, 1), LedgerLine("j", 100, 0, 1)]
    lost = dead.reserve(line, 80, 80)  # its process "dies" and never settles
    assert isinstance(lost, Hold)
    assert isinstance(alive.reserve(line, 80, 80), Refusal)
    time.sleep(0.35)
    hold = alive.reserve(line, 80, 80)
    assert isinstance(hold, Hold)
    assert sorted(reclaimed, key=lambda r: r.key) == [
        HoldReclaimed(lost.id, "j", 80),
        HoldReclaimed(lost.id, "k", 80),
    ]
    # The dead call turns out to have finished after all: its spend counts, once.
    assert dead.settle(lost, (30, 30)) == (30, 30)
    assert dead.settle(lost, (30, 30)) == (30, 30)
    assert alive.read("k") == alive.read("k").__class__(30, 80)


def test_guard_observers_see_reclaims_and_a_warning_is_logged(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture, make_ledger: Any
) -> None:
    seen: list[HoldReclaimed] = []

    class Watcher(NullObserver):
        def on_reclaim(self, reclaimed: HoldReclaimed) -> None:
            seen.append(reclaimed)

    dead = AgentKavach(
        "bot",
        Budget.daily("0.002"),
        prices=PRICES,
        ledger=make_ledger(lease_seconds=0.2),
    )
    guard = AgentKavach(
        "bot",
        Budget.daily("0.002"),
        prices=PRICES,
        ledger=make_ledger(),
        observers=[Watcher()],
    )
    dead.reserve(spec(input_tokens=500, max_output=1000))  # held, never settled
    with pytest.raises(BudgetExceededError):
        guard.reserve(spec(input_tokens=500, max_output=1000, content="b"))
    time.sleep(0.25)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        guard.reserve(spec(input_tokens=500, max_output=1000, content="c")).release()
    assert [r.amount for r in seen] == [1_500_000]
    assert "reclaimed expired hold" in caplog.text


def test_guard_refuses_with_a_clear_error_when_redis_is_down(unused_tcp_port: int) -> None:
    refused = []

    class Watcher(NullObserver):
        def on_call(self, event: object) -> None:
            refused.append(event)

    guard = AgentKavach(
        "bot",
        Budget.daily(1),
        prices=PRICES,
        ledger=f"redis://:hunter2@127.0.0.1:{unused_tcp_port}/0",
        observers=[Watcher()],
    )
    with pytest.raises(LedgerUnavailableError) as info:
        guard.reserve(spec())
    message = str(info.value)
    assert f"Redis at redis://:***@127.0.0.1:{unused_tcp_port}/0 did not answer" in message
    assert "fallback='local'" in message and "refused" in message
    assert "hunter2" not in message and "hunter2" not in repr(guard.ledger)
    assert [getattr(e, "refusal_reason", None) for e in refused] == ["ledger_unavailable"]


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Proxy:
    """A loopback TCP proxy to the real Redis that can be started late: Redis 'comes back'.

    With ``lose_next_reply`` set, the next reply from Redis is dropped with its connection:
    Redis ran the command, but the client never hears of it. With ``stop_after_loss`` too,
    the proxy then stops, as if Redis went down right after running the command.
    """

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        import socket

        self.port, self.target = port, target
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen()
        self.stopped = False
        self.lose_next_reply = False
        self.stop_after_loss = False
        self.conns: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self.stopped:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, replies), daemon=True).start()

    def _pump(self, a: object, b: object, replies: bool) -> None:
        import socket

        assert isinstance(a, socket.socket) and isinstance(b, socket.socket)
        try:
            while data := a.recv(65536):
                if replies and self.lose_next_reply:
                    self.lose_next_reply = False  # before the client can see the drop
                    if self.stop_after_loss:
                        self.close()
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)  # wakes the other pump, blocked in recv
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def drop(self) -> None:
        """Cut every open connection, as a Redis restart does."""
        import socket

        for conn in self.conns:
            assert isinstance(conn, socket.socket)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def close(self) -> None:
        import socket

        self.stopped = True
        try:  # wakes the accepting thread; a bare close() would leave it accepting
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()
        self.drop()


def test_fallback_local_keeps_enforcing_and_reconciles_when_redis_returns(
    redis_url: str,
    prefix: str,
    unused_tcp_port: int,
    caplog: pytest.LogCaptureFixture,
    make_ledger: Any,
) -> None:
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    guard = AgentKavach("bot", Budget.daily("0.01"), prices=PRICES, ledger=ledger)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        with guard.reserve(spec(input_tokens=1000, max_output=1000)) as r:
            r.commit(Usage(input_tokens=1000, output_tokens=500))  # $0.0015
    assert ledger.degraded
    assert "REDIS UNREACHABLE" in caplog.text
    # Still enforced locally: $0.0085 left cannot pay a $0.01 call.
    with pytest.raises(BudgetExceededError):
        guard.reserve(spec(input_tokens=5000, max_output=5000, content="big"))

    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        with caplog.at_level(logging.WARNING, logger="kavach"):
            assert ledger.reconcile()
        assert not ledger.degraded
        assert "answers again" in caplog.text
        direct = make_ledger()
        key = guard.status()[0].key
        assert direct.read(key).spent == 1_500_000  # the local spend reached Redis
        with guard.reserve(spec(input_tokens=1000, max_output=1000, content="2")) as r:
            r.commit(Usage(input_tokens=1000, output_tokens=1000))
        assert direct.read(key).spent == 3_500_000
    finally:
        proxy.close()


def test_ledger_from_url_and_from_the_environment(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, raw: Any
) -> None:
    monkeypatch.setenv("AGENTKAVACH_REDIS_URL", redis_url)
    monkeypatch.setenv("AGENTKAVACH_REDIS_PREFIX", prefix)
    monkeypatch.setenv("AGENTKAVACH_REDIS_FALLBACK", "local")
    from_env = AgentKavach("bot", Budget.daily(1), prices=PRICES)
    from_url = AgentKavach("bot", Budget.daily(1), prices=PRICES, ledger=redis_url)
    assert isinstance(from_env.ledger, RedisLedger) and isinstance(from_url.ledger, RedisLedger)
    assert from_env.ledger.fallback == "local" and from_env.ledger.prefix == prefix
    try:
        with from_env.reserve(spec()) as r:
            r.commit(Usage(input_tokens=1000, output_tokens=10))
        assert from_url.status()[0].spent == 1_010_000  # one budget, two guards
        key = prefix + from_url.status()[0].key
        assert raw.hget(key, "spent") == "1010000"
    finally:
        from_env.ledger.close()
        from_url.ledger.close()


def test_dedup_store_lets_one_claim_through_per_ttl(redis_url: str, prefix: str, raw: Any) -> None:
    a = RedisDedupStore(redis_url, prefix=prefix)
    b = RedisDedupStore(raw, prefix=prefix)
    assert a.claim("bot:daily:0.9", 1) is True
    assert b.claim("bot:daily:0.9", 1) is False
    assert b.claim("bot:daily:1.0", 1) is True
    time.sleep(1.1)
    assert b.claim("bot:daily:0.9", 1) is True
    a.close()


def test_a_released_dedup_claim_can_be_claimed_again_but_not_another_processes(
    prefix: str, raw: Any
) -> None:
    # An alert whose delivery failed for good gives its claim back: the next event sends it.
    a = RedisDedupStore(raw, prefix=prefix)
    b = RedisDedupStore(raw, prefix=prefix)
    assert a.claim("bot:daily:0.7", 60) is True
    assert b.claim("bot:daily:0.7", 60) is False
    a.release("bot:daily:0.7")
    assert b.claim("bot:daily:0.7", 60) is True
    a.release("bot:daily:0.7")  # a's claim is gone: b's, taken since, stays
    b.release("bot:daily:0.9")  # never claimed by b: nothing happens
    assert a.claim("bot:daily:0.7", 60) is False


def test_async_and_sync_share_one_ledger(redis_url: str, prefix: str, make_ledger: Any) -> None:
    ledger = make_ledger()

    async def main() -> None:
        hold = await ledger.areserve([LedgerLine("k", 100, 10, 1)], 1, 50)
        assert isinstance(hold, Hold) and hold.units == 50
        assert ledger.read("k").reserved == 60
        assert await ledger.asettle(hold, (33,)) == (33,)
        assert await ledger.aread("k") == ledger.read("k").__class__(33, 0)
        hold = await ledger.areserve([LedgerLine("k", 100, 10, 1)], 1, 50)
        assert isinstance(hold, Hold) and hold.units == 50
        await ledger.arelease(hold)
        await ledger.aclose()

    async def later() -> None:
        assert await ledger.aread("k") == ledger.read("k").__class__(33, 0)
        await ledger.aclose()

    asyncio.run(main())
    asyncio.run(later())  # a second event loop gets its own connection pool
    assert ledger.read("k").spent == 33


@pytest.mark.anyio
async def test_async_fallback_holds_release_and_settle_locally(
    unused_tcp_port: int, make_ledger: Any
) -> None:
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    line = [LedgerLine("k", 100, 10, 1)]
    hold = await ledger.areserve(line, 1, 90)
    assert isinstance(hold, Hold) and hold.units == 90 and ledger.degraded
    assert isinstance(await ledger.areserve(line, 1, 90), Refusal)  # enforced locally
    await ledger.arelease(hold)
    assert (await ledger.aread("k")).reserved == 0
    hold = await ledger.areserve(line, 1, 90)
    assert isinstance(hold, Hold)
    assert await ledger.asettle(hold, (40,)) == (40,)
    assert await ledger.aread("k") == ledger.read("k").__class__(40, 0)


def test_a_call_under_no_budget_makes_no_round_trip(unused_tcp_port: int, make_ledger: Any) -> None:
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0")  # nothing listens there
    hold = ledger.reserve([], 1, 500)
    assert isinstance(hold, Hold) and hold.units == 500
    assert ledger.settle(hold, ()) == ()


def test_unicode_budget_names_round_trip(make_ledger: Any) -> None:
    ledger = make_ledger()
    hold = ledger.reserve([LedgerLine("agent:fürst-bot:daily:2026-11-28", 100, 1, 1)], 1, 5)
    assert isinstance(hold, Hold)
    assert ledger.settle(hold, (3,)) == (3,)
    assert ledger.read("agent:fürst-bot:daily:2026-11-28").spent == 3


def test_connections_dropped_by_a_redis_restart_are_replaced_without_an_error(
    unused_tcp_port: int, make_ledger: Any
) -> None:
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0")
        line = [LedgerLine("k", 1000, 1, 1)]

        async def twice_async() -> None:
            hold = await ledger.areserve(line, 1, 10)
            assert isinstance(hold, Hold)
            proxy.drop()
            await asyncio.sleep(0.05)
            assert await ledger.asettle(hold, (5,)) == (10,)
            await ledger.aclose()

        hold = ledger.reserve(line, 1, 10)
        assert isinstance(hold, Hold)
        proxy.drop()
        time.sleep(0.05)
        assert ledger.settle(hold, (5,)) == (5,)
        asyncio.run(twice_async())
        assert ledger.read("k") == ledger.read("k").__class__(10, 0)
        assert not ledger.degraded
    finally:
        proxy.close()


def test_a_reserve_whose_reply_is_lost_holds_its_amount_once(
    unused_tcp_port: int, make_ledger: Any
) -> None:
    # Redis ran the reserve, the connection dropped before its reply: the retry must not
    # hold the amount again under the same hold id (nothing would ever give it back).
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0")
        lines = [LedgerLine("a", 10**6, 5, 0), LedgerLine("b", 1000, 10, 1)]
        assert ledger.read("b") == Balance(0, 0)  # opens the pooled connection
        proxy.lose_next_reply = True
        hold = ledger.reserve(lines, 1, 600)
        assert isinstance(hold, Hold) and hold.units == 600 and hold.amounts == (5, 610)
        assert ledger.read("a") == Balance(0, 5) and ledger.read("b") == Balance(0, 610)
        proxy.lose_next_reply = True  # a settle run twice counts its spend once
        assert ledger.settle(hold, (5, 300)) == (5, 300)
        assert ledger.read("a") == Balance(5, 0) and ledger.read("b") == Balance(300, 0)
    finally:
        proxy.close()


@pytest.mark.anyio
async def test_an_async_reserve_whose_reply_is_lost_holds_its_amount_once(
    unused_tcp_port: int, make_ledger: Any
) -> None:
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0")
        line = [LedgerLine("k", 1000, 10, 1)]
        assert await ledger.aread("k") == Balance(0, 0)  # opens the batcher's connection
        proxy.lose_next_reply = True
        hold = await ledger.areserve(line, 1, 600)
        assert isinstance(hold, Hold) and hold.units == 600
        assert await ledger.aread("k") == Balance(0, 610)
        proxy.lose_next_reply = True
        assert await ledger.asettle(hold, (300,)) == (300,)
        assert await ledger.aread("k") == Balance(300, 0)
        await ledger.aclose()
    finally:
        proxy.close()


def test_an_add_spent_whose_reply_is_lost_counts_once(
    prefix: str, unused_tcp_port: int, make_ledger: Any, raw: Any
) -> None:
    # Seeding adds the spend Redis is missing. Redis ran the write, the connection dropped
    # before its reply: the retry must not add it again, whether it comes at once or, when
    # the retry's reply is lost too, on reconciling.
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    try:
        assert ledger.read("k") == Balance(0, 0)  # opens the pooled connection
        proxy.lose_next_reply = True
        assert ledger.add_spent("k", 40, 3600) == 40
        assert raw.hget(prefix + "k", "spent") == "40"
        proxy.lose_next_reply = proxy.stop_after_loss = True
        ledger.add_spent("k", 7, 3600)
        assert ledger.degraded  # kept in this process; Redis ran it all the same
        assert raw.hget(prefix + "k", "spent") == "47"
    finally:
        proxy.close()  # already stopped after the loss, unless an assertion failed first

    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        assert ledger.reconcile() and not ledger.degraded
        assert raw.hget(prefix + "k", "spent") == "47"
        assert 3590 <= raw.ttl(prefix + "k") <= 3600
    finally:
        proxy.close()


def _losing_replies(pipeline: Callable[..., Any]) -> Callable[..., Any]:
    """``client.pipeline`` whose pipelines run on Redis, then fail as if the connection
    dropped before their replies came back."""

    def make(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        def lose(*args: Any, **kwargs: Any) -> Any:
            execute(*args, **kwargs)
            raise redis.ConnectionError("the connection dropped before the replies")

        pipe.execute = lose
        return pipe

    return make


def test_a_reconcile_whose_reply_is_lost_adds_the_local_spend_once(
    prefix: str,
    unused_tcp_port: int,
    make_ledger: Any,
    raw: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Redis ran the reconcile's writes but the process never heard back, so it stays on
    # the local ledger and sends them again later: Redis must count them once, and the
    # spend recorded in between too.
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    line = [LedgerLine("k", 1000, 10, 1, 3600)]
    hold = ledger.reserve(line, 1, 90)  # nothing listens there yet: held locally
    assert isinstance(hold, Hold) and ledger.degraded
    ledger.settle(hold, (40,))
    ledger.add_spent("j", 7)

    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        with monkeypatch.context() as patch:
            patch.setattr(ledger.client, "pipeline", _losing_replies(ledger.client.pipeline))
            assert not ledger.reconcile()
        assert ledger.degraded
        assert raw.hget(prefix + "k", "spent") == "40" and raw.hget(prefix + "j", "spent") == "7"
        hold = ledger.reserve(line, 1, 10)
        assert isinstance(hold, Hold)
        ledger.settle(hold, (5,))
        assert ledger.reconcile() and not ledger.degraded
        assert raw.hget(prefix + "k", "spent") == "45" and raw.hget(prefix + "j", "spent") == "7"
        assert ledger.read("k") == Balance(45, 0)
    finally:
        proxy.close()


def test_a_fallback_starts_from_the_spend_a_read_or_seed_saw(
    prefix: str, unused_tcp_port: int, make_ledger: Any, raw: Any
) -> None:
    # Other processes spent 40 of 50 today; this one only read (or seeded) the key before
    # Redis went down: its local ledger must not start the day from zero.
    raw.hset(prefix + "k", "spent", 40)
    raw.hset(prefix + "j", "spent", 30)
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    try:
        assert ledger.read("k").spent == 40
        assert ledger.add_spent("j", 10) == 40
    finally:
        proxy.close()
    assert isinstance(ledger.reserve([LedgerLine("k", 50, 0, 1, 3600)], 11, 11), Refusal)
    assert isinstance(ledger.reserve([LedgerLine("j", 50, 0, 1, 3600)], 11, 11), Refusal)
    assert ledger.degraded


def test_a_local_settle_that_races_a_reconcile_reaches_redis(
    prefix: str, unused_tcp_port: int, make_ledger: Any, raw: Any
) -> None:
    # A call held while Redis was down settles just as another thread reconciles: its
    # spend must reach Redis now, not wait in the local books for the next outage.
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    line = [LedgerLine("k", 1000, 10, 1, 3600)]
    hold = ledger.reserve(line, 1, 90)
    assert isinstance(hold, Hold) and ledger.degraded
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        local = ledger._local
        release = local.release

        def release_then_reconcile(memory_hold: Hold) -> None:
            release(memory_hold)
            assert ledger.reconcile()  # another thread, between this settle's two steps

        local.release = release_then_reconcile
        assert ledger.settle(hold, (40,)) == (40,)
        assert not ledger.degraded
        assert raw.hget(prefix + "k", "spent") == "40"
        assert ledger.read("k") == Balance(40, 0)
    finally:
        proxy.close()


@pytest.mark.anyio
async def test_an_async_reconcile_adds_all_the_local_spend(
    prefix: str,
    unused_tcp_port: int,
    make_ledger: Any,
    raw: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kavach.ledger.redis._RETRY_SECONDS", 0.05)
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    lines = [LedgerLine("k", 1000, 10, 1, 3600), LedgerLine("j", 1000, 0, 1, 3600)]
    for actual in ((40, 30), (2, 1)):
        hold = await ledger.areserve(lines, 1, 90)
        assert isinstance(hold, Hold) and ledger.degraded
        await ledger.asettle(hold, actual)
    ledger.add_spent("i", 7)

    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        await asyncio.sleep(0.1)  # past the retry delay: the next command tries Redis
        assert await ledger.aread("k") == Balance(42, 0)
        assert not ledger.degraded
        spent = {key: raw.hget(prefix + key, "spent") for key in ("k", "j", "i")}
        assert spent == {"k": "42", "j": "31", "i": "7"}
        # Each write leaves a marker that it was applied, gone after a day.
        markers = list(raw.scan_iter(match=prefix + "applied:*"))
        assert len(markers) == 3
        assert all(86_000 <= raw.ttl(marker) <= 86_400 for marker in markers)
        await ledger.aclose()
    finally:
        proxy.close()


def test_a_settle_redis_misses_is_added_when_it_answers_again(
    redis_url: str,
    prefix: str,
    unused_tcp_port: int,
    caplog: pytest.LogCaptureFixture,
    make_ledger: Any,
) -> None:
    # Fail closed (the default): Redis drops while a call is in flight. The provider bills
    # the call, so its spend must reach Redis once it answers, and its hold go back once.
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0")
    guard = AgentKavach("bot", Budget.daily("0.01"), prices=PRICES, ledger=ledger)
    r = guard.reserve(spec(input_tokens=1000, max_output=1000))
    proxy.close()
    with caplog.at_level(logging.WARNING, logger="kavach"):
        r.commit(Usage(input_tokens=1000, output_tokens=500))  # $0.0015, never raises
    assert "did not answer the settle" in caplog.text and "kept in this process" in caplog.text
    assert "could not settle" not in caplog.text
    with pytest.raises(LedgerUnavailableError):  # still fails closed meanwhile
        guard.reserve(spec(content="2"))

    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        with caplog.at_level(logging.WARNING, logger="kavach"):
            status = guard.status()[0]
        assert (status.spent, status.reserved) == (1_500_000, 0)
        assert "added the spend of hold" in caplog.text
        direct = make_ledger()
        assert direct.read(status.key) == Balance(1_500_000, 0)
    finally:
        proxy.close()


@pytest.mark.anyio
async def test_a_missed_settle_counts_once_after_a_lease_reclaimed_its_hold(
    unused_tcp_port: int, make_ledger: Any
) -> None:
    # The settle waits for Redis while the hold's lease ends and another process reclaims
    # it: the late settle then adds the spend without giving the hold back a second time.
    reclaimed: list[HoldReclaimed] = []
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", lease_seconds=0.2)
    other = make_ledger(lease_seconds=30, on_reclaim=reclaimed.append)
    line = [LedgerLine("k", 1000, 100, 0)]
    hold = await ledger.areserve(line, 0, 0)
    assert isinstance(hold, Hold)
    proxy.close()
    assert await ledger.asettle(hold, (70,)) == ()  # fail closed: spent not known yet
    await asyncio.sleep(0.3)  # past the lease
    kept = other.reserve(line, 0, 0)
    assert isinstance(kept, Hold) and reclaimed == [HoldReclaimed(hold.id, "k", 100)]
    assert other.read("k") == Balance(0, 100)

    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        assert await ledger.aread("k") == Balance(70, 100)  # only the other hold is left
        other.release(kept)
        await ledger.aclose()
        assert other.read("k") == Balance(70, 0)
    finally:
        proxy.close()


@pytest.mark.anyio
async def test_a_caller_cancelled_mid_reserve_leaves_no_hold_behind(make_ledger: Any) -> None:
    ledger = make_ledger()
    line = [LedgerLine("k", 10**9, 10, 1)]
    tasks = [asyncio.create_task(ledger.areserve(line, 1, 100)) for _ in range(50)]
    await asyncio.sleep(0)  # every reserve is queued or on the wire
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    # The orphaned holds are given back in the background; closing waits for the reserves
    # still in flight and for those releases. (Polling a read instead raced: a read on
    # another pooled connection can run before the reserves it should see.)
    await ledger.aclose()
    assert make_ledger().read("k") == Balance(0, 0)


def test_guards_on_a_redis_ledger_share_alert_deduplication(make_ledger: Any) -> None:
    def make() -> AgentKavach:
        return AgentKavach(
            "bot",
            Budget.daily(1),
            prices=PRICES,
            ledger=make_ledger(),
            channels=[AgentKavach.channel(lambda alert: None, threshold=0.5)],
        )

    first, second = make(), make()  # as if in two processes
    assert first.alerts is not None and second.alerts is not None
    assert isinstance(first.alerts.dedup, RedisDedupStore)
    assert first.alerts.dedup.claim("bot:daily:0.5", 5) is True
    assert second.alerts.dedup.claim("bot:daily:0.5", 5) is False
    first.close()
    second.close()


@pytest.mark.anyio
async def test_an_async_local_settle_that_races_a_reconcile_does_not_block_the_loop(
    prefix: str, unused_tcp_port: int, make_ledger: Any, raw: Any
) -> None:
    # As above, from async code: the spend reaches Redis through the async client. The sync
    # one would hold the event loop for each round trip (longer on a slow network).
    ledger = make_ledger(f"redis://127.0.0.1:{unused_tcp_port}/0", fallback="local")
    line = [LedgerLine("k", 1000, 10, 1, 3600)]
    hold = await ledger.areserve(line, 1, 90)
    assert isinstance(hold, Hold) and ledger.degraded
    proxy = Proxy(unused_tcp_port, ("127.0.0.1", 6379))
    try:
        local = ledger._local
        release = local.release
        loop_thread = threading.current_thread()
        blocking: list[bytes] = []
        send = ledger._send

        def recorded_send(packed: Any) -> Any:
            if threading.current_thread() is loop_thread:
                blocking.append(packed)
            return send(packed)

        def release_then_reconcile(memory_hold: Hold) -> None:
            release(memory_hold)
            reconciler = threading.Thread(target=ledger.reconcile)  # another thread
            reconciler.start()
            reconciler.join()
            ledger._send = recorded_send

        local.release = release_then_reconcile
        assert await ledger.asettle(hold, (40,)) == (40,)
        assert not ledger.degraded
        assert raw.hget(prefix + "k", "spent") == "40"
        assert await ledger.aread("k") == Balance(40, 0)
        assert blocking == []
        await ledger.aclose()
    finally:
        proxy.close()


def test_a_budget_too_large_to_count_exactly_is_a_clear_error_and_redis_stays_free(
    make_ledger: Any, raw: Any
) -> None:
    # $10 million a day is past 2**53 nano-dollars, where the scripts' doubles stop being
    # exact: it was counted inexactly, and far larger limits made the reserve script loop
    # for ever, holding Redis (every client of it, not only the guard) busy.
    guard = AgentKavach(
        "big", Budget.daily(10_000_000), ledger=make_ledger(socket_timeout=3), prices=PRICES
    )
    events = Recorder()
    guard.add_observer(events)
    with pytest.raises(KavachConfigError, match=r"above the 9,007,199,254,740,991 the Redis"):
        guard.reserve(spec(input_tokens=10, max_output=10))
    assert raw.ping()
    assert [(e.status, e.refusal_reason) for e in events.calls] == [("refused", "config")]
    # Just under the bound works, exactly.
    fits = AgentKavach("fits", Budget.daily(9_000_000), ledger=make_ledger(), prices=PRICES)
    with fits.reserve(spec(input_tokens=10, max_output=10)) as r:
        r.commit(Usage(input_tokens=10, output_tokens=10))
    assert fits.remaining == pytest.approx(9_000_000 - fits.spent)


def test_the_reserve_script_ends_for_amounts_past_exact_doubles(raw: Any, prefix: str) -> None:
    # The script itself never loops, whatever reaches it (another client, an older guard).
    from kavach.ledger import _lua

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    keys = [prefix + "bal", prefix + "holds", prefix + "reclaimed"]
    try:
        reply = client.eval(_lua.RESERVE, 3, *keys, "h-1", 60_000, 1, 10, 2**60, 0, 7, -1)
        assert reply[0] == 1 and int(reply[1]) == 10
    finally:
        with contextlib.suppress(redis.ResponseError):
            raw.script_kill()  # only if the script is still running: Redis free for others
        client.close()
