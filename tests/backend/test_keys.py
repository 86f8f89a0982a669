"""SDK API keys: shown once, listed by prefix, revoked, rotated."""

from __future__ import annotations

import asyncio

import httpx

from tests.backend.conftest import Account, batch, event


def _ingest_status(base_url: str, key: str) -> int:
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key}) as sdk:
        return sdk.post("/v1/ingest", json=batch(event())).status_code


def test_key_is_shown_once_and_listed_by_prefix(account: Account) -> None:
    created = account.client.post("/v1/keys", json={"name": "prod"})
    assert created.status_code == 201
    body = created.json()
    key = body["key"]
    assert key.startswith("ak_live_") and len(key) > 40
    assert key.startswith(body["prefix"]) and body["prefix"] != key
    test_key = account.client.post("/v1/keys", json={"name": "ci", "test": True}).json()
    assert test_key["key"].startswith("ak_test_")

    listed = account.client.get("/v1/keys")
    assert listed.status_code == 200
    assert [k["name"] for k in listed.json()] == ["prod", "ci"]
    assert key not in listed.text and test_key["key"] not in listed.text
    assert all("key" not in k for k in listed.json())


def test_key_authenticates_and_records_last_use(account: Account) -> None:
    key = account.new_key()
    assert _ingest_status(account.base_url, key) == 202
    listed = account.client.get("/v1/keys").json()
    assert listed[0]["last_used_at"] is not None


def test_revoked_key_stops_working(account: Account) -> None:
    key = account.new_key()
    key_id = account.client.get("/v1/keys").json()[0]["id"]
    assert _ingest_status(account.base_url, key) == 202
    revoked = account.client.delete(f"/v1/keys/{key_id}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert _ingest_status(account.base_url, key) == 401


def test_rotate_returns_a_new_key_and_revokes_the_old(account: Account) -> None:
    old = account.new_key("rotating")
    key_id = account.client.get("/v1/keys").json()[0]["id"]
    rotated = account.client.post(f"/v1/keys/{key_id}/rotate")
    assert rotated.status_code == 201
    new = rotated.json()["key"]
    assert new != old and rotated.json()["name"] == "rotating"
    assert _ingest_status(account.base_url, old) == 401
    assert _ingest_status(account.base_url, new) == 202
    # A revoked key cannot be rotated again.
    assert account.client.post(f"/v1/keys/{key_id}/rotate").status_code == 404


def test_rotating_a_key_twice_at_once_leaves_one_working_key(account: Account) -> None:
    # A double click on Rotate, or two admins at the same moment.
    old = account.new_key("pressed-twice")
    key_id = account.client.get("/v1/keys").json()[0]["id"]

    async def rotate_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=account.base_url,
            headers={"Authorization": f"Bearer {account.token}"},
            timeout=30,
        ) as client:
            return await asyncio.gather(
                *(client.post(f"/v1/keys/{key_id}/rotate") for _ in range(5))
            )

    answers = asyncio.run(rotate_all())
    assert sorted(a.status_code for a in answers) == [201, 404, 404, 404, 404]
    [issued] = [a.json()["key"] for a in answers if a.status_code == 201]
    active = [k for k in account.client.get("/v1/keys").json() if k["revoked_at"] is None]
    assert [k["name"] for k in active] == ["pressed-twice"]
    assert issued.startswith(active[0]["prefix"])
    assert _ingest_status(account.base_url, issued) == 202
    assert _ingest_status(account.base_url, old) == 401


def test_unknown_and_malformed_keys_are_401(account: Account) -> None:
    assert _ingest_status(account.base_url, "ak_live_not-a-real-key") == 401
    assert _ingest_status(account.base_url, "something-else") == 401
    with httpx.Client(base_url=account.base_url) as anon:
        assert anon.post("/v1/ingest", json=batch(event())).status_code == 401


def test_a_user_token_is_not_an_sdk_key(account: Account) -> None:
    assert account.client.post("/v1/ingest", json=batch(event())).status_code == 401
