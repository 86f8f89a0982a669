"""SDK API keys: created (the full key shown once), listed, revoked, rotated."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody

from backend import db
from backend.auth import UserPrincipal, require_admin
from backend.control import KEY_REVOKED, ControlHub
from backend.deps import USER, ObjectId
from backend.security import new_api_key
from backend.tables import ApiKey


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "default"
    test: bool = False


def _key_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "environment": row["environment"],
        "created_at": row["created_at"],
        "last_used_at": row["last_used_at"],
        "revoked_at": row["revoked_at"],
    }


async def create_key_row(
    org_id: int, name: str, *, test: bool, created_by: int | None
) -> tuple[dict[str, Any], str]:
    full, prefix, digest = new_api_key(test=test)
    key = ApiKey(
        org=org_id,
        name=name,
        prefix=prefix,
        key_hash=digest,
        environment="test" if test else "live",
        created_by=created_by,
    )
    await key.save()
    row = await ApiKey.select().where(ApiKey.id == key.id).first()
    assert row is not None
    return row, full


async def _own_key(user: UserPrincipal, key_id: int) -> dict[str, Any]:
    row = await ApiKey.select().where((ApiKey.id == key_id) & (ApiKey.org == user.org_id)).first()
    if row is None:
        raise NotFoundException("no such API key")
    return row


async def _revoked(request: Request[Any, Any, Any], org_id: int, key_id: int) -> None:
    """Close the control streams open with the key now, on every replica."""
    hub: ControlHub = request.app.state.hub
    await hub.publish(org_id, {"type": KEY_REVOKED, "key": key_id})


@get("/v1/keys", dependencies=USER, tags=["keys"])
async def list_keys(user: NamedDependency[UserPrincipal]) -> list[dict[str, Any]]:
    rows = await ApiKey.select().where(ApiKey.org == user.org_id).order_by(ApiKey.id)
    return [_key_json(r) for r in rows]


@post("/v1/keys", status_code=201, dependencies=USER, tags=["keys"])
async def create_key(
    user: NamedDependency[UserPrincipal], data: JSONBody[KeyBody]
) -> dict[str, Any]:
    """The answer's ``key`` is the only time the full key is shown."""
    require_admin(user)
    row, full = await create_key_row(
        user.org_id, data.name.strip(), test=data.test, created_by=user.user_id
    )
    return {**_key_json(row), "key": full}


@delete("/v1/keys/{key_id:int}", status_code=200, dependencies=USER, tags=["keys"])
async def revoke_key(
    request: Request[Any, Any, Any], user: NamedDependency[UserPrincipal], key_id: ObjectId
) -> dict[str, Any]:
    require_admin(user)
    row = await _own_key(user, key_id)
    if row["revoked_at"] is None:
        now = datetime.datetime.now(datetime.UTC)
        await ApiKey.update({ApiKey.revoked_at: now}).where(ApiKey.id == key_id)
        row["revoked_at"] = now
        await _revoked(request, user.org_id, key_id)
    return _key_json(row)


@post("/v1/keys/{key_id:int}/rotate", status_code=201, dependencies=USER, tags=["keys"])
async def rotate_key(
    request: Request[Any, Any, Any], user: NamedDependency[UserPrincipal], key_id: ObjectId
) -> dict[str, Any]:
    """Revoke the key and issue a replacement with the same name and environment."""
    require_admin(user)
    old = await _own_key(user, key_id)
    async with db.transaction():
        # Only the rotation that revokes the key issues its replacement: a double click
        # or two admins at once would otherwise leave several working keys.
        now = datetime.datetime.now(datetime.UTC)
        revoked = (
            await ApiKey.update({ApiKey.revoked_at: now})
            .where((ApiKey.id == key_id) & ApiKey.revoked_at.is_null())
            .returning(ApiKey.id)
        )
        if not revoked:
            raise NotFoundException("no such active API key")
        row, full = await create_key_row(
            user.org_id,
            old["name"],
            test=old["environment"] == "test",
            created_by=user.user_id,
        )
    await _revoked(request, user.org_id, key_id)
    return {**_key_json(row), "key": full, "replaces": key_id}


ROUTES = [list_keys, create_key, revoke_key, rotate_key]
