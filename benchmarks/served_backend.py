"""A backend served in its own process on a scratch database, with an account and a key.

Shared by ``ingest.py`` and ``overview.py``::

    async with scratch_database("postgres") as url, served_backend(url) as backend:
        ...  # backend.base, backend.key, backend.user_headers, backend.org

``code`` points the server at another checkout (``PYTHONPATH``), so two versions can be
measured side by side in one run. CPU time is read from ``/proc`` so a benchmark can
say where the time went: the server process, the PostgreSQL backends serving it, or the
benchmark's own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "benchmark-secret-key-0123456789-abcdefghijklmnop"
PASSWORD = "benchmark pw"
_TICKS = os.sysconf("SC_CLK_TCK")

__all__ = [
    "ROOT",
    "PG_ADMIN",
    "ServedBackend",
    "served_backend",
    "scratch_database",
    "pg",
    "process_cpu",
    "postgres_cpu",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def pg(statement: str, dsn: str = PG_ADMIN) -> list[tuple[object, ...]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(statement)]
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(kind: str) -> AsyncIterator[str]:
    """A new empty database (a SQLite file or a PostgreSQL database), dropped afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield str(Path(tmp) / "bench.sqlite")
        return
    name = f"ak_bench_{uuid.uuid4().hex[:8]}"
    await pg(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def postgres_cpu(database_url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to the database
    (read as root from ``/proc``; another database's load is not counted)."""
    name = database_url.rsplit("/", 1)[1]
    rows = await pg(
        f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        database_url,
    )
    total = 0.0
    for (pid,) in rows:
        with contextlib.suppress(OSError):
            total += process_cpu(int(str(pid)))
    return total


@dataclass
class ServedBackend:
    base: str
    pid: int
    database_url: str
    org: int = 0
    key: str = ""
    user_headers: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "postgres" if self.database_url.startswith("postgres") else "sqlite"


@contextlib.asynccontextmanager
async def served_backend(
    database_url: str, *, code: Path = ROOT, extra_path: str = "", email: str | None = None
) -> AsyncIterator[ServedBackend]:
    """``python -m backend serve`` from checkout ``code`` on a free loopback port, with a
    registered owner (``user_headers``) and an SDK key (``key``); stopped afterwards.

    With ``email``, an account registered by an earlier server on the same database is
    logged into again (so its data is there), or registered if it is not there yet."""
    port = free_port()
    path = os.pathsep.join(p for p in (str(code), extra_path) if p)
    env = {
        **os.environ,
        "AGENTKAVACH_SECRET_KEY": SECRET,
        "AGENTKAVACH_DATABASE_URL": database_url,
        "PYTHONPATH": path,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backend",
        "serve",
        "--port",
        str(port),
        env=env,
        cwd=code,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    backend = ServedBackend(
        base=f"http://127.0.0.1:{port}", pid=process.pid, database_url=database_url
    )
    try:
        async with httpx.AsyncClient(base_url=backend.base, timeout=60) as client:
            for _ in range(600):
                try:
                    if (await client.get("/v1/status")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the backend did not start within a minute")
            email = email or f"bench-{uuid.uuid4().hex[:8]}@example.com"
            await client.post(
                "/v1/auth/register",
                json={"email": email, "password": PASSWORD, "organization": "bench"},
            )
            login = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
            login.raise_for_status()
            backend.user_headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            me = await client.get("/v1/auth/me", headers=backend.user_headers)
            me.raise_for_status()
            backend.org = me.json()["organization"]["id"]
            created = await client.post(
                "/v1/keys", json={"name": "bench"}, headers=backend.user_headers
            )
            created.raise_for_status()
            backend.key = created.json()["key"]
        yield backend
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()
