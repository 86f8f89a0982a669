"""Database engines: build one from a URL, point the tables at it, migrate it.

Piccolo finds its engine through the ``piccolo_conf`` module. The backend instead
chooses the engine from :class:`~backend.settings.Settings`, so :func:`use_engine`
points every table (and Piccolo's migration bookkeeping) at the chosen engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
from typing import Any

from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from backend.settings import DatabaseURL

logger = logging.getLogger("agentkavach.backend")

__all__ = [
    "engine_for",
    "use_engine",
    "current_engine",
    "migrate",
    "transaction",
    "read_transaction",
    "is_sqlite",
    "finish_or_cancel",
]

_current: Engine[Any] | None = None


def engine_for(database: DatabaseURL) -> Engine[Any]:
    if database.kind == "postgres":
        return PostgresEngine(config={"dsn": database.dsn})
    path = os.path.expanduser(database.sqlite_path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # A generous busy timeout: concurrent ingest batches queue for the write lock.
    return SQLiteEngine(path=path, timeout=30)


def use_engine(engine: Engine[Any]) -> None:
    """Make ``engine`` the one every backend table and Piccolo's migrations use."""
    global _current
    from piccolo.apps.migrations.tables import Migration
    from piccolo.table import Table

    from backend import piccolo_conf
    from backend.tables import ALL_TABLES

    os.environ.setdefault("PICCOLO_CONF", "backend.piccolo_conf")
    piccolo_conf.DB = engine  # type: ignore[attr-defined]
    tables: tuple[type[Table], ...] = (*ALL_TABLES, Migration)
    for table in tables:
        table._meta.db = engine
    _current = engine


def current_engine() -> Engine[Any]:
    if _current is None:
        raise RuntimeError("no database engine selected: call backend.db.use_engine first")
    return _current


def is_sqlite() -> bool:
    return current_engine().engine_type == "sqlite"


def transaction() -> Any:
    """A write transaction. On SQLite it takes the write lock up front (IMMEDIATE),
    so two concurrent batches queue instead of failing to upgrade a read lock."""
    engine = current_engine()
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    return engine.transaction()


def read_transaction() -> Any:
    """Several reads on one connection and one snapshot. Outside a transaction Piccolo
    opens a new SQLite connection (and its thread) for every query, and on PostgreSQL
    takes and resets a pooled connection for every query; that cost the dashboard's
    overview more than its queries. On SQLite it is DEFERRED: it takes no write lock,
    so ingest goes on (WAL)."""
    engine = current_engine()
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.deferred)
    return engine.transaction()


async def migrate(engine: Engine[Any], *, quiet: bool = True) -> None:
    """Run the committed migrations forwards on ``engine``."""
    from piccolo.apps.migrations.commands.forwards import run_forwards

    use_engine(engine)
    if isinstance(engine, SQLiteEngine):
        # WAL lets readers (the dashboard) work while ingest writes; it persists in the file.
        await engine.run_ddl("PRAGMA journal_mode=WAL")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        result = await run_forwards(app_name="backend")
    if not result.success:
        raise RuntimeError(f"migrations failed: {result.message}\n{sink.getvalue()}")


async def finish_or_cancel(task: asyncio.Task[None], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for a background ``task`` told to stop, then cancel it.

    A task cancelled mid-query leaves the database driver's thread (aiosqlite) to answer an
    event loop that the server closes next: an unhandled exception in that thread, once a
    segfault. So the task is asked first (it stops after the query in flight) and cancelled
    only when it does not finish in time.

    An error the task ended with (a driver that fails a query cut by the cancel: asyncpg's
    "another operation is in progress") is logged, not raised: shutting down goes on to stop
    the rest, and the error is not left for asyncio to report at exit as never retrieved."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("%s failed while stopping", task.get_name(), exc_info=error)
