"""Set-up commands as plain functions; ``kavach serve|migrate|user create|keys create``
call them, and ``python -m backend ...`` exposes them now.

Each function takes an optional ``database_url``; without it,
``AGENTKAVACH_DATABASE_URL`` (or the default SQLite file) is used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

from backend import db
from backend.settings import DEFAULT_SQLITE_PATH, DatabaseURL, Settings

__all__ = ["serve", "migrate", "create_user", "create_key"]


def _database(database_url: str | None) -> DatabaseURL:
    raw = database_url or os.environ.get("AGENTKAVACH_DATABASE_URL", "") or DEFAULT_SQLITE_PATH
    return DatabaseURL.parse(raw)


async def _migrated(database_url: str | None) -> None:
    engine = db.engine_for(_database(database_url))
    await db.migrate(engine)


def migrate(database_url: str | None = None) -> None:
    """Run the committed migrations forwards (safe to repeat)."""
    asyncio.run(_migrated(database_url))


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    database_url: str | None = None,
    *,
    log_level: str = "info",
) -> None:
    """Migrate, then serve the backend with uvicorn until interrupted."""
    import gc
    import logging

    import uvicorn

    from backend.app import create_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    env = dict(os.environ)
    if database_url:
        env["AGENTKAVACH_DATABASE_URL"] = database_url
    settings = Settings.from_env(env)
    migrate(settings.database_url)
    app = create_app(dataclasses.replace(settings, auto_migrate=False))
    # The modules and the app live as long as the process: out of the collector's sight,
    # the full collections that a thousand-event batch sets off do not walk them again
    # each time (they were most of the time spent decoding a batch).
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=True)


async def _create_user(email: str, password: str, org: str, role: str | None) -> dict[str, Any]:
    from backend.security import hash_password
    from backend.tables import Membership, Organization, Subscription, User

    email = email.strip().lower()
    if len(password) < 8:
        raise ValueError("the password must be at least 8 characters")
    if await User.exists().where(User.email == email):
        raise ValueError(f"a user with e-mail {email} already exists")
    password_hash = await hash_password(password)
    async with db.transaction():
        existing = await Organization.select(Organization.id).where(Organization.name == org)
        if existing:
            org_id = existing[0]["id"]
            role = role or "admin"
        else:
            org_id = (await Organization.insert(Organization(name=org)))[0]["id"]
            await Subscription.insert(Subscription(org=org_id, plan="free"))
            role = "owner"
        user_id = (await User.insert(User(email=email, password_hash=password_hash)))[0]["id"]
        await Membership.insert(Membership(user=user_id, org=org_id, role=role))
    return {"user_id": user_id, "org_id": org_id, "role": role, "email": email}


def create_user(
    email: str,
    password: str,
    org: str,
    database_url: str | None = None,
    *,
    role: str | None = None,
) -> dict[str, Any]:
    """Create a user in the organization named ``org`` (created, with the user as owner,
    if it does not exist; otherwise the user joins as ``role``, default admin)."""

    async def run() -> dict[str, Any]:
        await _migrated(database_url)
        return await _create_user(email, password, org, role)

    return asyncio.run(run())


async def _org_id(org: str) -> int:
    from backend.tables import MAX_ID, Membership, Organization, User

    if "@" in org:
        user = await User.select(User.id).where(User.email == org.strip().lower()).first()
        if user is not None:
            membership = (
                await Membership.select(Membership.org)
                .where(Membership.user == user["id"])
                .order_by(Membership.id)
                .first()
            )
            if membership is not None:
                return int(membership["org"])
        raise ValueError(f"no user with e-mail {org}")
    if (
        org.isdigit()
        and int(org) <= MAX_ID
        and await Organization.exists().where(Organization.id == int(org))
    ):
        return int(org)
    rows = await Organization.select(Organization.id).where(Organization.name == org)
    if len(rows) == 1:
        return int(rows[0]["id"])
    if rows:
        raise ValueError(f"several organizations are named {org!r}; give its id instead")
    raise ValueError(f"no organization named {org!r}")


def create_key(
    org: str, name: str = "default", test: bool = False, database_url: str | None = None
) -> str:
    """Create an SDK key for ``org`` (an organization name or id, or a member's e-mail)
    and return the full key; only its hash is stored."""
    from backend.routes.keys import create_key_row

    async def run() -> str:
        await _migrated(database_url)
        _, full = await create_key_row(await _org_id(org), name, test=test, created_by=None)
        return full

    return asyncio.run(run())
