from __future__ import annotations

import argparse

import pytest

from kavach import cli


def test_demo_stops_the_agent_within_the_budget(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["demo", "--delay", "0", "--budget", "0.02"])
    out = capsys.readouterr().out
    assert code == 0
    assert "The guard stopped the agent before its next call" in out
    assert "within the limit" in out
    assert "on_kill" in out or "BudgetExceededError" in out


def test_reserve_mode_demo_also_stays_within(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--delay", "0", "--mode", "reserve", "--budget", "0.02"]) == 0
    assert "within the limit" in capsys.readouterr().out


def test_a_subcommand_is_one_registered_function(capsys: pytest.CaptureFixture[str]) -> None:
    @cli.command("hello", "say hello", cli.arg("--name", default="world"))
    def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return 3

    try:
        assert cli.main(["hello", "--name", "kavach"]) == 3
        assert capsys.readouterr().out == "hello kavach\n"
    finally:
        del cli._COMMANDS["hello"]
    assert cli.main([]) == 2
