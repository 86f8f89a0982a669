import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kavach.ledger import Balance, Hold, LedgerLine, MemoryLedger, Refusal, grantable_units


def test_reserve_is_all_or_nothing_across_keys() -> None:
    ledger = MemoryLedger()
    lines = [LedgerLine("a", 100, 10, 1), LedgerLine("b", 50, 10, 1)]
    hold = ledger.reserve(lines, 30, 30)
    assert isinstance(hold, Hold) and hold.amounts == (40, 40)
    refused = ledger.reserve(lines, 30, 30)  # b has 10 left
    assert isinstance(refused, Refusal) and refused.index == 1
    assert ledger.read("a").reserved == 40  # nothing held for a by the refused call
    ledger.settle(hold, (25, 25))
    assert ledger.read("a").spent == 25 and ledger.read("a").reserved == 0


def test_strict_grant_sizes_to_the_tightest_line() -> None:
    lines = [LedgerLine("a", 1000, 100, 3), LedgerLine("b", 1000, 0, 1)]
    assert grantable_units(lines, [(0, 0), (0, 0)], 1, 10_000) == 300
    assert grantable_units(lines, [(400, 0), (0, 0)], 1, 10_000) == 166
    assert isinstance(grantable_units(lines, [(898, 0), (0, 0)], 1, 10_000), Refusal)


@given(
    limit=st.integers(0, 10_000),
    spent=st.integers(0, 12_000),
    fixed=st.integers(0, 3_000),
    per_unit=st.integers(0, 50),
    min_units=st.integers(0, 300),
    extra=st.integers(0, 300),
)
def test_one_budget_grants_what_the_general_rule_grants(
    limit: int, spent: int, fixed: int, per_unit: int, min_units: int, extra: int
) -> None:
    # A ledger with one line takes a shorter path than grantable_units; it must agree.
    max_units = min_units + extra
    ledger = MemoryLedger()
    ledger.add_spent("k", spent)
    line = LedgerLine("k", limit, fixed, per_unit)
    expected = grantable_units([line], [(spent, 0)], min_units, max_units)
    result = ledger.reserve([line], min_units, max_units)
    if isinstance(expected, Refusal):
        assert result == expected
        assert ledger.read("k") == Balance(spent, 0)
    else:
        assert isinstance(result, Hold) and result.units == expected
        assert result.amounts == (fixed + per_unit * expected,)
        assert ledger.read("k") == Balance(spent, fixed + per_unit * expected)
        assert ledger.settle(result, (5,)) == (spent + 5,)
        assert ledger.read("k") == Balance(spent + 5, 0)


def test_settle_and_release_are_idempotent() -> None:
    ledger = MemoryLedger()
    hold = ledger.reserve([LedgerLine("k", 100, 10, 0)], 0, 0)
    assert isinstance(hold, Hold)
    ledger.settle(hold, (7,))
    ledger.settle(hold, (7,))
    ledger.release(hold)
    assert ledger.read("k").spent == 7 and ledger.read("k").reserved == 0
    assert ledger.open_holds == 0


def test_threads_never_overcommit() -> None:
    ledger = MemoryLedger()
    line = LedgerLine("k", 1_000, 0, 1)
    granted: list[int] = []

    def worker() -> None:
        for _ in range(200):
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


LIMIT = 1_000


class LedgerMachine(RuleBasedStateMachine):
    """Any interleaving of reserve, commit and release keeps spent + reserved within limits."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = MemoryLedger()
        self.holds: list[Hold] = []
        self.lines = [LedgerLine("x", LIMIT, 0, 1), LedgerLine("y", LIMIT // 2, 5, 2)]

    @rule(lo=st.integers(0, 60), extra=st.integers(0, 200), both=st.booleans())
    def reserve(self, lo: int, extra: int, both: bool) -> None:
        lines = self.lines if both else self.lines[:1]
        result = self.ledger.reserve(lines, lo, lo + extra)
        if isinstance(result, Hold):
            assert lo <= result.units <= lo + extra
            self.holds.append(result)

    @precondition(lambda self: bool(self.holds))
    @rule(i=st.integers(0, 1000), fraction=st.floats(0, 1))
    def commit(self, i: int, fraction: float) -> None:
        hold = self.holds.pop(i % len(self.holds))
        self.ledger.settle(hold, tuple(int(a * fraction) for a in hold.amounts))

    @precondition(lambda self: bool(self.holds))
    @rule(i=st.integers(0, 1000))
    def release(self, i: int) -> None:
        self.ledger.release(self.holds.pop(i % len(self.holds)))

    @invariant()
    def within_limits(self) -> None:
        for line in self.lines:
            balance = self.ledger.read(line.key)
            assert balance.spent + balance.reserved <= line.limit
            assert balance.reserved >= 0

    def teardown(self) -> None:
        for hold in self.holds:
            self.ledger.release(hold)
        for line in self.lines:
            assert self.ledger.read(line.key).reserved == 0
        assert self.ledger.open_holds == 0


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
