"""Piccolo's global configuration (``PICCOLO_CONF=backend.piccolo_conf``).

``DB`` starts from ``AGENTKAVACH_DATABASE_URL``; :func:`backend.db.use_engine`
replaces it when an app or a migration is pointed at another database.
"""

from __future__ import annotations

import os

from piccolo.conf.apps import AppRegistry

from backend.db import engine_for
from backend.settings import DEFAULT_SQLITE_PATH, DatabaseURL

DB = engine_for(
    DatabaseURL.parse(os.environ.get("AGENTKAVACH_DATABASE_URL", "") or DEFAULT_SQLITE_PATH)
)

APP_REGISTRY = AppRegistry(apps=["backend.piccolo_app"])
