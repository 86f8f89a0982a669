"""Secrets: password hashes, session tokens (JWT) and SDK API keys.

Nothing here logs or returns a secret except where it is handed to its owner once
(a new API key, an invited member's one-time password).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import anyio.to_thread
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "hash_password",
    "verify_password",
    "issue_token",
    "read_token",
    "TokenClaims",
    "new_api_key",
    "hash_api_key",
    "API_KEY_PREFIXES",
]

_hasher = PasswordHasher()

API_KEY_PREFIXES = ("ak_live_", "ak_test_")
_ALGORITHM = "HS256"


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow; keep it off the event loop.
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(check)


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    org_id: int
    token_version: int
    csrf: str
    session_id: str
    """The token's ``jti``: log-out revokes this one session and no other."""
    expires_at: int


def issue_token(
    secret: str, *, user_id: int, org_id: int, token_version: int, ttl_seconds: int
) -> tuple[str, str]:
    """A signed session token and the CSRF token bound to it."""
    now = int(time.time())
    csrf = secrets.token_urlsafe(24)
    payload = {
        "sub": str(user_id),
        "org": org_id,
        "tv": token_version,
        "csrf": csrf,
        "jti": secrets.token_urlsafe(18),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM), csrf


def read_token(secret: str, token: str) -> TokenClaims | None:
    """The claims of a valid, unexpired token; ``None`` for anything else."""
    try:
        payload = jwt.decode(
            token, secret, algorithms=[_ALGORITHM], options={"require": ["exp", "sub", "jti"]}
        )
        return TokenClaims(
            user_id=int(payload["sub"]),
            org_id=int(payload["org"]),
            token_version=int(payload["tv"]),
            csrf=str(payload["csrf"]),
            session_id=str(payload["jti"]),
            expires_at=int(payload["exp"]),
        )
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return None


def new_api_key(*, test: bool = False) -> tuple[str, str, str]:
    """A new key: ``(full key, display prefix, sha256 hex)``."""
    kind = "ak_test_" if test else "ak_live_"
    full = kind + secrets.token_urlsafe(32)
    return full, full[: len(kind) + 6], hash_api_key(full)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
