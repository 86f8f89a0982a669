"""Indexes of ``revoked_sessions`` and ``usage_monthly``, and this month's usage for an
existing database. Ingest adds to ``usage_monthly`` with ``INSERT ... ON CONFLICT (org,
month)``, which relies on the unique index. Until now usage was read from the daily
rollups by the day events started; this month's row starts from that figure, so an
upgrade mid-month does not hand out the month's events again. Its own migration, because
Piccolo runs raw steps before a migration's tables."""

import datetime

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-28T18:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "revoked sessions and monthly usage indexes, usage backfill"

INDEXES = [
    "CREATE UNIQUE INDEX IF NOT EXISTS revoked_sessions_jti ON revoked_sessions (jti)",
    "CREATE INDEX IF NOT EXISTS revoked_sessions_expires ON revoked_sessions (expires_at)",
    "CREATE UNIQUE INDEX IF NOT EXISTS usage_monthly_org_month ON usage_monthly (org, month)",
]
BACKFILL = (
    "INSERT INTO usage_monthly (org, month, events) "
    "SELECT org, {month}, CAST(SUM(calls + refusals) AS BIGINT) FROM spend_daily "
    "WHERE day >= {month} GROUP BY org "
    "ON CONFLICT (org, month) DO NOTHING"
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)

    async def create() -> None:
        engine = engine_finder()
        assert engine is not None
        for statement in INDEXES:
            await engine.run_ddl(statement)
        # A date of our own making, not input. PostgreSQL types a bare literal in a SELECT
        # list as text; SQLite stores dates as ISO text and has no DATE '...' syntax.
        month = datetime.datetime.now(datetime.UTC).date().replace(day=1)
        literal = f"'{month.isoformat()}'"
        if engine.engine_type == "postgres":
            literal = f"DATE {literal}"
        await engine.run_ddl(BACKFILL.format(month=literal))

    async def drop() -> None:
        engine = engine_finder()
        assert engine is not None
        for statement in INDEXES:
            name = statement.split(" INDEX IF NOT EXISTS ", 1)[1].split(" ", 1)[0]
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
