from __future__ import annotations

from tests.backend.conftest import Account, batch, event


def test_status_and_ingest_round_trip(account: Account) -> None:
    status = account.client.get("/v1/status")
    assert status.status_code == 200
    assert status.json()["database"] == "ok"
    with account.sdk() as sdk:
        response = sdk.post("/v1/ingest", json=batch(event(), event()))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2
