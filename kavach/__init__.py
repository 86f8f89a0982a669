"""AgentKavach: hard budget limits and guardrails for LLM calls that hold under concurrency.

>>> from kavach import AgentKavach, Budget
>>> guard = AgentKavach(agent_name="research-bot", budget=Budget.daily(50))
"""

from kavach._money import NANOS_PER_DOLLAR, fmt_usd, to_nanos
from kavach.budget import Budget, Period
from kavach.client import AgentKavach, BudgetStatus, current_run_id, wrap
from kavach.errors import (
    AgentKilledError,
    BudgetExceededError,
    CallLimitError,
    CostPerCallError,
    GuardrailError,
    KavachConfigError,
    KavachError,
    LedgerUnavailableError,
    LoopDetectedError,
    MissingDependencyError,
    RuntimeLimitError,
    TokenLimitError,
    UnknownModelPriceError,
    UnmeteredCallError,
    VelocityError,
)
from kavach.events import CallEvent, GuardObserver, GuardrailTrip, NullObserver, ThresholdCrossing
from kavach.ledger import Ledger, MemoryLedger
from kavach.pricing import ModelPrice
from kavach.reservation import Reservation
from kavach.spec import CallSpec
from kavach.usage import Usage

__version__ = "0.1.0"

__all__ = [
    "NANOS_PER_DOLLAR",
    "AgentKavach",
    "AgentKilledError",
    "Budget",
    "BudgetExceededError",
    "BudgetStatus",
    "CallEvent",
    "CallLimitError",
    "CallSpec",
    "CostPerCallError",
    "GuardObserver",
    "GuardrailError",
    "GuardrailTrip",
    "KavachConfigError",
    "KavachError",
    "Ledger",
    "LedgerUnavailableError",
    "LoopDetectedError",
    "MemoryLedger",
    "MissingDependencyError",
    "ModelPrice",
    "NullObserver",
    "Period",
    "Reservation",
    "RuntimeLimitError",
    "ThresholdCrossing",
    "TokenLimitError",
    "UnknownModelPriceError",
    "UnmeteredCallError",
    "Usage",
    "VelocityError",
    "__version__",
    "current_run_id",
    "fmt_usd",
    "to_nanos",
    "wrap",
]
