"""schemathesis against the OpenAPI schema: no generated request makes the server fail (5xx).

Runs on SQLite only: it is a property of the handlers, not of the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from backend import db
from tests.backend.conftest import LiveServer, batch, event, register, start_server, stop_server


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict]]:
    previous = db._current
    url = str(tmp_path_factory.mktemp("fuzz") / "fuzz.sqlite")
    live = start_server(url, long_poll_max_seconds=0.2)
    account = register(live.url)
    key = account.new_key()
    with account.sdk(key) as sdk:
        sdk.post("/v1/ingest", json=batch(event(agent="research-bot")))
    account.client.close()
    # Both credentials: user endpoints read the bearer JWT, SDK endpoints the X-API-Key.
    headers = {"Authorization": f"Bearer {account.token}", "X-API-Key": key}
    try:
        yield live, headers
    finally:
        stop_server(live)
        if previous is not None:
            db.use_engine(previous)


@pytest.mark.slow
def test_no_server_errors(fuzz_server: tuple[LiveServer, dict[str, str]]) -> None:
    """Positive and negative cases for every operation; any 5xx or traceback fails.

    (schemathesis' own pytest plugin does not run on pytest 9 yet, so the operations'
    hypothesis strategies are driven directly.)
    """
    live, headers = fuzz_server
    schema = (
        schemathesis.openapi.from_url(f"{live.url}/schema/openapi.json")
        # Endless event streams cannot be fuzzed request by request.
        .exclude(path="/v1/control/stream")
        .exclude(path="/v1/live")
        # Changing the password would log the fuzzer out for the rest of the run.
        .exclude(path="/v1/auth/password")
    )
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=8,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def check(case: Any) -> None:
                try:
                    response = case.call(base_url=live.url, headers=headers, timeout=30)
                except (
                    requests.exceptions.ConnectionError,
                    requests.exceptions.ChunkedEncodingError,
                ):
                    # Negative cases include bytes no HTTP parser accepts (in header
                    # values) and request lines past h11's size limit (a 20,000-character
                    # agents= of 4-byte characters); uvicorn drops such connections before
                    # the app sees them, which is a refusal, not a server error.
                    return
                if response.status_code >= 500 or "Traceback" in response.text:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:300]}"
                    )

            try:
                check()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): no negative cases exist.
                assert mode is GenerationMode.NEGATIVE
    assert operations >= 30
    assert not failures, "\n".join(failures[:20])
