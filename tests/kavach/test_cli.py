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
