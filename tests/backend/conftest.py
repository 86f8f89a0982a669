"""Backend fixtures: a real uvicorn server on a loopback port, on SQLite and on PostgreSQL.

Every backend test runs once per database. PostgreSQL gets a fresh database per
session, dropped afterwards; if PostgreSQL cannot be reached the PostgreSQL runs
are skipped with the reason, unless ``CI`` is set, in which case they fail.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

PG_ADMIN_DSN = os.environ.get(
    "AGENTKAVACH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
SECRET = "test-secret-key-that-is-long-enough-0123456789"


def _pg(statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path_factory.mktemp("db") / "agentkavach.sqlite")
        return
    name = f"ak_test_{uuid.uuid4().hex[:12]}"
    try:
        _pg(f"CREATE DATABASE {name}")
    except Exception as exc:  # noqa: BLE001 - any failure to reach PostgreSQL
        message = f"PostgreSQL at {PG_ADMIN_DSN} is unreachable: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    database_url: str
    thread: threading.Thread
    server: Any


def start_server(database_url: str, **overrides: Any) -> LiveServer:
    import uvicorn

    from backend.app import create_app
    from backend.settings import Settings

    settings = Settings(
        database_url=database_url,
        secret_key=SECRET,
        keepalive_seconds=overrides.pop("keepalive_seconds", 1.0),
        **overrides,
    )
    app = create_app(settings)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the backend did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", database_url, thread, server)


def stop_server(live: LiveServer) -> None:
    live.server.should_exit = True
    live.thread.join(timeout=30)


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[LiveServer]:
    live = start_server(database_url)
    try:
        yield live
    finally:
        stop_server(live)


@dataclass
class Account:
    """A registered user in a fresh organization, with a client carrying their token."""

    email: str
    password: str
    org_id: int
    token: str
    client: httpx.Client
    base_url: str
    keys: list[str] = field(default_factory=list)

    def new_key(self, name: str = "sdk", test: bool = False) -> str:
        response = self.client.post("/v1/keys", json={"name": name, "test": test})
        assert response.status_code == 201, response.text
        key = response.json()["key"]
        self.keys.append(key)
        return str(key)

    def sdk(self, key: str | None = None) -> httpx.Client:
        key = key or (self.keys[0] if self.keys else self.new_key())
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )


def auth_post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """A sign-up or sign-in of the fixtures, waiting out the per-address auth rate limit
    (every test signs in from 127.0.0.1, and the tests of that limit use it up on purpose)."""
    for _ in range(10):
        response = client.post(path, json=body)
        if response.status_code != 429:
            return response
        time.sleep(float(response.json().get("retry_after", 1)))
    return response


def register(base_url: str, org: str | None = None) -> Account:
    email = f"u{uuid.uuid4().hex[:10]}@example.com"
    password = "correct horse battery staple"
    with httpx.Client(base_url=base_url, timeout=30) as anon:
        response = auth_post(
            anon,
            "/v1/auth/register",
            {"email": email, "password": password, "organization": org or email},
        )
        assert response.status_code == 201, response.text
        org_id = response.json()["organization"]["id"]
        login = auth_post(anon, "/v1/auth/login", {"email": email, "password": password})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
    client = httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return Account(email, password, org_id, token, client, base_url)


@pytest.fixture
def account(server: LiveServer) -> Iterator[Account]:
    acc = register(server.url)
    yield acc
    acc.client.close()


@pytest.fixture
def other_account(server: LiveServer) -> Iterator[Account]:
    acc = register(server.url)
    yield acc
    acc.client.close()


def event(**overrides: Any) -> dict[str, Any]:
    """One SDK event as the reporter sends it."""
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "agent": "research-bot",
        "run_id": "r-1",
        "provider": "openai",
        "model": "gpt-4o",
        "operation": "chat",
        "status": "ok",
        "refusal_reason": None,
        "error": None,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "duration_ms": 12.5,
        "cost_nanos": 1234,
        "reserved_nanos": 5000,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "reasoning_tokens": 0,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
        },
        "prompt": None,
        "response_model": "gpt-4o-2024-08-06",
        "finish_reasons": ["stop"],
        "max_output_tokens": 256,
        "tool_calls": [],
        "tags": {},
    }
    body.update(overrides)
    return body


def batch(*events: dict[str, Any]) -> dict[str, Any]:
    return {"sdk": {"version": "0.1.0", "instance_id": str(uuid.uuid4())}, "events": list(events)}


@contextmanager
def stream_until_closed(
    account: Account, bearer: str, path: str
) -> Iterator[tuple[threading.Thread, list[str]]]:
    """Read the event stream at ``path`` (``/v1/control/stream``, ``/v1/live``) in a thread
    that ends when the server closes the stream, or at the next line (keepalives come every
    second) after the block. Yields the thread and the lines read, the first being
    ``status <code>``, once the first ``data:`` line has arrived."""
    lines: list[str] = []
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(
            base_url=account.base_url,
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=httpx.Timeout(30, read=30),
        ) as client:
            with client.stream("GET", path) as stream:
                lines.append(f"status {stream.status_code}")
                for line in stream.iter_lines():
                    if stop.is_set():
                        return
                    lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not any(line.startswith("data:") for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        yield thread, lines
    finally:
        stop.set()
        thread.join(timeout=10)
