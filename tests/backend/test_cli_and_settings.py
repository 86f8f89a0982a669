"""Settings validation and the set-up commands (serve, migrate, user create, keys create)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend import cli, db
from backend.settings import DatabaseURL, Settings, SettingsError
from tests.backend.conftest import SECRET, _free_port, batch, event


@pytest.fixture
def keep_engine() -> Iterator[None]:
    """The CLI points Piccolo at its own database; give the session's server its engine back."""
    previous = db._current
    yield
    if previous is not None:
        db.use_engine(previous)


def test_every_bad_setting_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {
                "AGENTKAVACH_DATABASE_URL": "mysql://db/x",
                "AGENTKAVACH_REDIS_URL": "http://redis",
                "AGENTKAVACH_SECRET_KEY": "short",
                "AGENTKAVACH_TOKEN_TTL_SECONDS": "soon",
                "AGENTKAVACH_MAX_BODY_BYTES": "12",
                "AGENTKAVACH_COOKIE_SECURE": "maybe",
            }
        )
    message = str(info.value)
    for name in (
        "AGENTKAVACH_DATABASE_URL",
        "AGENTKAVACH_REDIS_URL",
        "AGENTKAVACH_SECRET_KEY",
        "AGENTKAVACH_TOKEN_TTL_SECONDS",
        "AGENTKAVACH_MAX_BODY_BYTES",
        "AGENTKAVACH_COOKIE_SECURE",
    ):
        assert name in message
    assert "short" not in message  # the secret's value is not echoed


def test_sqlite_dev_secret_is_generated_once_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"AGENTKAVACH_DATABASE_URL": str(tmp_path / "ak.sqlite")}
    first = Settings.from_env(env)
    assert "AGENTKAVACH_SECRET_KEY is not set" in caplog.text
    second = Settings.from_env(env)
    assert first.secret_key == second.secret_key and len(first.secret_key) >= 32
    key_file = tmp_path / "ak.secret"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_postgres_needs_an_explicit_secret() -> None:
    with pytest.raises(SettingsError, match="required with PostgreSQL"):
        Settings.from_env({"AGENTKAVACH_DATABASE_URL": "postgresql://u:pw@127.0.0.1/db"})
    settings = Settings.from_env(
        {
            "AGENTKAVACH_DATABASE_URL": "postgresql://u:pw@127.0.0.1/db",
            "AGENTKAVACH_SECRET_KEY": SECRET,
        }
    )
    assert settings.database.kind == "postgres"
    assert settings.database.redacted() == "postgresql://u:***@127.0.0.1/db"


def test_cli_functions_create_a_user_and_a_working_key(
    database_url: str, keep_engine: None
) -> None:
    url = database_url
    cli.migrate(url)
    cli.migrate(url)  # repeatable
    created = cli.create_user("ops@example.com", "long enough pw", "Ops", url)
    assert created["role"] == "owner"
    joined = cli.create_user("dev@example.com", "long enough pw", "Ops", url, role="viewer")
    assert joined["org_id"] == created["org_id"] and joined["role"] == "viewer"
    key = cli.create_key("ops@example.com", "ci", test=True, database_url=url)
    assert key.startswith("ak_test_")
    assert cli.create_key("Ops", database_url=url).startswith("ak_live_")
    with pytest.raises(ValueError, match="no organization"):
        cli.create_key("Nope", database_url=url)
    with pytest.raises(ValueError, match="already exists"):
        cli.create_user("ops@example.com", "long enough pw", "Ops", url)

    # `python -m backend serve` migrates and serves; the CLI-made key and user work.
    port = _free_port()
    env = {**os.environ, "AGENTKAVACH_SECRET_KEY": SECRET, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        [sys.executable, "-m", "backend", "--database-url", url, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v1/status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"X-API-Key": key}) as sdk:
            assert sdk.post("/v1/ingest", json=batch(event())).json()["accepted"] == 1
        login = httpx.post(
            f"{base}/v1/auth/login", json={"email": "ops@example.com", "password": "long enough pw"}
        )
        assert login.status_code == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert b"long enough pw" not in stderr and key.encode() not in stderr


def test_module_cli_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "--database-url",
            str(tmp_path / "x.sqlite"),
            "keys",
            "create",
            "--org",
            "missing",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=60,
    )
    assert result.returncode == 2
    assert "no organization named 'missing'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("postgresql://u:pw@127.0.0.1/db", "postgresql://u:***@127.0.0.1/db"),
        # asyncpg also takes the password as a query parameter; it was logged in clear.
        (
            "postgresql://u@db.internal/kavach?sslmode=require&password=hunter2",
            "postgresql://u@db.internal/kavach?sslmode=require&password=***",
        ),
    ],
)
def test_the_logged_database_url_hides_every_password(url: str, logged: str) -> None:
    assert DatabaseURL.parse(url).redacted() == logged
