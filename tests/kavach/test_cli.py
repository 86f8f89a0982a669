from __future__ import annotations

import argparse
from pathlib import Path

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


@pytest.mark.parametrize("budget", ["-1", "0", "nan", "inf", "ten"])
def test_a_bad_demo_budget_is_one_line_that_says_so(
    budget: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--budget", budget])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --budget: must be a number above zero, got '{budget}'" in err
    assert "Traceback" not in err


def test_an_unknown_demo_model_is_one_line_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo", "--delay", "0", "--model", "gpt-4o-typo"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("kavach: error: no price known for model 'gpt-4o-typo'")
    assert captured.err.count("\n") == 1
    assert "Stand-in" not in captured.out  # refused before a server was started


def test_a_real_demo_whose_provider_cannot_be_reached_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    assert cli.main(["demo", "--real"]) == 2
    err = capsys.readouterr().err
    assert "the provider refused or could not be reached: Connection error." in err
    assert "Traceback" not in err


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


def test_backend_commands_create_a_user_and_a_key_then_serve(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    root = Path(__file__).resolve().parents[2]
    db = str(tmp_path / "kavach.sqlite")
    env = {**os.environ, "AGENTKAVACH_SECRET_KEY": "x" * 48, "PYTHONPATH": str(root)}

    def kavach(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "kavach.cli", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "created ops@example.com (owner" in kavach(
        "user",
        "create",
        "--email",
        "ops@example.com",
        "--org",
        "acme",
        "--password",
        "correct horse battery",
        "--database-url",
        db,
    )
    key = kavach("keys", "create", "--org", "acme", "--test", "--database-url", db).strip()
    assert key.startswith("ak_test_")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "kavach.cli", "serve", "--port", str(port), "--database-url", db],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "serve failed"
                time.sleep(0.1)
        assert status.status_code == 200
        login = httpx.post(
            f"http://127.0.0.1:{port}/v1/auth/login",
            timeout=10,
            json={"email": "ops@example.com", "password": "correct horse battery"},
        )
        assert login.status_code == 200 and login.json()["access_token"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        server.stderr.close()
