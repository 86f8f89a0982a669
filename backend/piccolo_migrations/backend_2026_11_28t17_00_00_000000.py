"""PagerDuty incidents the alert worker opened, so it can resolve them when the budget's
period resets, the agent is resumed or the budget is deleted. The partial unique index
(one open incident per org, channel and dedup key) is in the next migration."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import (
    ForeignKey,
    Integer,
    Serial,
    Timestamptz,
    Varchar,
)
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


ID = "2026-11-28T17:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "pagerduty incidents"


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


COLUMNS: list[tuple[str, type[Any], dict[str, Any]]] = [
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
    ("channel", Integer, _params(default=0)),
    ("dedup_key", Varchar, _params(length=255, default="")),
    ("budget", Integer, _params(default=0)),
    ("agent", Integer, _params(default=None, null=True)),
    ("period_id", Varchar, _params(length=16, default="")),
    ("subject", Varchar, _params(length=200, default="")),
    ("opened_at", Timestamptz, _params(default=TimestamptzNow())),
    ("resolved_at", Timestamptz, _params(default=None, null=True)),
    ("resolve_reason", Varchar, _params(length=200, default=None, null=True)),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)
    manager.add_table(
        class_name="PagerDutyIncident",
        tablename="pagerduty_incidents",
        schema=None,
        columns=None,
    )
    for name, column_class, params in COLUMNS:
        manager.add_column(
            table_class_name="PagerDutyIncident",
            tablename="pagerduty_incidents",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params=params,
            schema=None,
        )
    return manager
