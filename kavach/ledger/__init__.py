"""Ledgers hold spent and reserved amounts per budget key."""

from kavach.ledger.base import (
    Balance,
    Hold,
    HoldReclaimed,
    Ledger,
    LedgerLine,
    Refusal,
    grantable_units,
)
from kavach.ledger.memory import MemoryLedger

__all__ = [
    "Balance",
    "Hold",
    "HoldReclaimed",
    "Ledger",
    "LedgerLine",
    "MemoryLedger",
    "Refusal",
    "grantable_units",
]
