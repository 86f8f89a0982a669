"""The backend serves the dashboard at / with index.html for client-side routes, and
streams live agent status and spend to it (``GET /v1/live``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.backend.conftest import LiveServer, event, register, start_server, stop_server


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    static = tmp_path_factory.mktemp("static")
    (static / "index.html").write_text("<!doctype html><title>AgentKavach</title>")
    (static / "assets").mkdir()
    (static / "assets" / "index-abc123.js").write_text("console.log('hi')")
    database = tmp_path_factory.mktemp("db") / "ui.sqlite"
    live = start_server(str(database), static_dir=str(static))
    try:
        yield live
    finally:
        stop_server(live)


@pytest.mark.parametrize("path", ["/", "/agents", "/agents/research-bot", "/runs/12"])
def test_pages_get_index_html(ui_server: LiveServer, path: str) -> None:
    response = httpx.get(ui_server.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>AgentKavach</title>" in response.text
    assert response.headers["cache-control"] == "no-cache"


def test_assets_are_cached_and_missing_files_are_404(ui_server: LiveServer) -> None:
    asset = httpx.get(ui_server.url + "/assets/index-abc123.js")
    assert asset.status_code == 200
    assert "immutable" in asset.headers["cache-control"]
    assert httpx.get(ui_server.url + "/assets/missing.js").status_code == 404
    assert "root:" not in httpx.get(ui_server.url + "/..%2f..%2fetc%2fpasswd").text


def test_api_paths_stay_api(ui_server: LiveServer) -> None:
    missing = httpx.get(ui_server.url + "/v1/no-such-endpoint")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    assert httpx.get(ui_server.url + "/v1/status").json()["service"] == "agentkavach"
    assert httpx.get(ui_server.url + "/schema/openapi.json").status_code == 200


def _snapshots(url: str, token: str, out: list[dict[str, Any]], stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", url + "/v1/live", headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and line[5:].strip():
                out.append(json.loads(line[5:]))
            if stop.is_set():
                return


def _wait(out: list[dict[str, Any]], predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for snapshot in reversed(out):
            if predicate(snapshot):
                return snapshot
        time.sleep(0.05)
    raise AssertionError(f"no matching snapshot in {out[-3:]}")


def test_live_feed_pushes_spend_and_status(ui_server: LiveServer) -> None:
    account = register(ui_server.url)
    other = register(ui_server.url)
    sdk = account.sdk()
    out: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_snapshots, args=(ui_server.url, account.token, out, stop)),
        threading.Thread(target=_snapshots, args=(ui_server.url, other.token, others, stop)),
    ]
    for t in threads:
        t.daemon = True
        t.start()
    try:
        first = _wait(out, lambda s: s["type"] == "snapshot")
        assert first["agents"] == [] and first["today_nanos"] == 0

        response = sdk.post("/v1/ingest", json={"events": [event(cost_nanos=2_000_000_000)]})
        assert response.status_code == 202, response.text
        spent = _wait(out, lambda s: s["today_nanos"] == 2_000_000_000)
        assert spent["agents"][0]["name"] == "research-bot"
        assert spent["agents"][0]["status"] == "running"

        assert account.client.post("/v1/agents/research-bot/kill", json={}).status_code == 200
        stopped = _wait(out, lambda s: s["agents"] and s["agents"][0]["status"] == "stopped", 1.5)
        assert stopped["agents"][0]["reason"] == "stopped from the dashboard"

        # Another organization's dashboard hears nothing of it.
        assert all(s["agents"] == [] and s["today_nanos"] == 0 for s in others)
    finally:
        stop.set()
        sdk.close()
        account.client.close()
        other.client.close()


def test_live_feed_needs_a_session(ui_server: LiveServer) -> None:
    assert httpx.get(ui_server.url + "/v1/live").status_code == 401
