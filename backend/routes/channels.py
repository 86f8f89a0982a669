"""Alert channels of an organization: ``/v1/channels`` create, list, read, update, delete.

Secrets (webhook URLs, routing keys, passwords) are stored encrypted with
``AGENTKAVACH_ENCRYPTION_KEY`` and answered masked, never in clear. Without that key the
server refuses to store a secret (409 with how to set one).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import JSONBody

from backend.auth import UserPrincipal, require_admin
from backend.channel_config import check_channel, masked
from backend.crypto import EncryptionUnavailable, SecretBox
from backend.deps import USER, ObjectId
from backend.tables import AlertChannel
from kavach.errors import KavachConfigError

Kind = Literal["slack", "pagerduty", "webhook", "email"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class ChannelBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    kind: Kind
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    secrets: dict[str, Annotated[str, msgspec.Meta(max_length=2000)]] = msgspec.field(
        default_factory=dict
    )
    enabled: bool = True


class ChannelPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None
    config: dict[str, Any] | None = None
    secrets: dict[str, Annotated[str, msgspec.Meta(max_length=2000)]] | None = None
    enabled: bool | None = None


def _box(request: Request[Any, Any, Any]) -> SecretBox:
    box: SecretBox = request.app.state.ops.box
    return box


def _json(row: dict[str, Any], box: SecretBox) -> dict[str, Any]:
    config = row["config"]
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row["kind"],
        "config": json.loads(config) if isinstance(config, str) else config,
        "secrets": masked(box, row),
        "enabled": row["enabled"],
        "created_at": row["created_at"],
    }


def _checked(kind: str, config: dict[str, Any], secrets: dict[str, str], box: SecretBox) -> str:
    try:
        check_channel(kind, config, secrets)
    except KavachConfigError as exc:
        raise ClientException(str(exc)) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ClientException(f"invalid {kind} channel settings: {exc}") from None
    try:
        return box.encrypt(json.dumps(secrets)) if secrets else ""
    except EncryptionUnavailable as exc:
        raise ClientException(str(exc), status_code=409) from None


async def _own(org_id: int, channel_id: int) -> dict[str, Any]:
    row = (
        await AlertChannel.select()
        .where((AlertChannel.id == channel_id) & (AlertChannel.org == org_id))
        .first()
    )
    if row is None:
        raise NotFoundException("no such channel")
    return row


async def _name_free(org_id: int, name: str, except_id: int | None = None) -> None:
    query = AlertChannel.select(AlertChannel.id).where(
        (AlertChannel.org == org_id) & (AlertChannel.name == name)
    )
    rows = await query
    if any(r["id"] != except_id for r in rows):
        raise ClientException(f"a channel named {name!r} exists already", status_code=409)


@get("/v1/channels", dependencies=USER, tags=["alerts"])
async def list_channels(
    request: Request[Any, Any, Any], user: NamedDependency[UserPrincipal]
) -> list[dict[str, Any]]:
    rows = (
        await AlertChannel.select().where(AlertChannel.org == user.org_id).order_by(AlertChannel.id)
    )
    return [_json(r, _box(request)) for r in rows]


@post("/v1/channels", status_code=201, dependencies=USER, tags=["alerts"])
async def create_channel(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    data: JSONBody[ChannelBody],
) -> dict[str, Any]:
    """A Slack, PagerDuty, webhook or e-mail channel; secrets go in ``secrets``."""
    require_admin(user)
    await _name_free(user.org_id, data.name)
    secret = _checked(data.kind, data.config, data.secrets, _box(request))
    row = AlertChannel(
        org=user.org_id,
        name=data.name,
        kind=data.kind,
        config=json.dumps(data.config),
        secret=secret or None,
        enabled=data.enabled,
    )
    await row.save()
    return _json(await _own(user.org_id, row.id), _box(request))


@get("/v1/channels/{channel_id:int}", dependencies=USER, tags=["alerts"])
async def get_channel(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    channel_id: ObjectId,
) -> dict[str, Any]:
    return _json(await _own(user.org_id, channel_id), _box(request))


@patch("/v1/channels/{channel_id:int}", dependencies=USER, tags=["alerts"])
async def update_channel(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    channel_id: ObjectId,
    data: JSONBody[ChannelPatch],
) -> dict[str, Any]:
    """Change settings; ``secrets`` replaces the stored ones (omit it to keep them)."""
    require_admin(user)
    row = await _own(user.org_id, channel_id)
    box = _box(request)
    changes: dict[Any, Any] = {}
    if data.name is not None and data.name != row["name"]:
        await _name_free(user.org_id, data.name, channel_id)
        changes[AlertChannel.name] = data.name
    if data.config is not None or data.secrets is not None:
        config = data.config if data.config is not None else json.loads(row["config"] or "{}")
        if data.secrets is not None:
            secrets = data.secrets
        elif row["secret"]:
            try:
                secrets = json.loads(box.decrypt(row["secret"]))
            except EncryptionUnavailable as exc:
                raise ClientException(str(exc), status_code=409) from None
        else:
            secrets = {}
        changes[AlertChannel.config] = json.dumps(config)
        changes[AlertChannel.secret] = _checked(row["kind"], config, secrets, box) or None
    if data.enabled is not None:
        changes[AlertChannel.enabled] = data.enabled
    if changes:
        await AlertChannel.update(changes).where(AlertChannel.id == channel_id)
    return _json(await _own(user.org_id, channel_id), box)


@delete("/v1/channels/{channel_id:int}", status_code=204, dependencies=USER, tags=["alerts"])
async def delete_channel(user: NamedDependency[UserPrincipal], channel_id: ObjectId) -> None:
    require_admin(user)
    await _own(user.org_id, channel_id)
    await AlertChannel.delete().where(AlertChannel.id == channel_id)


ROUTES = [list_channels, create_channel, get_channel, update_channel, delete_channel]
