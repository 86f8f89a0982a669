"""Reporting to the AgentKavach backend: events out, control (kill, resume, budgets) in."""

from kavach.reporting.api import BackendAPI, BackendConfig, BackendError
from kavach.reporting.control import ControlApplier, ControlChannel, budgets_from_backend
from kavach.reporting.sender import Reporter, ReporterStats

__all__ = [
    "BackendAPI",
    "BackendConfig",
    "BackendError",
    "ControlApplier",
    "ControlChannel",
    "Reporter",
    "ReporterStats",
    "budgets_from_backend",
]
