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
