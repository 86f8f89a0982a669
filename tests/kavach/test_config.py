"""Guards from YAML: budgets, guardrails, shared pools, interpolation, and errors with lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kavach import (
    AgentKavach,
    Budget,
    BudgetExceededError,
    CallLimitError,
    CallSpec,
    KavachConfigError,
    Ledger,
    ModelPrice,
    Usage,
)
from kavach.config import ConfigFileError, load_config

# Files price test-model at $1 per million tokens in and out, so one call of 1000 in +
# 1000 out holds $0.002.
CALL = 2_000_000  # nano-dollars


def spec(content: str = "hello", run_id: str | None = None) -> CallSpec:
    return CallSpec(
        provider="openai",
        model="test-model",
        messages=[{"role": "user", "content": content}],
        max_output_tokens=1000,
        input_tokens=1000,
        run_id=run_id,
    )


def call(guard: AgentKavach, content: str = "hello", run_id: str | None = None) -> None:
    with guard.reserve(spec(content, run_id)) as r:
        r.commit(Usage(input_tokens=1000, output_tokens=1000))


Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def write(text: str) -> Path:
        path = tmp_path / "kavach.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


def error_from(path: Path, agent: str | None = None) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as info:
        AgentKavach.from_yaml(path, agent)
    assert isinstance(info.value, KavachConfigError)
    assert str(path) in str(info.value)
    return info.value


FULL = """
defaults:
  mode: strict
  detect_loops: true
  default_max_output_tokens: 1000
  prices:
    test-model: {input_per_mtok: 1.0, output_per_mtok: 1.0}
shared_budgets:
  research-team: {daily: 100, total: {tokens: 5000000}}
org_budget: {monthly: 2000}
agents:
  research-bot:
    budget:
      daily: 0.005
      monthly: {dollars: 1000, calls: 500}
      per_run: {tokens: 300000}
      tz: Europe/Berlin
      thresholds: [0.5, 1.0]
    shared: [research-team]
    mode: reserve
    max_tokens_per_run: 200000
    max_calls_per_run: 40
    max_runtime_seconds: 600
    max_cost_per_call: 0.5
    loop_threshold: 3
    max_spend_per_minute: 2
    velocity_window_seconds: 30
    kill_on_guardrail: false
    min_output_tokens: 8
    unknown_model_price: {input_per_mtok: 10, output_per_mtok: 30}
    save_prompts: true
  summarizer:
    budget: {daily: {tokens: 1000000}}
    max_calls_per_run: 2
    detect_loops: false
    enabled: true
