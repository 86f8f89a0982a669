from __future__ import annotations

import argparse
import io
import re
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
    captured = capsys.readouterr()
    # Which provider: the base URL comes from the environment and may be the mistake.
    assert f"Running against the OpenAI API at http://127.0.0.1:{port}/v1/" in captured.out
    err = captured.err
    assert (
        f"the provider at http://127.0.0.1:{port}/v1/ refused or could not be reached: "
        "Connection error." in err
    )
    assert "Traceback" not in err


class _Terminal(io.StringIO):
    """Output that says it is a terminal; ``interrupt_on`` raises Ctrl-C on that text."""

    def __init__(self, interrupt_on: str | None = None) -> None:
        super().__init__()
        self.interrupt_on = interrupt_on

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.interrupt_on is not None and self.interrupt_on in text:
            self.interrupt_on = None
            raise KeyboardInterrupt
        return super().write(text)


def _redraws(out: str) -> list[str]:
    """What each in-place redraw of the bar shows, colour codes removed."""
    shown = re.sub(r"\x1b\[[0-9;]*[mK]", "", out)
    return [part for line in shown.split("\n") for part in line.split("\r") if part]


@pytest.mark.parametrize("columns", [40, 80, 20])
def test_the_live_bar_fits_a_narrow_terminal(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A line longer than the terminal wraps, and "\r" cannot go back over the wrap:
    # every redraw would leave a row of the old bar behind.
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("TERM", "xterm")
    out = _Terminal()
    bar = cli._Bar(out, 50_000_000)
    bar.draw(1_234_567, "step 12 streaming")
    bar.draw(47_750_000, "stopped after 123 calls")
    bar.done()
    redraws = _redraws(out.getvalue())
    assert len(redraws) == 2
    assert all(len(line) < columns for line in redraws), redraws
    assert redraws[1].startswith("[") and "$0.04775" in redraws[1]


def test_ctrl_c_mid_stream_bills_what_streamed_and_exits_130(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "200")  # the bar's labels in full, whatever runs the tests
    out = _Terminal(interrupt_on="step 2 streaming")
    args = cli.build_parser().parse_args(["demo", "--delay", "0"])
    try:
        code = cli.demo(args, out=out)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the demo: the user sees a traceback")
    shown = _redraws(out.getvalue())
    assert code == 130
    assert any("interrupted after 1 calls" in line for line in shown), shown
    # The stream cut by Ctrl-C is settled: its output so far counts, no hold is left.
    spent = re.search(r"Spent \$([0-9.]+) of \$0\.05 in 1 calls", out.getvalue())
    assert spent is not None, shown
    assert float(spent.group(1)) > 0.004065  # step 1 alone cost $0.004065


def test_the_stand_in_prints_nothing_when_a_client_goes_away(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kavach._devtools.standin import StandIn

    with StandIn() as server:
        httpd = server._httpd
        assert httpd is not None
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            httpd.handle_error(None, ("127.0.0.1", 1))
        try:
            raise RuntimeError("a real bug")
        except RuntimeError:
            httpd.handle_error(None, ("127.0.0.1", 1))
    err = capsys.readouterr().err
    assert "ConnectionResetError" not in err
    assert "RuntimeError: a real bug" in err  # real errors still show


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


def test_no_color_turns_the_bar_colours_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    out = _Terminal()
    cli._Bar(out, 50_000_000).draw(45_000_000, "step 6")
    assert "\x1b[3" not in out.getvalue()  # no colour; the in-place redraw stays
    assert out.getvalue().startswith("\r\x1b[K[")


def test_demo_piped_into_head_stops_quietly() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    # Long steps: the demo cannot finish before the reader below goes away.
    demo = subprocess.Popen(
        [sys.executable, "-m", "kavach.cli", "demo", "--budget", "1000", "--delay", "0.5"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert demo.stdout is not None and demo.stderr is not None
    assert demo.stdout.readline().startswith("Stand-in OpenAI server")
    demo.stdout.close()  # what `| head -1` does after its line
    err = demo.stderr.read()
    demo.stderr.close()
    assert demo.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_demo_without_the_openai_extra_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # `pip install agentkavach`, no extra
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "kavach: error: 'openai' is not installed; install it with: "
        "pip install 'agentkavach[openai]'\n"
    )


def test_backend_commands_without_the_server_extra_say_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "backend.__main__", None)  # no [server] packages
    assert cli.main(["migrate", "--database-url", "unused.sqlite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kavach: error: ") and "pip install 'agentkavach[server]'" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_every_demo_option_says_what_it_does(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse breaks long words on a narrow terminal
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    demo = cli._COMMANDS["demo"]
    for option in demo.args:
        assert option.options.get("help"), f"{option.flags[0]} has no help text"
        assert " ".join(option.options["help"].split()) in shown


def test_serve_help_names_the_command_and_every_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("litestar", reason="the backend commands need the [server] extra")
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kavach serve ")  # not `python -m backend serve`
    for option in ("--database-url", "--host", "--port", "(8000)", "AGENTKAVACH_DATABASE_URL"):
        assert option in out


def test_database_url_may_come_before_or_after_the_command(tmp_path: Path) -> None:
    pytest.importorskip("litestar", reason="the backend commands need the [server] extra")
    from backend.__main__ import main as backend_main

    for n, argv in enumerate(
        (["--database-url", "{db}", "migrate"], ["migrate", "--database-url", "{db}"])
    ):
        db = tmp_path / f"k{n}.sqlite"
        assert backend_main([a.format(db=db) for a in argv]) == 0
        assert db.is_file()
