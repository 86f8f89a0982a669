"""The kill channel: a rule that stops the agent (its kill switch) at a threshold.

It runs in the observer, on the settle that crossed the threshold, not in the background:
a stop that waited in a queue would let more calls through. ``guard.kill`` only flips a flag
under a lock (and runs ``on_kill`` once), so this adds nothing measurable to that call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kavach.alerts.secret import Secret


@dataclass(frozen=True, slots=True)
class KillChannel:
    name: str = "kill"
    timeout: float = 0.0
    kind: ClassVar[str] = "kill"

    def secrets(self) -> tuple[Secret | None, ...]:
        return ()

    def target(self) -> str:
        return "the guard's kill switch"
