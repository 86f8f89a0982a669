"""Backend settings, read from the environment and validated once at start.

Every bad value is reported with the variable's name and what is expected, all at
once, so a deployment is fixed in one go rather than one error per restart.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["Settings", "SettingsError", "DatabaseURL"]

logger = logging.getLogger("agentkavach.backend")

DEFAULT_SQLITE_PATH = "./agentkavach.sqlite"


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists each of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid AgentKavach backend settings:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database location: a SQLite file or a PostgreSQL DSN."""

    kind: str  # "sqlite" | "postgres"
    sqlite_path: str = ""
    dsn: str = ""

    @classmethod
    def parse(cls, raw: str) -> DatabaseURL:
        raw = raw.strip()
        if not raw:
            raise ValueError("is empty")
        lowered = raw.lower()
        if lowered.startswith(("postgresql://", "postgres://")):
            parsed = urlparse(raw)
            if not parsed.hostname and not parsed.path.strip("/"):
                raise ValueError("a PostgreSQL URL needs a host or a database name")
            return cls(kind="postgres", dsn=raw)
        if lowered.startswith("sqlite:///"):
            path = raw[len("sqlite:///") :]
        elif "://" in raw:
            scheme = raw.split("://", 1)[0]
            raise ValueError(
                f"unsupported scheme {scheme!r}: use postgresql://user@host/db, "
                "sqlite:///path/to/file.sqlite or a plain file path"
            )
        else:
            path = raw
        if not path:
            raise ValueError("the SQLite path is empty")
        return cls(kind="sqlite", sqlite_path=path)

    def redacted(self) -> str:
        """The URL with any password replaced, fit for logs."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        parsed = urlparse(self.dsn)
        if parsed.password:
            netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
            parsed = parsed._replace(netloc=netloc)
        if parsed.query:
            # asyncpg also reads the password from the query (``?password=...``).
            query = "&".join(
                f"{name}=***" if name.lower() == "password" else f"{name}{sep}{value}"
                for name, sep, value in (item.partition("=") for item in parsed.query.split("&"))
            )
            parsed = parsed._replace(query=query)
        return parsed.geturl()


@dataclass(frozen=True)
class Settings:
    """Everything the backend reads from its environment.

    >>> s = Settings(database_url="sqlite:///tmp/x.sqlite", secret_key="k" * 32)
    >>> s.database.kind
    'sqlite'
    """

    database_url: str = DEFAULT_SQLITE_PATH
    redis_url: str | None = None
    secret_key: str = ""
    token_ttl_seconds: int = 12 * 3600
    max_body_bytes: int = 5 * 1024 * 1024
    max_events_per_batch: int = 5000
    cookie_secure: bool = False
    keepalive_seconds: float = 15.0
    long_poll_max_seconds: float = 30.0
    static_dir: str | None = None
    auto_migrate: bool = True
    pool_size: int = 20
    database: DatabaseURL = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        try:
            database = DatabaseURL.parse(self.database_url)
        except ValueError as exc:
            problems.append(f"AGENTKAVACH_DATABASE_URL {exc}")
            database = DatabaseURL(kind="sqlite", sqlite_path=DEFAULT_SQLITE_PATH)
        object.__setattr__(self, "database", database)
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            problems.append(
                "AGENTKAVACH_REDIS_URL must start with redis://, rediss:// or unix:// "
                f"(got {self.redis_url.split('://', 1)[0]!r})"
            )
        if len(self.secret_key) < 32:
            problems.append(
                "AGENTKAVACH_SECRET_KEY must be at least 32 characters "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if not 60 <= self.token_ttl_seconds <= 30 * 86400:
            problems.append(
                "AGENTKAVACH_TOKEN_TTL_SECONDS must be between 60 and 2592000 (30 days)"
            )
        if not 1024 <= self.max_body_bytes <= 512 * 1024 * 1024:
            problems.append("AGENTKAVACH_MAX_BODY_BYTES must be between 1024 and 536870912")
        if not 1 <= self.max_events_per_batch <= 100_000:
            problems.append("AGENTKAVACH_MAX_EVENTS_PER_BATCH must be between 1 and 100000")
        if not 1 <= self.pool_size <= 1000:
            problems.append("AGENTKAVACH_POOL_SIZE must be between 1 and 1000")
        if problems:
            raise SettingsError(problems)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``AGENTKAVACH_*`` variables; raise :class:`SettingsError` listing every bad one.

        Without ``AGENTKAVACH_SECRET_KEY`` and on SQLite, a key is generated once and
        kept in a file beside the database (with a warning); on PostgreSQL the key
        must be given, since several replicas have to share it.
        """
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def integer(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return int(raw.strip().replace("_", ""))
            except ValueError:
                problems.append(f"{name} must be an integer (got {raw!r})")
                return default

        def boolean(name: str, default: bool) -> bool:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            value = raw.strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            problems.append(f"{name} must be true or false (got {raw!r})")
            return default

        database_url = env.get("AGENTKAVACH_DATABASE_URL", "").strip() or DEFAULT_SQLITE_PATH
        redis_url = env.get("AGENTKAVACH_REDIS_URL", "").strip() or None
        secret_key = env.get("AGENTKAVACH_SECRET_KEY", "").strip()
        ttl = integer("AGENTKAVACH_TOKEN_TTL_SECONDS", cls.token_ttl_seconds)
        max_body = integer("AGENTKAVACH_MAX_BODY_BYTES", cls.max_body_bytes)
        max_events = integer("AGENTKAVACH_MAX_EVENTS_PER_BATCH", cls.max_events_per_batch)
        cookie_secure = boolean("AGENTKAVACH_COOKIE_SECURE", cls.cookie_secure)
        static_dir = env.get("AGENTKAVACH_STATIC_DIR", "").strip() or None
        auto_migrate = boolean("AGENTKAVACH_AUTO_MIGRATE", cls.auto_migrate)
        pool_size = integer("AGENTKAVACH_POOL_SIZE", cls.pool_size)

        if not secret_key:
            try:
                database = DatabaseURL.parse(database_url)
            except ValueError:
                database = None
            if database is not None and database.kind == "sqlite":
                secret_key = dev_secret_key(database.sqlite_path)
            elif database is not None:
                problems.append(
                    "AGENTKAVACH_SECRET_KEY is required with PostgreSQL "
                    "(every replica must sign tokens with the same key)"
                )
        try:
            settings = cls(
                database_url=database_url,
                redis_url=redis_url,
                secret_key=secret_key or "x" * 32,
                token_ttl_seconds=ttl,
                max_body_bytes=max_body,
                max_events_per_batch=max_events,
                cookie_secure=cookie_secure,
                static_dir=static_dir,
                auto_migrate=auto_migrate,
                pool_size=pool_size,
            )
        except SettingsError as exc:
            problems.extend(exc.problems)
            raise SettingsError(problems) from None
        if problems:
            raise SettingsError(problems)
        return settings


def dev_secret_key(sqlite_path: str) -> str:
    """A signing key kept beside the SQLite file, created on first use."""
    key_file = Path(sqlite_path).expanduser().resolve().with_suffix(".secret")
    if key_file.exists():
        return key_file.read_text().strip()
    logger.warning(
        "AGENTKAVACH_SECRET_KEY is not set: generated a development key in %s; "
        "set AGENTKAVACH_SECRET_KEY in production",
        key_file,
    )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key
