"""Composite and lookup indexes, in plain SQL so they run on SQLite and PostgreSQL.

The ingest path's INSERT ... ON CONFLICT relies on the unique ones. They live in
their own migration because Piccolo runs raw steps before a migration's tables.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-28T13:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "indexes"


INDEXES = [
    'CREATE UNIQUE INDEX IF NOT EXISTS memberships_user_org ON memberships ("user", org)',
    "CREATE UNIQUE INDEX IF NOT EXISTS agents_org_name ON agents (org, name)",
    "CREATE UNIQUE INDEX IF NOT EXISTS runs_org_agent_key ON runs (org, agent, run_key)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_org_idempotency ON events (org, idempotency_key)",
    "CREATE INDEX IF NOT EXISTS events_org_agent_started ON events (org, agent, started_at)",
    "CREATE INDEX IF NOT EXISTS events_org_started ON events (org, started_at)",
    "CREATE INDEX IF NOT EXISTS events_run ON events (run)",
    "CREATE UNIQUE INDEX IF NOT EXISTS spend_hourly_key"
    " ON spend_hourly (org, agent, model, bucket)",
    "CREATE INDEX IF NOT EXISTS spend_hourly_org_bucket ON spend_hourly (org, bucket)",
    "CREATE UNIQUE INDEX IF NOT EXISTS spend_daily_key ON spend_daily (org, agent, model, day)",
    "CREATE INDEX IF NOT EXISTS spend_daily_org_day ON spend_daily (org, day)",
    "CREATE INDEX IF NOT EXISTS budgets_org_agent ON budgets (org, agent)",
    "CREATE INDEX IF NOT EXISTS alert_events_org_created ON alert_events (org, created_at)",
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
