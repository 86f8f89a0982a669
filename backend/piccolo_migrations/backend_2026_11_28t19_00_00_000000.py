"""The organization's control version, bumped by every org-wide budget change.

An SDK can subscribe to the control channel before its agent has an ``agents`` row; its
version is the organization's, so an org-wide budget change is a new version for it too.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-28T19:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "organization control version"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)
    manager.add_column(
        table_class_name="Organization",
        tablename="organizations",
        column_name="control_version",
        db_column_name="control_version",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
            "null": False,
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