"""


def test_full_example_builds_guards_with_its_budgets_and_guardrails(write: Write) -> None:
    guards = AgentKavach.from_yaml(write(FULL))
    assert set(guards) == {"research-bot", "summarizer"}
    bot = guards["research-bot"]
    th = (0.5, 1.0)
    assert bot.budgets == (
        Budget.daily(0.005, tz="Europe/Berlin", thresholds=th),
        Budget.monthly(1000, tz="Europe/Berlin", thresholds=th),
        Budget.monthly(calls=500, tz="Europe/Berlin", thresholds=th),
        Budget.per_run(tokens=300_000, thresholds=th),
        Budget.daily(100, shared="research-team"),
        Budget.total(tokens=5_000_000, shared="research-team"),
        Budget.monthly(2000, org=True),
    )
    assert bot.mode == "reserve"  # the agent's own setting beats defaults
    assert bot.min_output_tokens == 8 and bot.save_prompts and not bot.kill_on_guardrail
    g = bot.guardrail_config
    assert (g.max_tokens_per_run, g.max_calls_per_run, g.max_runtime_seconds) == (200_000, 40, 600)
    assert g.max_cost_per_call == 500_000_000 and g.max_spend_per_minute == 2_000_000_000
    assert (g.detect_loops, g.loop_threshold, g.velocity_window_seconds) == (True, 3, 30)
    assert bot.pricing.resolve("openai", "no-such-model", None)  # unknown_model_price applies

    summarizer = guards["summarizer"]
    assert summarizer.mode == "strict"  # from defaults
    assert summarizer.budgets == (
        Budget.daily(tokens=1_000_000),
        Budget.monthly(2000, org=True),
    )
    assert summarizer.guardrail_config.max_calls_per_run == 2
    assert summarizer.guardrail_config.detect_loops is False

    # $0.005 a day pays two $0.002 calls; the third is refused before it is made.
    call(bot, "a")
    call(bot, "b")
    with pytest.raises(BudgetExceededError):
        bot.reserve(spec("c"))
    assert bot.spent == pytest.approx(2 * CALL / 1e9)

    # max_calls_per_run: 2 refuses the third call of a run.
    with summarizer.run():
        call(summarizer, "x")
        call(summarizer, "y")
        with pytest.raises(CallLimitError):
            summarizer.reserve(spec("z"))


def test_one_agent_by_name(write: Write) -> None:
    guard = AgentKavach.from_yaml(write(FULL), agent="summarizer")
    assert isinstance(guard, AgentKavach) and guard.agent_name == "summarizer"
    error = error_from(write(FULL), agent="nobody")
    assert "research-bot" in str(error) and "summarizer" in str(error)


def test_shared_budget_is_enforced_across_agents_of_one_file(write: Write) -> None:
    path = write(
        """
        defaults:
          detect_loops: false
          prices:
            test-model: {input_per_mtok: 1.0, output_per_mtok: 1.0}
        shared_budgets:
          team: {daily: 0.005}
        agents:
          alpha: {budget: {daily: 1}, shared: [team]}
          beta: {shared: [team]}
        """
    )
    guards = AgentKavach.from_yaml(path)
    alpha, beta = guards["alpha"], guards["beta"]
    assert alpha.ledger is beta.ledger
    call(alpha)
    call(beta)
    # The pool has $0.001 left: neither agent may start a $0.002 call, though alpha's own
    # $1 daily budget is nearly untouched.
    for guard in (alpha, beta):
        with pytest.raises(BudgetExceededError) as info:
            guard.reserve(spec())
        assert info.value.budget == "shared:team daily"


def test_interpolation_with_and_without_defaults(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAVACH_T_CALLS", "7")
    monkeypatch.setenv("KAVACH_T_DAILY", "12.5")
    monkeypatch.setenv("KAVACH_T_EMPTY", "")
    monkeypatch.delenv("KAVACH_T_UNSET", raising=False)
    path = write(
        """
        agents:
          bot:
            budget:
              daily: ${KAVACH_T_DAILY}
              weekly: ${KAVACH_T_UNSET:-40}
              tz: "${KAVACH_T_EMPTY:-Asia/Kolkata}"
            max_calls_per_run: ${KAVACH_T_CALLS}
            loop_threshold: ${KAVACH_T_UNSET:-3}
            detect_loops: ${KAVACH_T_UNSET:-false}
        """
    )
    guard = AgentKavach.from_yaml(path, agent="bot")
    assert guard.budgets == (
        Budget.daily(12.5, tz="Asia/Kolkata"),
        Budget.weekly(40, tz="Asia/Kolkata"),
    )
    assert guard.guardrail_config.max_calls_per_run == 7
    assert guard.guardrail_config.loop_threshold == 3
    assert guard.guardrail_config.detect_loops is False


def test_interpolated_strings_and_the_literal_escape(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAVACH_T_HOOK", "https://hooks.example/T0")
    path = write(
        """
        channels:
          slack: {type: slack, webhook_url: "${KAVACH_T_HOOK}/services"}
          relay: {type: webhook, url: "http://127.0.0.1/$${NOT_A_VAR}", secret: "a$b$$c"}
        agents:
          bot: {}
        """
    )
    config = load_config(path)
    assert config.channels["slack"].settings == {"webhook_url": "https://hooks.example/T0/services"}
    assert config.channels["relay"].settings["url"] == "http://127.0.0.1/${NOT_A_VAR}"
    assert config.channels["relay"].settings["secret"] == "a$b$$c"
    assert "hooks.example" not in repr(config)  # channel settings hold secrets


def test_a_missing_variable_names_it_with_file_and_line(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAVACH_T_UNSET", raising=False)
    path = write(
        """
        agents:
          bot:
            budget:
              daily: ${KAVACH_T_UNSET}
        """
    )
    error = error_from(path)
    assert error.line == 4
    assert error.field == "agents.bot.budget.daily"
    assert f"{path}:4:" in str(error)
    assert "KAVACH_T_UNSET is not set" in str(error)


def test_an_empty_variable_is_an_error_not_a_missing_budget(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DAILY= (what docker compose passes for a variable it does not have) must not build
    # a guard without its budget: every call would go through.
    monkeypatch.setenv("KAVACH_T_EMPTY", "")
    path = write(
        """
        agents:
          bot:
            budget:
              daily: ${KAVACH_T_EMPTY}
            max_calls_per_run: ${KAVACH_T_EMPTY:-40}
            save_prompts: ${KAVACH_T_EMPTY:-}
        """
    )
    error = error_from(path)
    assert (error.line, error.field) == (4, "agents.bot.budget.daily")
    assert "KAVACH_T_EMPTY is set but empty" in str(error)
    assert "${KAVACH_T_EMPTY:-}" in str(error)  # how to allow empty, when meant

    allowed = write(
        """
        api_key: ${KAVACH_T_EMPTY:-}
        agents:
          bot:
            budget: {daily: 5}
            max_calls_per_run: ${KAVACH_T_EMPTY:-40}
        """
    )
    config = load_config(allowed)
    assert config.agents["bot"].max_calls_per_run == 40


@pytest.mark.parametrize(
    ("top", "field", "message"),
    [
        ("ledger: memroy", "ledger", "ledger must be a Ledger or a redis:// URL, got 'memroy'"),
        ("api_key: sk-not-ours", "api_key", "api_key must be an AgentKavach SDK key"),
        ("api_key: ak_test_1", "api_key", "api_key is set but no backend endpoint"),
        (
            "api_key: ak_test_1\nendpoint: kavach.internal:8000",
            "endpoint",
            "endpoint must be an http(s) URL",
        ),
    ],
)
def test_a_bad_top_level_setting_is_an_error_at_its_own_line(
    write: Write, monkeypatch: pytest.MonkeyPatch, top: str, field: str, message: str
) -> None:
    monkeypatch.delenv("AGENTKAVACH_BACKEND_URL", raising=False)
    lines = top.split("\n")
    path = write("\n".join([*lines, "agents:", "  bot:", "    budget: {daily: 5}", ""]))
    error = error_from(path)
    assert (error.field, error.line) == (
        field,
        1 + next(i for i, line in enumerate(lines) if line.startswith(field)),
    )
    assert message in str(error)


def test_an_unknown_key_is_an_error_at_its_line(write: Write) -> None:
    path = write(
        """
        defaults:
          mode: strict
        agents:
          research-bot:
            budget: {daily: 50}

            max_call_per_run: 40
        """
    )
    error = error_from(path)
    assert (error.line, error.field) == (7, "agents.research-bot.max_call_per_run")
    assert "unknown key 'max_call_per_run'" in str(error)
    assert "did you mean 'max_calls_per_run'" in str(error)

    nested = write(
        """
        agents:
          bot:
            budget:
              daily: 5
              hourly: 1
        """
    )
    error = error_from(nested)
    assert (error.line, error.field) == (5, "agents.bot.budget.hourly")
    assert "expected one of: daily, weekly, monthly, total, per_run" in str(error)


def test_a_negative_budget_names_line_and_field(write: Write) -> None:
    path = write(
        """
        agents:
          research-bot:
            budget:
              monthly: 1000
              daily: -5
        """
    )
    error = error_from(path)
    assert (error.line, error.field) == (5, "agents.research-bot.budget.daily")
    assert "greater than or equal to 0" in str(error) and "-5" in str(error)


@pytest.mark.parametrize("value", ['"40"', "forty", "4.5", "true"])
def test_a_non_integer_for_an_integer_field_names_line_and_field(write: Write, value: str) -> None:
    path = write(
        f"""
        agents:
          bot:
            max_calls_per_run: {value}
        """
    )
    error = error_from(path)
    assert (error.line, error.field) == (3, "agents.bot.max_calls_per_run")
    assert "valid integer" in str(error)


def test_every_bad_value_is_reported_in_line_order(write: Write) -> None:
    path = write(
        """
        agents:
          bot:
            mode: lax
            loop_threshold: 1
            budget: {daily: cheap}
        """
    )
    error = error_from(path)
    lines = str(error).splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("agents.bot.mode: Input should be 'reserve' or 'strict' (got 'lax')")
    assert ":4: agents.bot.loop_threshold:" in lines[1]
    assert ":5: agents.bot.budget.daily: expected a dollar amount" in lines[2]


def test_a_value_from_the_environment_is_not_echoed(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAVACH_T_SECRET", "sk-live-abcdef")
    path = write(
        """
        agents:
          bot:
            max_calls_per_run: ${KAVACH_T_SECRET}
        """
    )
    error = error_from(path)
    assert error.line == 3 and "sk-live-abcdef" not in str(error)


def test_a_yaml_syntax_error_names_its_line(write: Write) -> None:
    path = write(
        """
        agents:
          bot:
            budget: {daily: 5
            max_calls_per_run: 3
        """
    )
    error = error_from(path)
    assert "invalid YAML" in str(error)
    assert error.line == 4


def test_a_duplicate_key_is_an_error(write: Write) -> None:
    path = write(
        """
        agents:
          bot:
            max_calls_per_run: 3
            max_calls_per_run: 30
        """
    )
    error = error_from(path)
    assert error.line == 4 and "duplicate key" in str(error) and "line 3" in str(error)


def test_references_to_undefined_pools_and_bad_pools(write: Write) -> None:
    unknown = write(
        """
        shared_budgets:
          team: {daily: 10}
        agents:
          bot:
            shared: [team, tema]
        """
    )
    error = error_from(unknown)
    assert (error.line, error.field) == (5, "agents.bot.shared[1]")
    assert "no shared budget 'tema'" in str(error)

    per_run = write(
        """
        shared_budgets:
          team:
            per_run: 10
        agents:
          bot: {shared: [team]}
        """
    )
    error = error_from(per_run)
    assert (error.line, error.field) == (3, "shared_budgets.team.per_run")
    assert "a per_run budget belongs to one agent" in str(error)


def test_a_yaml_ledger_url_puts_the_guards_on_redis(write: Write) -> None:
    from kavach.ledger.redis import RedisLedger

    guards = AgentKavach.from_yaml(
        write("ledger: redis://127.0.0.1:6379/0\nagents:\n  bot: {}\n  other: {}\n")
    )
    assert all(isinstance(g.ledger, RedisLedger) for g in guards.values())


def test_without_a_ledger_key_the_guards_use_agentkavach_redis_url(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Processes that share a Redis share their org and shared budgets, as AgentKavach()'s
    # own guards do; each on a private ledger, N processes could spend N times the limit.
    from kavach.ledger.memory import MemoryLedger
    from kavach.ledger.redis import RedisLedger

    monkeypatch.setenv("AGENTKAVACH_REDIS_URL", "redis://127.0.0.1:6379/0")
    guards = AgentKavach.from_yaml(write("org_budget: {daily: 1}\nagents:\n  bot: {}\n"))
    assert isinstance(guards["bot"].ledger, RedisLedger)
    pinned = AgentKavach.from_yaml(write("ledger: memory\nagents:\n  bot: {}\n"))
    assert isinstance(pinned["bot"].ledger, MemoryLedger)  # an explicit choice wins


def test_yaml_channels_and_alerts_build_alerting_guards(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_URL", "https://hooks.slack.com/services/T0/B0/secret")
    path = write(
        """
        channels:
          slack: {type: slack, webhook_url: "${SLACK_URL}"}
          stop: {type: kill}
        agents:
          bot:
            budget: {daily: 5}
            alerts:
              - {threshold: 0.7, channels: [slack], cooldown: 60}
              - {threshold: 1.0, channels: [stop]}
        """
    )
    guard = AgentKavach.from_yaml(path, agent="bot")
    assert guard.alerts is not None
    assert 0.7 in guard.budgets[0].thresholds
    assert "secret" not in repr(guard.alerts)
    guard.close()


def test_channel_and_alert_shapes_are_validated(write: Write) -> None:
    error = error_from(
        write(
            """
            channels:
              slack: {type: slack}
              sms: {type: sms, number: 1}
            agents:
              bot:
                alerts: [{threshold: 1.5, channels: []}]
            """
        )
    )
    text = str(error)
    assert ":2: channels.slack: a slack channel needs webhook_url" in text
    assert ":3: channels.sms.type: Input should be" in text
    assert ":6: agents.bot.alerts[0].threshold:" in text
    assert ":6: agents.bot.alerts[0].channels:" in text


def test_prices_become_model_prices(write: Write) -> None:
    path = write(
        """
        agents:
          bot:
            prices:
              my-model: {input_per_mtok: 2, output_per_mtok: 8, web_search_per_1k: 10}
        """
    )
    guard = AgentKavach.from_yaml(path, agent="bot")
    price = guard.pricing.resolve("openai", "my-model", None)
    given = ModelPrice(input_per_mtok=2, output_per_mtok=8, web_search_per_1k=10)
    expected = AgentKavach(prices={"x": given})
    assert price == expected.pricing.resolve("openai", "x", None)
    assert price.web_search == 10_000_000


def test_import_kavach_does_not_load_the_config_machinery() -> None:
    code = "import sys, kavach; print('kavach.config' in sys.modules, 'yaml' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


class FutureGuard(AgentKavach):
    """A guard that takes the options later issues add, to check the loader hands them on."""

    def __init__(
        self,
        agent_name: str = "default",
        budget: Budget | list[Budget] | None = None,
        *,
        ledger: Ledger | str | None = None,
        channels: list[object] | None = None,
        provider: str | None = None,
        llm_key: str | None = None,
        api_key: str | None = None,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(agent_name, budget, **kwargs)
        self.received = {
            "ledger": ledger,
            "channels": channels,
            "provider": provider,
            "llm_key": llm_key,
            "api_key": api_key,
            "endpoint": endpoint,
        }

    @classmethod
    def channel(cls, kind: str, *, threshold: float, **settings: Any) -> tuple[Any, ...]:
        return (kind, threshold, settings)


def test_options_are_handed_on_when_the_guard_accepts_them(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAVACH_T_HOOK", "https://hooks.example/T0")
    path = write(
        """
        ledger: redis://127.0.0.1:6379/0
        api_key: ak_123
        endpoint: http://127.0.0.1:8000
        channels:
          slack: {type: slack, webhook_url: "${KAVACH_T_HOOK}"}
          stop: {type: kill}
        defaults:
          provider: anthropic
        agents:
          bot:
            llm_key: sk-test
            alerts:
              - {threshold: 0.9, channels: [slack]}
              - {threshold: 1.0, channels: [slack, stop]}
          quiet:
            alerts: [{threshold: 0.5, channels: [pager]}]
        """
    )
    bot = FutureGuard.from_yaml(path, agent="bot")
    assert isinstance(bot, FutureGuard)
    assert bot.received == {
        "ledger": "redis://127.0.0.1:6379/0",
        "channels": [
            ("slack", 0.9, {"name": "slack", "webhook_url": "https://hooks.example/T0"}),
            ("slack", 1.0, {"name": "slack", "webhook_url": "https://hooks.example/T0"}),
            ("kill", 1.0, {"name": "stop"}),
        ],
        "provider": "anthropic",
        "llm_key": "sk-test",
        "api_key": "ak_123",
        "endpoint": "http://127.0.0.1:8000",
    }
    with pytest.raises(ConfigFileError) as info:
        FutureGuard.from_yaml(path)
    assert (info.value.line, info.value.field) == (16, "agents.quiet.alerts[0].channels[0]")
    assert "no channel 'pager'" in str(info.value)


def test_the_documented_example_loads(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    import kavach.config

    doc = kavach.config.__doc__ or ""
    example = doc.split("The file, in full")[1].split("::\n", 1)[1].split("\nRules:")[0]
    monkeypatch.setenv("SLACK_URL", "https://hooks.example/T0")
    monkeypatch.setenv("PD_KEY", "R0123456789abcdef0123456789abcdef")
    monkeypatch.delenv("AGENTKAVACH_API_KEY", raising=False)
    guard = FutureGuard.from_yaml(write(example), agent="research-bot")
    assert guard.mode == "reserve" and guard.guardrail_config.max_calls_per_run == 40
    assert [b.label for b in guard.budgets] == [
        "daily",
        "monthly",
        "monthly tokens",
        "per_run calls",
        "shared:research-team daily",
        "org monthly",
    ]
    assert guard.received["provider"] == "openai" and guard.received["api_key"] is None
    # slack and oncall from the agent's alert, stop from its own rule
    assert len(guard.received["channels"] or []) == 3


def test_anchors_and_merge_keys_work_and_a_recursive_alias_is_refused(write: Write) -> None:
    path = write(
        """
        x-base: &base {max_calls_per_run: 5, loop_threshold: 3}
        agents:
          a: {<<: *base, loop_threshold: 4}
        """
    )
    error = error_from(path)  # x-base itself is not a key of the file
    assert (error.line, error.field) == (1, "x-base")

    guard = AgentKavach.from_yaml(
        write(
            """
            agents:
              a: &a {max_calls_per_run: 5, loop_threshold: 3}
              b: {<<: *a, loop_threshold: 4}
            """
        ),
        agent="b",
    )
    assert (guard.guardrail_config.max_calls_per_run, guard.guardrail_config.loop_threshold) == (
        5,
        4,
    )
    error = error_from(write("agents: &x\n  bot: {shared: *x}\n"))
    assert error.line == 2


def alert_rules(guard: AgentKavach) -> list[tuple[str, float | None]]:
    assert guard.alerts is not None
    return sorted(
        ((r.channels[0], r.threshold) for r in guard.alerts.config.rules),
        key=lambda pair: (pair[0], pair[1] or 0.0),
    )


def test_rule_keys_on_a_channel_give_it_a_rule_of_its_own(write: Write) -> None:
    path = write(
        """
        channels:
          stop: {type: kill, threshold: 1.0}
          slack: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/X", threshold: 0.7}
        agents:
          bot:
            budget: {daily: 10}
            alerts:
              - {threshold: 0.9, channels: [slack]}
          other:
            budget: {daily: 10}
        """
    )
    guards = AgentKavach.from_yaml(path)
    # slack: 0.7 of its own and 0.9 from bot's alert, each with guardrail trips; stop at 100%
    assert alert_rules(guards["bot"]) == [
        ("slack", None),
        ("slack", None),
        ("slack", 0.7),
        ("slack", 0.9),
        ("stop", 1.0),
    ]
    assert alert_rules(guards["other"]) == [("slack", None), ("slack", 0.7), ("stop", 1.0)]
    for guard in guards.values():
        guard.close()


def test_a_bad_rule_key_on_a_channel_names_its_line(write: Write) -> None:
    error = error_from(
        write(
            """
            agents:
              bot:
                budget: {daily: 10}
            channels:
              slack: {type: slack, webhook_url: "https://hooks.slack.com/x", threshold: 90}
            """
        )
    )
    assert (error.line, error.field) == (5, "channels.slack")
    assert "threshold" in str(error)


def test_a_channel_no_alert_names_alerts_on_its_default_rules(write: Write) -> None:
    path = write(
        """
        channels:
          slack: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/X"}
        agents:
          bot:
            budget: {daily: 10}
        """
    )
    guard = AgentKavach.from_yaml(path, agent="bot")
    assert alert_rules(guard) == [("slack", None), ("slack", 0.7), ("slack", 0.9), ("slack", 1.0)]
    guard.close()


def test_a_kill_channel_nothing_uses_is_refused(write: Write) -> None:
    error = error_from(
        write(
            """
            channels:
              stop: {type: kill}
            agents:
              bot:
                budget: {daily: 10}
            """
        )
    )
    assert (error.line, error.field) == (2, "channels.stop")
    assert "give it a threshold" in str(error)


def test_yaml_channel_names_are_kept(write: Write) -> None:
    path = write(
        """
        channels:
          team: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/AAA"}
          ops: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/BBB"}
        agents:
          bot:
            budget: {daily: 10}
            alerts:
              - {threshold: 0.9, channels: [ops]}
              - {threshold: 0.7, channels: [team, ops]}
        """
    )
    guard = AgentKavach.from_yaml(path, agent="bot")
    assert guard.alerts is not None
    assert sorted(guard.alerts.config.channels) == ["ops", "team"]
    assert sorted(guard.alerts.stats.channels) == ["ops", "team"]
    assert [r for r in alert_rules(guard) if r[1] is not None] == [
        ("ops", 0.7),
        ("ops", 0.9),
        ("team", 0.7),
    ]
    guard.close()


def test_the_loader_knows_every_rule_key_of_a_channel() -> None:
    import kavach.alerts.rules
    import kavach.config

    assert kavach.config._RULE_KEYS == kavach.alerts.rules._RULE_KEYS


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        # A budget written the way people write money.
        ("agents:\n  bot:\n    budget:\n      daily: 50$\n", 4, "as a plain number such as 50"),
        ("agents:\n  bot:\n    budget: {daily: $50}\n", 3, "no $ sign"),
        ('agents:\n  bot:\n    budget: {daily: "50"}\n', 3, "as a plain number such as 50"),
        ("agents:\n  bot:\n    budget: {daily: 1e3}\n", 3, "as a plain number such as 50"),
        ("agents:\n  bot:\n    budget: {daily: 1,000}\n", 3, "write 1000, not 1,000"),
        # A budget with no period, an agent or a pool with nothing under it.
        ("agents:\n  bot:\n    budget: 50\n", 3, "expected periods and their limits"),
        ("shared_budgets:\n  team: 100\nagents:\n  bot: {}\n", 2, "such as {daily: 50}"),
        ("agents:\n  bot:\n", 2, "is empty; expected the agent's settings indented below"),
        ("agents:\n  bot:\n  budget:\n    daily: 5\n", 2, "is empty; expected the agent's"),
        ("agents:\n  bot:\n    budget:\n      daily:50\n", 3, "put a space after the colon"),
        ("agents:\n  - bot:\n      budget: {daily: 5}\n", 1, "remove the '- '"),
        ("agents:\n  bot:\n    shared: team\n", 3, "expected a list such as"),
        # YAML syntax, with what usually causes PyYAML's wording.
        ("agents:\n  bot:\n    budget:\n      daily: 5\n     weekly: 9\n", 5, "indentation"),
        ("agents:\n\tbot:\n\t  budget: {daily: 5}\n", 2, "spaces, not tabs"),
        ("agents:\n  bot:\n    budget: daily: 5\n", 3, "indentation"),
        ("agents:\n  bot:\n    budget: {daily: ${KAVACH_T_DAILY}}\n", 3, "on its own line"),
    ],
)
def test_a_broken_file_says_what_to_fix_at_its_line(
    write: Write, monkeypatch: pytest.MonkeyPatch, text: str, line: int, says: str
) -> None:
    monkeypatch.setenv("KAVACH_T_DAILY", "5")
    error = error_from(write(text))
    assert error.line == line
    assert f"kavach.yaml:{line}: " in str(error)
    assert says in str(error)
    assert "Input should be a valid dictionary" not in str(error)
    assert "Keys should be strings" not in str(error)


def test_a_file_that_is_not_utf8_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "kavach.yaml"
    path.write_bytes(b"agents:\n  bot:\n    # caf\xe9 budget (Latin-1)\n    budget: {daily: 5}\n")
    error = error_from(path)  # was a UnicodeDecodeError traceback
    assert error.line == 3
    assert "not UTF-8 text" in str(error) and "save it as UTF-8" in str(error)


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        # The amount forgotten: the agent would have had no budget at all.
        ("agents:\n  bot:\n    budget:\n      daily:\n", 4, "agents.bot.budget.daily"),
        ("agents:\n  bot:\n    budget:\n    mode: strict\n", 3, "agents.bot.budget"),
        ("agents:\n  bot:\n    budget: {daily: {dollars: ~, calls: 9}}\n", 3, "agents.bot.budget"),
        (
            "agents:\n  bot:\n    budget: {daily: 5}\n    max_calls_per_run:\n",
            4,
            "agents.bot.max_calls_per_run",
        ),
        ("org_budget:\nagents:\n  bot:\n    budget: {daily: 5}\n", 1, "org_budget"),
    ],
)
def test_an_empty_value_is_an_error_not_a_dropped_limit(
    write: Write, text: str, line: int, field: str
) -> None:
    error = error_from(write(text))
    assert (error.line, error.field.startswith(field)) == (line, True), str(error)
    assert "has no value; write one or delete the line" in str(error)
