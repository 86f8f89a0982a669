"""A partial index for the overview's refusals-by-reason: it reads only refused events,
so the month's ordinary events (millions) are never scanned. SQLite and PostgreSQL
both support partial indexes."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-28T14:05:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "refused events index"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)

    async def create_index() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl(
            "CREATE INDEX IF NOT EXISTS events_org_refused ON events (org, started_at, "
            "refusal_reason) WHERE status = 'refused'"
        )

    async def drop_index() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("DROP INDEX IF EXISTS events_org_refused")

    manager.add_raw(create_index)
    manager.add_raw_backwards(drop_index)
    return manager
