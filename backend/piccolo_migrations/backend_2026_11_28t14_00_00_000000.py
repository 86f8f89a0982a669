"""Operations tables: alert channels (secrets encrypted), alert deliveries (one row per
org, budget, period, threshold and channel decides which replica sends), Stripe events
(webhook idempotency). Plain SQL so the same migration runs on SQLite and PostgreSQL.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-28T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "alert channels, alert deliveries, stripe events"

_ORG = "org INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE ON UPDATE CASCADE"
_CREATED = "created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP"


def _statements(serial: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS alert_channels (id {serial}, {_ORG}, "
        "name VARCHAR(100) NOT NULL DEFAULT '', kind VARCHAR(16) NOT NULL DEFAULT '', "
        "config JSON NOT NULL DEFAULT '{}', secret TEXT NULL DEFAULT NULL, "
        f"enabled BOOLEAN NOT NULL DEFAULT TRUE, {_CREATED})",
        f"CREATE TABLE IF NOT EXISTS alert_deliveries (id {serial}, {_ORG}, "
        "dedup_key VARCHAR(400) NOT NULL DEFAULT '', "
        "status VARCHAR(16) NOT NULL DEFAULT 'claimed', error TEXT NULL DEFAULT NULL, "
        f"{_CREATED})",
        f"CREATE TABLE IF NOT EXISTS stripe_events (id {serial}, "
        "event_id VARCHAR(255) NOT NULL DEFAULT '' UNIQUE, "
        f"type VARCHAR(100) NOT NULL DEFAULT '', {_CREATED})",
        "CREATE UNIQUE INDEX IF NOT EXISTS alert_channels_org_name ON alert_channels (org, name)",
        "CREATE UNIQUE INDEX IF NOT EXISTS alert_deliveries_key"
        " ON alert_deliveries (org, dedup_key)",
        "CREATE INDEX IF NOT EXISTS alert_deliveries_created ON alert_deliveries (created_at)",
        "CREATE INDEX IF NOT EXISTS subscriptions_customer ON subscriptions (stripe_customer_id)",
    ]


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)

    async def create():
        engine = engine_finder()
        serial = (
            "SERIAL PRIMARY KEY" if engine.engine_type == "postgres" else ("INTEGER PRIMARY KEY")
        )
        for statement in _statements(serial):
            await engine.run_ddl(statement)

    async def drop():
        engine = engine_finder()
        for table in ("alert_channels", "alert_deliveries", "stripe_events"):
            await engine.run_ddl(f"DROP TABLE IF EXISTS {table}")
        for index in ("subscriptions_customer",):
            await engine.run_ddl(f"DROP INDEX IF EXISTS {index}")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager
