"""At most one open PagerDuty incident per org, channel and dedup key: the worker records a
trigger with ``INSERT ... ON CONFLICT (org, channel, dedup_key) WHERE resolved_at IS NULL
DO NOTHING``, so a 90% then 100% trigger (same dedup key) is one incident, and a trigger
after a resolve opens a new one. Partial indexes run on SQLite and PostgreSQL. Its own
migration, because Piccolo runs raw steps before a migration's tables."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-28T17:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "pagerduty incidents index"

CREATE = (
    "CREATE UNIQUE INDEX IF NOT EXISTS pagerduty_incidents_open "
    "ON pagerduty_incidents (org, channel, dedup_key) WHERE resolved_at IS NULL"
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)

    async def create_index() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl(CREATE)

    async def drop_index() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("DROP INDEX IF EXISTS pagerduty_incidents_open")

    manager.add_raw(create_index)
    manager.add_raw_backwards(drop_index)
    return manager
