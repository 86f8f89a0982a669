"""Litestar dependencies shared by the handlers."""

from __future__ import annotations

from litestar.di import Provide

from backend.auth import any_principal, key_principal, user_principal

USER = {"user": Provide(user_principal)}
KEY = {"key": Provide(key_principal)}
ANY = {"principal": Provide(any_principal)}
