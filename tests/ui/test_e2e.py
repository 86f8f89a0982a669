"""The dashboard end to end: a real backend, a real SDK guard, Debian's Chromium.

The backend runs on a loopback port on a temporary SQLite file and serves the built UI.
An ``AgentKavach`` guard connected to it with an API key makes calls; Playwright then
logs in, sees the spend, and presses Stop; the guard must refuse its next call (and run
``on_kill`` once); Playwright presses Resume and the guard's calls go through again.
Screenshots of every page land in ``ui/test-results/screenshots/``.

Skips with the reason when node, npm or Chromium are missing, unless ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "ui"
STATIC = ROOT / "backend" / "static"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
AGENT = "research-bot"
RUN_ID = "nightly-report"
SECRET = "e2e-secret-key-that-is-long-enough-0123456789"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _ensure_built() -> None:
    """Install and build the UI if that has not happened yet (scripts/test.sh does it)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        _missing("node and npm are needed for the dashboard's browser tests")
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium is needed at {CHROMIUM} (apt-get install -y chromium)")
    if not (UI / "node_modules" / "@playwright" / "test").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=UI, check=True)
    if not (STATIC / "index.html").is_file():
        subprocess.run([npm, "run", "build"], cwd=UI, check=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _ensure_built()
    import uvicorn

    from backend.app import create_app
    from backend.settings import Settings

    database = tmp_path_factory.mktemp("ui-e2e") / "agentkavach.sqlite"
    settings = Settings(database_url=str(database), secret_key=SECRET, keepalive_seconds=1.0)
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the backend did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class Account:
    def __init__(self, url: str) -> None:
        self.email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
        self.password = "correct horse battery staple"
        self.client = httpx.Client(base_url=url, timeout=30)
        response = self.client.post(
            "/v1/auth/register",
            json={"email": self.email, "password": self.password, "organization": "Acme Labs"},
        )
        assert response.status_code == 201, response.text
        login = self.client.post(
            "/v1/auth/login", json={"email": self.email, "password": self.password}
        )
        assert login.status_code == 200, login.text
        self.client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"

    def api_key(self) -> str:
        response = self.client.post("/v1/keys", json={"name": "sdk"})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


class GuardedAgent:
    """The SDK side of the test: a real guard reporting to the backend.

    This is the one place that makes calls; everything else only looks at the backend
    and the browser.
    """

    def __init__(self, url: str, api_key: str, spool: Path) -> None:
        from kavach import AgentKavach, Budget
        from kavach.reporting.api import BackendConfig
        from kavach.reporting.link import connect_backend

        self.kills: list[str] = []
        self.guard = AgentKavach(AGENT, budget=Budget.daily(20), on_kill=self.kills.append)
        self.link = connect_backend(
            self.guard, BackendConfig(api_key=api_key, endpoint=url), spool_dir=spool
        )
        self.calls = 0

    def call(self) -> None:
        """One guarded chat call, answered by a stand-in provider (no network)."""
        from kavach import CallSpec, Usage

        self.calls += 1
        spec = CallSpec(
            provider="openai",
            model="gpt-4o",
            messages=[{"role": "user", "content": f"summarise report section {self.calls}"}],
            max_output_tokens=400,
            run_id=RUN_ID,
        )
        with self.guard.reserve(spec) as reservation:
            reservation.commit(Usage(input_tokens=1500 + 10 * self.calls, output_tokens=350))

    def flush(self) -> None:
        assert self.link.reporter.flush(10), "the reporter did not deliver its events"

    def close(self) -> None:
        self.link.close()
        self.guard.close()


def _playwright(url: str, account: Account, key: str, spend_today: int, phase: str) -> None:
    env = {
        **os.environ,
        "KAVACH_URL": url,
        "KAVACH_EMAIL": account.email,
        "KAVACH_PASSWORD": account.password,
        "KAVACH_AGENT": AGENT,
        "KAVACH_API_KEY": key,
        "KAVACH_SPEND_TODAY_NANOS": str(spend_today),
        "KAVACH_RUN_ID": RUN_ID,
        "CHROMIUM_PATH": CHROMIUM,
    }
    npx = shutil.which("npx")
    assert npx is not None
    result = subprocess.run(
        [npx, "playwright", "test", "--grep", f"@{phase}"],
        cwd=UI,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"Playwright phase @{phase} failed:\n{result.stdout}\n{result.stderr}")


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_dashboard_stop_and_resume_reach_the_sdk(backend_url: str, tmp_path: Path) -> None:
    from kavach.errors import AgentKilledError

    account = Account(backend_url)
    key = account.api_key()
    # A budget and a rule made in the backend, so the gauges and thresholds have content.
    response = account.client.post(
        f"/v1/agents/{AGENT}/budgets", json={"kind": "usd", "period": "daily", "limit_usd": "0.10"}
    )
    assert response.status_code in (201, 404), response.text  # 404: agent not seen yet
    agent = GuardedAgent(backend_url, key, tmp_path / "spool")
    try:
        for _ in range(6):
            agent.call()
        agent.flush()
        if response.status_code == 404:
            created = account.client.post(
                f"/v1/agents/{AGENT}/budgets",
                json={"kind": "usd", "period": "daily", "limit_usd": "0.10"},
            )
            assert created.status_code == 201, created.text
        rule = account.client.post(
            "/v1/alert-rules",
            json={
                "name": "80% of the daily budget",
                "agent": AGENT,
                "kind": "usd",
                "period": "daily",
                "threshold": 80_000_000,
                "channel": "email",
                "target": "oncall@example.com",
            },
        )
        assert rule.status_code == 201, rule.text
        spend = account.client.get(f"/v1/agents/{AGENT}").json()["spend_today"]["cost_nanos"]
        assert spend > 0

        _playwright(backend_url, account, key, spend, "stop")

        # The dashboard's Stop reached the SDK: its next call is refused, on_kill ran once.
        _wait_for(lambda: agent.guard.kill_switch.killed, 1.0, "the guard heard the stop")
        with pytest.raises(AgentKilledError):
            agent.call()
        assert len(agent.kills) == 1
        agent.flush()

        _playwright(backend_url, account, key, spend, "resume")

        _wait_for(lambda: not agent.guard.kill_switch.killed, 1.0, "the guard heard the resume")
        agent.call()
        agent.flush()
        events = account.client.get("/v1/events", params={"agent": AGENT}).json()
        statuses = [e["status"] for e in events]
        assert statuses.count("refused") == 1
        assert statuses.count("ok") == 8  # 6 from the guard, 1 sent by the browser test, 1 after
    finally:
        agent.close()
        account.client.close()
