"""Litestar dependencies shared by the handlers."""

from __future__ import annotations

from typing import Annotated

from litestar.di import Provide
from litestar.params import PathParameter

from backend.auth import any_principal, key_principal, user_principal
from backend.tables import MAX_ID

USER = {"user": Provide(user_principal)}
KEY = {"key": Provide(key_principal)}
ANY = {"principal": Provide(any_principal)}

# Path parameters, bounded so an id no row can have (ids are int32 on PostgreSQL) is a
# 400, like 0 is, and never reaches the database.
ObjectId = Annotated[int, PathParameter(ge=1, le=MAX_ID)]
AgentNamePath = Annotated[str, PathParameter(min_length=1, max_length=200)]
