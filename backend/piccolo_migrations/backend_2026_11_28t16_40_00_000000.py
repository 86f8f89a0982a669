"""When the Stripe event last applied to a subscription was created.

Stripe does not deliver events in order; a late, older event must not undo a newer one
(a retried ``updated`` arriving after ``deleted`` would re-activate a canceled plan).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-28T16:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "subscription stripe event time"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)
    manager.add_column(
        table_class_name="Subscription",
        tablename="subscriptions",
        column_name="stripe_event_at",
        db_column_name="stripe_event_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )
    return manager
