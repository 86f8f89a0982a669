"""Sessions ended by log-out (``revoked_sessions``, by the token's ``jti``) and events
received per organization and UTC month (``usage_monthly``, the plan's monthly event
limit). Their unique indexes, and the backfill of this month's usage, are in the next
migration."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import (
    BigInt,
    Date,
    ForeignKey,
    Serial,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.date import DateNow
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table


class Organization(Table, tablename="organizations", schema=None):
    id = Serial(
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name="id",
        secret=False,
    )


ID = "2026-11-28T18:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "revoked sessions, monthly usage"


def _params(**given: Any) -> dict[str, Any]:
    return {
        "null": False,
        "primary_key": False,
        "unique": False,
        "index": False,
        "index_method": IndexMethod.btree,
        "choices": None,
        "db_column_name": None,
        "secret": False,
        **given,
    }


TABLES: list[tuple[str, str, list[tuple[str, type[Any], dict[str, Any]]]]] = [
    (
        "RevokedSession",
        "revoked_sessions",
        [
            ("jti", Varchar, _params(length=64, default="")),
            ("expires_at", Timestamptz, _params(default=TimestamptzNow())),
        ],
    ),
    (
        "UsageMonthly",
        "usage_monthly",
        [
            (
                "org",
                ForeignKey,
                _params(
                    references=Organization,
                    on_delete=OnDelete.cascade,
                    on_update=OnUpdate.cascade,
                    target_column=None,
                    null=True,
                ),
            ),
            ("month", Date, _params(default=DateNow())),
            ("events", BigInt, _params(default=0)),
        ],
    ),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)
    for class_name, tablename, columns in TABLES:
        manager.add_table(class_name=class_name, tablename=tablename, schema=None, columns=None)
        for name, column_class, params in columns:
            manager.add_column(
                table_class_name=class_name,
                tablename=tablename,
                column_name=name,
                db_column_name=name,
                column_class_name=column_class.__name__,
                column_class=column_class,
                params=params,
                schema=None,
            )
    return manager
