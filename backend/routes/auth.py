"""Register, log in and out, the current user, password change, members."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import msgspec
from argon2 import PasswordHasher
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    PermissionDeniedException,
)
from litestar.params import JSONBody
from litestar.status_codes import HTTP_409_CONFLICT

from backend import db
from backend.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    UserPrincipal,
    end_session,
    require_admin,
)
from backend.deps import USER
from backend.security import hash_password, issue_token, verify_password
from backend.settings import Settings
from backend.tables import MAX_ID, Membership, Organization, Subscription, User

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
AnyPassword = Annotated[str, msgspec.Meta(max_length=1024)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    organization: Name


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=320)]
    password: AnyPassword
    organization_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)] | None = None


class PasswordBody(msgspec.Struct, forbid_unknown_fields=True):
    current_password: AnyPassword
    new_password: Password


class InviteBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    role: Annotated[str, msgspec.Meta(pattern=r"^(owner|admin|viewer)$")] = "viewer"


class ConflictException(ClientException):
    status_code = HTTP_409_CONFLICT


# Verifying against a real hash when the e-mail is unknown keeps login timing flat.
_DUMMY_HASH = PasswordHasher().hash(secrets.token_urlsafe(16))


def _user_json(user_id: int, email: str) -> dict[str, Any]:
    return {"id": user_id, "email": email}


def _session_response(
    settings: Settings, body: dict[str, Any], *, user_id: int, org_id: int, token_version: int
) -> Response[dict[str, Any]]:
    token, csrf = issue_token(
        settings.secret_key,
        user_id=user_id,
        org_id=org_id,
        token_version=token_version,
        ttl_seconds=settings.token_ttl_seconds,
    )
    content = {
        **body,
        "access_token": token,
        "token_type": "bearer",
        "expires_in": settings.token_ttl_seconds,
        "csrf_token": csrf,
    }
    return Response(
        content,
        status_code=200,
        cookies=[
            Cookie(
                key=SESSION_COOKIE,
                value=token,
                httponly=True,
                secure=settings.cookie_secure,
                samesite="lax",
                max_age=settings.token_ttl_seconds,
                path="/",
            ),
            Cookie(
                key=CSRF_COOKIE,
                value=csrf,
                httponly=False,  # the dashboard reads it to echo it in X-CSRF-Token
                secure=settings.cookie_secure,
                samesite="strict",
                max_age=settings.token_ttl_seconds,
                path="/",
            ),
        ],
    )


@post("/v1/auth/register", status_code=201, tags=["auth"])
async def register(data: JSONBody[RegisterBody]) -> dict[str, Any]:
    """Create an organization and its first user, who owns it."""
    email = data.email.strip().lower()
    if await User.exists().where(User.email == email):
        raise ConflictException("an account with this e-mail already exists; log in instead")
    password_hash = await hash_password(data.password)
    async with db.transaction():
        org = (await Organization.insert(Organization(name=data.organization.strip())))[0]["id"]
        user = (await User.insert(User(email=email, password_hash=password_hash)))[0]["id"]
        await Membership.insert(Membership(user=user, org=org, role="owner"))
        await Subscription.insert(Subscription(org=org, plan="free"))
    return {
        "user": _user_json(user, email),
        "organization": {"id": org, "name": data.organization.strip()},
        "role": "owner",
    }


@post("/v1/auth/login", status_code=200, tags=["auth"])
async def login(
    request: Request[Any, Any, Any], data: JSONBody[LoginBody]
) -> Response[dict[str, Any]]:
    """Answer with ``access_token`` and set the dashboard's session and CSRF cookies."""
    email = data.email.strip().lower()
    user = await User.select().where(User.email == email).first()
    ok = await verify_password(user["password_hash"] if user else _DUMMY_HASH, data.password)
    if user is None or not ok:
        raise NotAuthorizedException("wrong e-mail or password")
    query = Membership.select(Membership.org, Membership.role, Membership.org.name).where(
        Membership.user == user["id"]
    )
    if data.organization_id is not None:
        query = query.where(Membership.org == data.organization_id)
    membership = await query.order_by(Membership.id).first()
    if membership is None:
        raise NotAuthorizedException("this account is not a member of that organization")
    body = {
        "user": _user_json(user["id"], user["email"]),
        "organization": {"id": membership["org"], "name": membership["org.name"]},
        "role": membership["role"],
        "must_change_password": user["must_change_password"],
    }
    return _session_response(
        request.app.state.settings,
        body,
        user_id=user["id"],
        org_id=membership["org"],
        token_version=user["token_version"],
    )


