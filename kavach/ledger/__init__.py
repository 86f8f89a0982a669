"""Ledgers hold spent and reserved amounts per budget key."""

from kavach.ledger.base import Balance, Hold, Ledger, LedgerLine, Refusal, grantable_units
from kavach.ledger.memory import MemoryLedger

__all__ = [
    "Balance",
    "Hold",
    "Ledger",
    "LedgerLine",
    "MemoryLedger",
    "Refusal",
    "grantable_units",
]
