from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from kavach import AgentKavach, CallEvent, CallSpec, ModelPrice, NullObserver, ThresholdCrossing

# $1 per million tokens in and out: 1,000 nano-dollars a token, easy arithmetic.
PRICES = {"test-model": ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0)}


def spec(
    *,
    input_tokens: int = 1000,
    max_output: int | None = 1000,
    run_id: str | None = None,
    content: str = "hello",
) -> CallSpec:
    return CallSpec(
        provider="openai",
        model="test-model",
        messages=[{"role": "user", "content": content}],
        max_output_tokens=max_output,
        input_tokens=input_tokens,
        run_id=run_id,
    )


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.calls: list[CallEvent] = []
        self.crossings: list[ThresholdCrossing] = []
        self.kills: list[str] = []
        self.resumes: list[str] = []

    def on_call(self, event: CallEvent) -> None:
        self.calls.append(event)

    def on_threshold(self, crossing: ThresholdCrossing) -> None:
        self.crossings.append(crossing)

    def on_kill(self, agent: str, reason: str) -> None:
        self.kills.append(reason)

    def on_resume(self, agent: str) -> None:
        self.resumes.append(agent)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def make_guard() -> Callable[..., AgentKavach]:
    def make(**kwargs: Any) -> AgentKavach:
        kwargs.setdefault("prices", PRICES)
        kwargs.setdefault("agent_name", "bot")
        return AgentKavach(**kwargs)

    return make


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
