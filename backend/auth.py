"""Who is calling: a dashboard user (JWT bearer or session cookie) or an SDK key.

Both resolve to a principal carrying the organization id; every query filters by
it, so another organization's objects are simply not found (404).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from backend.security import API_KEY_PREFIXES, hash_api_key, read_token, same
from backend.settings import Settings
from backend.tables import ApiKey, Membership, RevokedSession

__all__ = [
    "UserPrincipal",
    "KeyPrincipal",
    "Principal",
    "user_principal",
    "key_principal",
    "any_principal",
    "require_admin",
    "session_is_current",
    "end_session",
    "key_is_active",
    "api_key_from",
    "SESSION_COOKIE",
    "CSRF_COOKIE",
    "CSRF_HEADER",
]

SESSION_COOKIE = "kavach_session"
CSRF_COOKIE = "kavach_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLES = ("owner", "admin", "viewer")


@dataclass(frozen=True)
class UserPrincipal:
    user_id: int
    org_id: int
    role: str
    email: str

    @property
    def is_admin(self) -> bool:
        return self.role in ("owner", "admin")


@dataclass(frozen=True)
class KeyPrincipal:
    key_id: int
    org_id: int


@dataclass(frozen=True)
class Principal:
    """Either kind of caller, reduced to what endpoints open to both need."""

    org_id: int
    is_key: bool


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _bearer(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def api_key_from(request: Request[Any, Any, Any]) -> str | None:
    """The API key the request authenticates with: the bearer if it is one, else X-API-Key."""
    token = _bearer(request)
    if token is not None and token.startswith(API_KEY_PREFIXES):
        return token
    header = request.headers.get("x-api-key")
    return header.strip() if header else None


async def _resolve_user(request: Request[Any, Any, Any]) -> UserPrincipal | None:
    settings = _settings(request)
    token = _bearer(request)
    from_cookie = False
    if token is None or token.startswith(API_KEY_PREFIXES):
        token = request.cookies.get(SESSION_COOKIE)
        from_cookie = True
    if not token:
        return None
    claims = read_token(settings.secret_key, token)
    if claims is None:
        raise NotAuthorizedException("invalid or expired session; log in again")
    if from_cookie and request.method not in _SAFE_METHODS:
        # Double-submit cookie, bound to the session: the header must echo the
        # cookie, and both must be the token minted with this session.
        header = request.headers.get(CSRF_HEADER, "")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not (header and same(header, cookie) and same(header, claims.csrf)):
            raise PermissionDeniedException(
                f"missing or wrong CSRF token: send the {CSRF_COOKIE} cookie's value "
                f"in the {CSRF_HEADER} header"
            )
    row = (
        await Membership.select(
            Membership.role, Membership.user.email, Membership.user.token_version
        )
        .where((Membership.user == claims.user_id) & (Membership.org == claims.org_id))
        .first()
    )
    if row is None or row["user.token_version"] != claims.token_version:
        raise NotAuthorizedException("invalid or expired session; log in again")
    if await RevokedSession.exists().where(RevokedSession.jti == claims.session_id):
        raise NotAuthorizedException("this session was logged out; log in again")
    return UserPrincipal(
        user_id=claims.user_id, org_id=claims.org_id, role=row["role"], email=row["user.email"]
    )


async def session_is_current(request: Request[Any, Any, Any]) -> bool:
    """Whether the session that opened a long-lived response (the live feed) would still
    be let in: not logged out, password unchanged, still a member."""
    try:
        return await _resolve_user(request) is not None
    except (NotAuthorizedException, PermissionDeniedException):
        return False


async def end_session(request: Request[Any, Any, Any]) -> None:
    """Revoke the session tokens the request carries (bearer and cookie), so a copy of
    either stops working now rather than when it expires. The user's other sessions stay."""
    settings = _settings(request)
    bearer = _bearer(request)
    tokens = {request.cookies.get(SESSION_COOKIE, "")}
    if bearer is not None and not bearer.startswith(API_KEY_PREFIXES):
        tokens.add(bearer)
    for token in tokens:
        claims = read_token(settings.secret_key, token) if token else None
        if claims is None:
            continue
        expires = datetime.datetime.fromtimestamp(claims.expires_at, datetime.UTC)
        await RevokedSession.raw(
            "INSERT INTO revoked_sessions (jti, expires_at) VALUES ({}, {}) "
            "ON CONFLICT (jti) DO NOTHING",
            claims.session_id,
            expires,
        )


async def key_is_active(key_id: int) -> bool:
    """Whether the API key still exists and is not revoked (for streams opened with it)."""
    return bool(await ApiKey.exists().where((ApiKey.id == key_id) & ApiKey.revoked_at.is_null()))


# Updating last_used_at on every ingest would add a write per batch; once a minute is enough.
_LAST_USED_EVERY = 60.0
_last_used_written: dict[str, float] = {}


async def _resolve_key(request: Request[Any, Any, Any]) -> KeyPrincipal | None:
    key = api_key_from(request)
    if key is None:
        return None
    if not key.startswith(API_KEY_PREFIXES):
        raise NotAuthorizedException("invalid API key")
    digest = hash_api_key(key)
    row = (
        await ApiKey.select(ApiKey.id, ApiKey.org, ApiKey.revoked_at)
        .where(ApiKey.key_hash == digest)
        .first()
    )
    if row is None or row["revoked_at"] is not None:
        raise NotAuthorizedException("invalid or revoked API key")
    now = time.monotonic()
    if now - _last_used_written.get(digest, -_LAST_USED_EVERY) >= _LAST_USED_EVERY:
        _last_used_written[digest] = now
        await ApiKey.update({ApiKey.last_used_at: datetime.datetime.now(datetime.UTC)}).where(
            ApiKey.id == row["id"]
        )
    return KeyPrincipal(key_id=row["id"], org_id=row["org"])


async def user_principal(request: Request[Any, Any, Any]) -> UserPrincipal:
    user = await _resolve_user(request)
    if user is None:
        raise NotAuthorizedException("log in first (Authorization: Bearer <token> or session)")
    return user


async def key_principal(request: Request[Any, Any, Any]) -> KeyPrincipal:
    key = await _resolve_key(request)
    if key is None:
        raise NotAuthorizedException("an API key is required (Authorization: Bearer ak_...)")
    return key


async def any_principal(request: Request[Any, Any, Any]) -> Principal:
    if api_key_from(request) is not None:
        return Principal(org_id=(await key_principal(request)).org_id, is_key=True)
    return Principal(org_id=(await user_principal(request)).org_id, is_key=False)


def require_admin(user: UserPrincipal) -> None:
    if not user.is_admin:
        raise PermissionDeniedException("this needs the owner or admin role")
