"""A Responses request that continues a stored conversation is held for all of its input.

With ``previous_response_id`` (or ``conversation``) OpenAI adds the earlier turns to the
input and bills them; counted from the request alone, a 20,000-token conversation looked
like a 10-token call.
"""

from __future__ import annotations

from typing import Any

import pytest

from kavach import Budget, BudgetExceededError
from kavach._devtools.standin import Reply, StandIn
from kavach_integrations import openai as adapter

from .conftest import guarded_openai


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_continued_conversation_is_refused_when_its_context_does_not_fit(
    server: StandIn, make_guard: Any, stream: bool
) -> None:
    guard = make_guard(budget=Budget.daily(0.06))
    client = guarded_openai(server, guard)
    # gpt-4o, $2.50 input and $10 output per million: $0.055 for the first turn.
    server.script(Reply(input_tokens=20_000, output_tokens=500))
    first = client.responses.create(
        model="gpt-4o", input="Summarise this report", max_output_tokens=500, stream=stream
    )
    if stream:
        first = [e for e in first if e.type == "response.completed"][0].response  # type: ignore[union-attr]
    assert guard.status()[0].spent == 20_000 * 2500 + 500 * 10_000
    # The next turn carries those 20,500 tokens as input ($0.051): $0.005 is left.
    with pytest.raises(BudgetExceededError):
        client.responses.create(
            model="gpt-4o", input="ok", previous_response_id=first.id, max_output_tokens=50
        )
    assert len(server.requests) == 1
    # A conversation this process never saw answered is counted from the request alone.
    server.script(Reply(input_tokens=10, output_tokens=5))
    client.responses.create(
        model="gpt-4o", input="ok", previous_response_id="resp_elsewhere", max_output_tokens=50
    )
    assert len(server.requests) == 2


def test_conversations_and_responses_are_remembered_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(adapter, "_CONTEXT", {})
    monkeypatch.setattr(adapter, "_CONTEXT_MAX", 3)
    usage = {
        "input_tokens": 900,
        "output_tokens": 120,
        "output_tokens_details": {"reasoning_tokens": 20},
    }
    response = {
        "id": "resp_1",
        "status": "completed",
        "usage": usage,
        "conversation": {"id": "conv_1"},
    }
    adapter.response_outcome(response)
    # Reasoning is not carried into the next turn's input; the visible output is.
    assert adapter._stored_context({"previous_response_id": "resp_1"}) == 1000
    assert adapter._stored_context({"conversation": "conv_1"}) == 1000
    assert adapter._stored_context({"conversation": {"id": "conv_1"}}) == 1000
    for n in range(2, 5):
        adapter.response_outcome({**response, "id": f"resp_{n}", "conversation": None})
    assert len(adapter._CONTEXT) == 3
    assert adapter._stored_context({"previous_response_id": "resp_1"}) == 0  # the oldest went
    assert adapter._stored_context({"previous_response_id": "resp_4"}) == 1000
