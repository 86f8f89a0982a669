"""Indexes of the operations tables, in plain SQL so they run on SQLite and PostgreSQL.

The alert worker's ``INSERT ... ON CONFLICT (org, dedup_key) DO NOTHING`` relies on the
unique one. Its own migration, because Piccolo runs raw steps before a migration's tables.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-28T14:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "operations indexes"

INDEXES = [
    "CREATE UNIQUE INDEX IF NOT EXISTS alert_channels_org_name ON alert_channels (org, name)",
    "CREATE UNIQUE INDEX IF NOT EXISTS alert_deliveries_key ON alert_deliveries (org, dedup_key)",
    "CREATE INDEX IF NOT EXISTS alert_deliveries_created ON alert_deliveries (created_at)",
    "CREATE INDEX IF NOT EXISTS subscriptions_customer ON subscriptions (stripe_customer_id)",
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)

    async def create_indexes() -> None:
        engine = engine_finder()
        assert engine is not None
        for statement in INDEXES:
            await engine.run_ddl(statement)

    async def drop_indexes() -> None:
        engine = engine_finder()
        assert engine is not None
        for statement in INDEXES:
            name = statement.split(" INDEX IF NOT EXISTS ", 1)[1].split(" ", 1)[0]
            await engine.run_ddl(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_indexes)
    manager.add_raw_backwards(drop_indexes)
    return manager