@post("/v1/auth/logout", status_code=200, tags=["auth"])
async def logout(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """End this session: its token (cookie or bearer) is revoked on the server, so a
    copy of it stops working too, and the cookies are cleared. Other sessions of the
    same user stay logged in; changing the password ends them all."""
    await end_session(request)
    response = Response({"ok": True}, status_code=200)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@get("/v1/auth/me", dependencies=USER, tags=["auth"])
async def me(user: NamedDependency[UserPrincipal]) -> dict[str, Any]:
    rows = await Membership.select(Membership.org, Membership.org.name, Membership.role).where(
        Membership.user == user.user_id
    )
    org_name = next((r["org.name"] for r in rows if r["org"] == user.org_id), "")
    return {
        "user": _user_json(user.user_id, user.email),
        "organization": {"id": user.org_id, "name": org_name},
        "role": user.role,
        "memberships": [
            {"organization": {"id": r["org"], "name": r["org.name"]}, "role": r["role"]}
            for r in rows
        ],
    }


@post("/v1/auth/password", status_code=200, dependencies=USER, tags=["auth"])
async def change_password(
    request: Request[Any, Any, Any],
    user: NamedDependency[UserPrincipal],
    data: JSONBody[PasswordBody],
) -> Response[dict[str, Any]]:
    """Change the password; every earlier token stops working, a new session is returned."""
    row = await User.select().where(User.id == user.user_id).first()
    if row is None or not await verify_password(row["password_hash"], data.current_password):
        raise PermissionDeniedException("the current password is wrong")
    new_hash = await hash_password(data.new_password)
    version = row["token_version"] + 1
    await User.update(
        {
            User.password_hash: new_hash,
            User.token_version: version,
            User.must_change_password: False,
        }
    ).where(User.id == user.user_id)
    return _session_response(
        request.app.state.settings,
        {"user": _user_json(user.user_id, user.email)},
        user_id=user.user_id,
        org_id=user.org_id,
        token_version=version,
    )


@get("/v1/orgs/members", dependencies=USER, tags=["auth"])
async def list_members(user: NamedDependency[UserPrincipal]) -> list[dict[str, Any]]:
    rows = (
        await Membership.select(Membership.user, Membership.user.email, Membership.role)
        .where(Membership.org == user.org_id)
        .order_by(Membership.id)
    )
    return [{"user": _user_json(r["user"], r["user.email"]), "role": r["role"]} for r in rows]


@post("/v1/orgs/members", status_code=201, dependencies=USER, tags=["auth"])
async def invite_member(
    user: NamedDependency[UserPrincipal], data: JSONBody[InviteBody]
) -> dict[str, Any]:
    """Add a member. A new account gets a one-time password, returned only here."""
    require_admin(user)
    if data.role == "owner" and user.role != "owner":
        raise PermissionDeniedException("only an owner can add another owner")
    email = data.email.strip().lower()
    existing = await User.select(User.id).where(User.email == email).first()
    one_time_password: str | None = None
    password_hash = ""
    if existing is None:
        one_time_password = secrets.token_urlsafe(12)
        password_hash = await hash_password(one_time_password)
    async with db.transaction():
        if existing is None:
            user_id = (
                await User.insert(
                    User(email=email, password_hash=password_hash, must_change_password=True)
                )
            )[0]["id"]
        else:
            user_id = existing["id"]
            if await Membership.exists().where(
                (Membership.user == user_id) & (Membership.org == user.org_id)
            ):
                raise ConflictException("this user is already a member")
        await Membership.insert(Membership(user=user_id, org=user.org_id, role=data.role))
    body: dict[str, Any] = {"user": _user_json(user_id, email), "role": data.role}
    if one_time_password is not None:
        body["one_time_password"] = one_time_password
    return body


ROUTES = [register, login, logout, me, change_password, list_members, invite_member]
