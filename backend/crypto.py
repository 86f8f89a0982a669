"""Channel secrets at rest: Fernet (AES-128-CBC + HMAC) with a key from the environment.

Without ``AGENTKAVACH_ENCRYPTION_KEY`` secrets are refused, never stored in clear.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["SecretBox", "EncryptionUnavailable", "check_key", "mask"]

_GENERATE = (
    "generate one with: python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


class EncryptionUnavailable(RuntimeError):
    pass


def check_key(key: str) -> str | None:
    """Why ``key`` is not a usable Fernet key, or None."""
    try:
        from cryptography.fernet import Fernet
    except ImportError:  # pragma: no cover - the server extra installs it
        return "needs the cryptography package (pip install 'agentkavach[server]')"
    try:
        Fernet(key.encode())
    except ValueError:
        return "must be 32 url-safe base64-encoded bytes; " + _GENERATE
    return None


class SecretBox:
    def __init__(self, key: str | None) -> None:
        self._fernet = None
        if key:
            from cryptography.fernet import Fernet

            self._fernet = Fernet(key.encode())

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def encrypt(self, plain: str) -> str:
        if self._fernet is None:
            raise EncryptionUnavailable(
                "channel secrets are stored encrypted and AGENTKAVACH_ENCRYPTION_KEY is not set "
                "on the server; " + _GENERATE
            )
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        if self._fernet is None:
            raise EncryptionUnavailable("AGENTKAVACH_ENCRYPTION_KEY is not set on the server")
        return self._fernet.decrypt(token.encode()).decode()


def mask(value: str) -> str:
    """What the API shows of a secret. A URL (a Slack or webhook address): its scheme and
    host only, since its path and query hold the token, and the last characters of a URL
    ending in a short ``?token=abc`` would be all of it. Anything else: its last four
    characters, when it is long enough (16 or more) that they give nothing away."""
    parts = urlsplit(value)
    if parts.scheme and parts.netloc:
        host = parts.netloc.rsplit("@", 1)[-1]  # never user:password@
        return f"{parts.scheme}://{host}/********"
    return "********" + (value[-4:] if len(value) >= 16 else "")
