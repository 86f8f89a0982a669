"""The ``kavach`` command line.

Each subcommand is one function, registered with ``@command``::

    @command("demo", "run the demo", arg("--budget", type=float, default=0.05))
    def demo(args: argparse.Namespace) -> int:
        ...
        return 0

``serve``, ``migrate``, ``user`` and ``keys`` hand their options to the backend's own parser
(``python -m backend``) untouched.

Heavy imports belong inside the function, so ``kavach --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["arg", "command", "main"]

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    args: tuple[Arg, ...]
    run: Run


_COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **options: Any) -> Arg:
    """One argparse argument of a subcommand: ``arg("--port", type=int, default=8000)``."""
    return Arg(flags, options)


def command(name: str, help: str, *args: Arg) -> Callable[[Run], Run]:
    """Register ``run`` as the subcommand ``name``; it returns the process exit code."""

    def register(run: Run) -> Run:
        _COMMANDS[name] = Command(name, help, args, run)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kavach", description="AgentKavach: hard budget limits for LLM calls."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in _COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for a in cmd.args:
            sub.add_argument(*a.flags, **a.options)
        sub.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run: Run | None
    if argv and argv[0] in _PASSTHROUGH:
        # These hand their options to the backend's own parser untouched.
        run, args = _PASSTHROUGH[argv[0]], argparse.Namespace(rest=argv[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        run = getattr(args, "_run", None)
        if run is None:
            parser.print_help()
            return 2
    from kavach.errors import KavachError

    try:
        return run(args)
    except KavachError as exc:  # a setting to fix: one line that says so, no traceback
        sys.stderr.write(f"kavach: error: {exc}\n")
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command could handle it: no traceback
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:  # `kavach demo | head`: the reader left; stop quietly
        # Python flushes stdout at exit and would fail again: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE


# -- kavach demo ------------------------------------------------------------------------


class _Bar:
    """A spend bar: redrawn in place on a terminal, one line per update otherwise."""

    def __init__(self, out: TextIO, limit_nanos: int, width: int = 28) -> None:
        self.out = out
        self.limit = limit_nanos
        self.width = width
        self.live = out.isatty() and os.environ.get("TERM") != "dumb"

    def draw(self, spent: int, label: str) -> None:
        from kavach._money import fmt_usd

        share = min(1.0, spent / self.limit) if self.limit else 1.0
        text = f" {fmt_usd(spent):>11} of {fmt_usd(self.limit)} {share:4.0%}  {label}"
        width = self.width
        if self.live:
            # A line that wraps cannot be redrawn in place ("\r" goes back one row only):
            # each update would leave a row behind. Fit the line to the terminal instead.
            room = _columns(self.out) - 1
            if room - 2 - len(text) < 10:
                text = f" {fmt_usd(spent)} {share:.0%} {label}"
            width = max(5, min(self.width, room - 2 - len(text)))
            text = text[: max(0, room - 2 - width)]
        filled = round(share * width)
        bar = "#" * filled + "-" * (width - filled)
        if self.live:
            if os.environ.get("NO_COLOR"):  # https://no-color.org
                self.out.write(f"\r\033[K[{bar}]{text}")
            else:
                colour = "\033[32m" if share < 0.8 else "\033[33m" if share < 1 else "\033[31m"
                self.out.write(f"\r\033[K[{colour}{bar}\033[0m]{text}")
        else:
            self.out.write(f"[{bar}]{text}\n")
        self.out.flush()

    def done(self) -> None:
        if self.live:
            self.out.write("\n")


def _columns(out: TextIO) -> int:
    """The terminal's width: ``COLUMNS`` when set, else the terminal ``out`` writes to."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(out.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 80
    return columns if columns > 0 else 80


def _demo_client(args: argparse.Namespace, out: TextIO) -> tuple[Any, Any, str]:
    """The OpenAI client to use, the stand-in server (or None) and the model."""
    import openai

    if args.real:
        if not os.environ.get("OPENAI_API_KEY"):
            raise SystemExit("kavach demo --real needs OPENAI_API_KEY in the environment")
        client = openai.OpenAI()
        out.write(f"Running against the OpenAI API at {client.base_url} (OPENAI_API_KEY).\n")
        return client, None, args.model

    from kavach._devtools.standin import Reply, StandIn

    server = StandIn().start()
    # Every step the "model" writes a few hundred tokens, streamed over --delay seconds.
    server.default = Reply(
        text="Found three more sources on spend limits; summarising them for the report now.",
        output_tokens=args.output_tokens,
        chunk_delay=args.delay / max(1, args.output_tokens),
    )
    out.write(f"Stand-in OpenAI server on {server.base_url} (loopback, no key, no network).\n")
    client = openai.OpenAI(base_url=server.openai_url, api_key="demo", max_retries=0)
    return client, server, args.model


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: a finite number above zero."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a number above zero, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text!r}")
    return value


