"""Litestar dependencies shared by the handlers."""

from __future__ import annotations

from typing import Annotated

from litestar.di import Provide
from litestar.params import PathParameter

from backend.auth import any_principal, key_principal, user_principal

USER = {"user": Provide(user_principal)}
KEY = {"key": Provide(key_principal)}
ANY = {"principal": Provide(any_principal)}

# Path parameters, bounded so an absurd id is a 400/404 and never reaches the database.
ObjectId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
AgentNamePath = Annotated[str, PathParameter(min_length=1, max_length=200)]
