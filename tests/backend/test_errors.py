"""Unexpected failures answer a generic 500: no traceback or message reaches the client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import get
from litestar.testing import TestClient

from backend import db
from backend.app import create_app
from backend.settings import Settings
from tests.backend.conftest import SECRET


@pytest.fixture
def keep_engine() -> Iterator[None]:
    previous = db._current
    yield
    if previous is not None:
        db.use_engine(previous)


@get("/v1/boom")
async def boom() -> None:
    raise RuntimeError("database password is hunter2")


def test_unhandled_error_is_a_generic_500_logged_server_side(
    tmp_path: Path, keep_engine: None, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(database_url=str(tmp_path / "e.sqlite"), secret_key=SECRET))
    app.register(boom)
    with caplog.at_level(logging.ERROR, logger="agentkavach.backend"):
        with TestClient(app) as client:
            response = client.get("/v1/boom")
    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "internal server error"}
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert "unhandled error on GET /v1/boom" in caplog.text


def _deep(depth: int) -> bytes:
    return b'{"email": "a@example.com", "name": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/register"),
        ("POST", "/v1/budgets"),
        ("POST", "/v1/keys"),
        ("PATCH", "/v1/alert-rules/1"),
    ],
)
def test_json_nested_too_deeply_is_a_400_not_a_500(
    tmp_path: Path, keep_engine: None, method: str, path: str
) -> None:
    # The JSON decoders raised RecursionError at a few thousand levels: a 500 on every
    # endpoint that takes a body.
    app = create_app(Settings(database_url=str(tmp_path / "e.sqlite"), secret_key=SECRET))
    with TestClient(app) as client:
        response = client.request(
            method, path, content=_deep(100_000), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert "nests more than 64 levels" in response.json()["detail"]
        ordinary = client.request(
            method, path, content=_deep(3), headers={"Content-Type": "application/json"}
        )
        assert ordinary.status_code in (400, 401, 404), ordinary.text