@command(
    "demo",
    "run a small agent loop under a small budget and watch the guard stop it",
    arg(
        "--budget",
        type=_positive(float),
        default=0.05,
        help="daily budget in dollars (default 0.05)",
    ),
    arg(
        "--mode",
        choices=("strict", "reserve"),
        default="strict",
        help="strict: each call's max output tokens are sized to the budget left; reserve: "
        "calls go as written and one whose worst case does not fit is refused (default strict)",
    ),
    arg("--model", default="gpt-4o", help="an OpenAI model with a known price (default gpt-4o)"),
    arg(
        "--max-steps",
        type=_positive(int),
        default=200,
        help="stop the loop after this many calls (default 200)",
    ),
    arg(
        "--output-tokens",
        type=_positive(int),
        default=400,
        help="tokens the stand-in writes per step (default 400)",
    ),
    arg(
        "--delay",
        type=_not_negative,
        default=0.15,
        help="seconds the stand-in takes per step (default 0.15)",
    ),
    arg(
        "--real",
        action="store_true",
        help="use the OpenAI API instead of the stand-in (needs OPENAI_API_KEY; honours "
        "OPENAI_BASE_URL); this spends real money, within --budget",
    ),
)
def demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    try:
        import openai
    except ImportError as exc:  # installed without the [openai] extra
        from kavach.errors import MissingDependencyError

        raise MissingDependencyError("openai", "openai") from exc

    from kavach import AgentKavach, Budget, KavachError, Usage
    from kavach._money import fmt_usd

    out = out or sys.stdout
    kills: list[str] = []
    guard = AgentKavach(
        "demo-agent",
        Budget.daily(args.budget),
        mode=args.mode,
        on_kill=kills.append,
        detect_loops=False,
        default_max_output_tokens=1024,
    )
    limit = guard.budgets[0].limit
    price = guard.pricing.resolve("openai", args.model)  # an unknown model stops here
    client, server, model = _demo_client(args, out)
    guard.wrap(client)
    out.write(
        f"Agent loop on {model}, {args.mode} mode, budget {fmt_usd(limit)} a day. "
        "Each step streams a reply and grows the conversation.\n\n"
    )
    bar = _Bar(out, limit)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a research agent. Keep digging."},
        {"role": "user", "content": "Research budget guards for LLM agents."},
    ]
    calls = 0
    interrupted = False
    started = time.perf_counter()
    try:
        for step in range(1, args.max_steps + 1):
            text = []
            before = guard.status()[0].spent
            # ``with``: a Ctrl-C mid-stream closes it, which settles what it consumed.
            with client.chat.completions.create(
                model=model, messages=messages, stream=True
            ) as stream:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
                        if bar.live and len(text) % 25 == 0:
                            # Live: what this call has produced so far, at its output price.
                            so_far = price.cost(Usage(output_tokens=len(text)))
                            bar.draw(before + so_far, f"step {step} streaming")
            calls += 1
            messages.append({"role": "assistant", "content": "".join(text)})
            messages.append({"role": "user", "content": f"Good. Now go deeper, step {step + 1}."})
            bar.draw(guard.status()[0].spent, f"step {step}")
        bar.done()
        out.write(f"\nThe loop ended after {calls} steps without reaching the budget.\n")
    except KavachError as exc:
        bar.draw(guard.status()[0].spent, f"stopped after {calls} calls")
        bar.done()
        out.write(
            f"\nThe guard stopped the agent before its next call:\n  {type(exc).__name__}: {exc}\n"
        )
    except KeyboardInterrupt:  # Ctrl-C: say where it stopped, not a traceback
        interrupted = True
        bar.draw(guard.status()[0].spent, f"interrupted after {calls} calls")
        bar.done()
    except openai.APIError as exc:  # --real: a bad key, no network, a rate limit
        bar.done()
        sys.stderr.write(
            f"kavach demo: the provider at {client.base_url} refused or could not be "
            f"reached: {exc}\n"
        )
        return 2
    finally:
        if server is not None:
            server.stop()
        client.close()
    status = guard.status()[0]
    verdict = "within" if status.spent <= limit else "OVER"
    out.write(
        f"\nSpent {fmt_usd(status.spent)} of {fmt_usd(limit)} in {calls} calls "
        f"({time.perf_counter() - started:.1f}s): {verdict} the limit.\n"
    )
    if kills:
        out.write(f"on_kill ran once: {kills[0]}\n")
    if status.spent > limit:
        return 1
    return 130 if interrupted else 0  # 130: the shell's code for a Ctrl-C


# -- the backend: serve, migrate, user create, keys create ------------------------------


def _run_backend(name: str, rest: Sequence[str]) -> int:
    try:
        from backend.__main__ import main as backend_main
    except ImportError as exc:
        from kavach.errors import MissingDependencyError

        raise MissingDependencyError(exc.name or "litestar", "server") from exc
    return int(backend_main([name, *rest], prog="kavach"))


def _ensure_dashboard_built(out: TextIO) -> None:
    """Build the dashboard when its files are missing and npm is here (a source checkout)."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ui, built = root / "ui", root / "backend" / "static" / "index.html"
    if built.is_file() or not (ui / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        print(
            "note: the dashboard is not built and npm is not installed; serving the API "
            "only (install Node.js and run `npm ci && npm run build` in ui/)",
            file=out,
        )
        return
    print("building the dashboard (first run)...", file=out)
    if not (ui / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ui, check=True)
    subprocess.run([npm, "run", "build"], cwd=ui, check=True)


_REST = arg("rest", nargs=argparse.REMAINDER, help="options, see `python -m backend --help`")
_PASSTHROUGH: dict[str, Run] = {}


def passthrough(run: Run) -> Run:
    _PASSTHROUGH[run.__name__] = run
    return run


@command(
    "serve",
    "migrate the database, then serve the backend and dashboard (--host, --port, --database-url)",
    _REST,
)
@passthrough
def serve(args: argparse.Namespace) -> int:
    _ensure_dashboard_built(sys.stderr)
    return _run_backend("serve", args.rest)


@command("migrate", "run the backend's database migrations (--database-url)", _REST)
@passthrough
def migrate(args: argparse.Namespace) -> int:
    return _run_backend("migrate", args.rest)


@command("user", "manage dashboard users: user create --email E --org O [--role R]", _REST)
@passthrough
def user(args: argparse.Namespace) -> int:
    return _run_backend("user", args.rest)


@command("keys", "manage SDK keys: keys create --org O [--name N] [--test]", _REST)
@passthrough
def keys(args: argparse.Namespace) -> int:
    return _run_backend("keys", args.rest)


if __name__ == "__main__":
    raise SystemExit(main())
