"""A Responses request that continues a stored conversation is held for all of its input.

With ``previous_response_id`` (or ``conversation``) OpenAI adds the earlier turns to the
input and bills them; counted from the request alone, a 20,000-token conversation looked
like a 10-token call.
"""

from __future__ import annotations

from typing import Any

import pytest

from kavach import Budget, BudgetExceededError, LoopDetectedError
from kavach._devtools.standin import Reply, StandIn
from kavach_integrations import openai as adapter

from .conftest import guarded_openai, opened, spent


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


def test_a_response_this_process_never_saw_is_looked_up_once_before_the_call_is_held(
    server: StandIn, make_guard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Turn one ran in another worker: 20,000 tokens in, 500 out, as the provider stored it.
    server.script(Reply(input_tokens=20_000, output_tokens=500))
    elsewhere = guarded_openai(server, make_guard(budget=Budget.daily(1)))
    first = elsewhere.responses.create(model="gpt-4o", input="Summarise", max_output_tokens=500)
    monkeypatch.setattr(adapter, "_CONTEXT", {})  # this process knows nothing of it
    guard = make_guard(budget=Budget.daily(0.03))
    client = guarded_openai(server, guard)
    # Turn two carries 20,500 tokens of input ($0.051): more than the $0.03 this agent has.
    with pytest.raises(BudgetExceededError):
        client.responses.create(
            model="gpt-4o", input="ok", previous_response_id=first.id, max_output_tokens=50
        )
    lookup = server.requests[1]
    assert (lookup.method, lookup.path) == ("GET", f"/v1/responses/{first.id}")
    assert len(server.requests) == 2  # the turn itself was never sent
    assert spent(guard) == 0 and guard.status()[0].reserved == 0
    # Once looked up it is known: a richer agent's next turn holds it without asking again.
    richer = make_guard(budget=Budget.daily(1))
    server.script(Reply(input_tokens=20_510, output_tokens=5))
    guarded_openai(server, richer).responses.create(
        model="gpt-4o", input="ok", previous_response_id=first.id, max_output_tokens=50
    )
    assert [r.method for r in server.requests[2:]] == ["POST"]
    assert spent(richer) == 20_510 * 2500 + 5 * 10_000


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_conversation_made_elsewhere_is_counted_from_its_items_before_the_call_is_held(
    server: StandIn, make_guard: Any, monkeypatch: pytest.MonkeyPatch, is_async: bool
) -> None:
    import asyncio

    import openai

    # Another worker started the conversation with a long document (~20,000 tokens).
    maker = opened(openai.OpenAI(base_url=server.openai_url, api_key="sk-t", max_retries=0))
    report = " ".join(f"figure{n}" for n in range(10_000))
    conversation = maker.conversations.create(items=[{"role": "user", "content": report}])
    monkeypatch.setattr(adapter, "_CONTEXT", {})
    guard = make_guard(budget=Budget.daily(0.03))  # $0.05 of input at gpt-4o's $2.50/M
    turn = {"model": "gpt-4o", "input": "ok", "conversation": conversation.id}

    async def aturn() -> Any:
        raw = openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-t", max_retries=0)
        try:
            return await guard.wrap(raw).responses.create(**turn, max_output_tokens=50)
        finally:
            await raw.close()

    with pytest.raises(BudgetExceededError):
        if is_async:
            asyncio.run(aturn())
        else:
            guarded_openai(server, guard).responses.create(**turn, max_output_tokens=50)
    assert [(r.method, r.path) for r in server.requests[1:]] == [
        ("GET", f"/v1/conversations/{conversation.id}/items")
    ]
    assert adapter._stored_context(turn) >= 20_000
    assert guard.ledger.open_holds == 0
    # A turn that fits joins the conversation, as OpenAI's do: its input and its answer.
    guarded_openai(server, make_guard(budget=Budget.daily(1))).responses.create(**turn)
    kinds = [(item.type, item.role) for item in maker.conversations.items.list(conversation.id)]
    assert kinds == [("message", "user"), ("message", "user"), ("message", "assistant")]


def test_a_response_that_cannot_be_looked_up_leaves_the_request_to_the_provider(
    server: StandIn, make_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # OpenAI answers 404 for an id it does not have, and refuses the turn that names it; a
    # failed lookup is logged and the request held for what it says itself.
    guard = make_guard(budget=Budget.daily(1))
    client = guarded_openai(server, guard)
    server.script(Reply(input_tokens=10, output_tokens=5))
    client.responses.create(
        model="gpt-4o", input="ok", previous_response_id="resp_elsewhere", max_output_tokens=50
    )
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/responses/resp_elsewhere"),
        ("POST", "/v1/responses"),
    ]
    assert (
        "could not look up response resp_elsewhere" in caplog.text
        and "NotFoundError" in caplog.text
    )
    assert spent(guard) == 10 * 2500 + 5 * 10_000


@pytest.mark.anyio
async def test_an_async_client_looks_the_response_up_too(
    server: StandIn, make_guard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai

    server.script(Reply(input_tokens=20_000, output_tokens=500))
    raw = openai.AsyncOpenAI(base_url=server.openai_url, api_key="sk-t", max_retries=0)
    try:
        first = await raw.responses.create(model="gpt-4o", input="Summarise")
        monkeypatch.setattr(adapter, "_CONTEXT", {})
        client = make_guard(budget=Budget.daily(0.03)).wrap(raw.copy())
        with pytest.raises(BudgetExceededError):
            await client.responses.create(
                model="gpt-4o", input="ok", previous_response_id=first.id, max_output_tokens=50
            )
    finally:
        await raw.close()
    assert [(r.method, r.path) for r in server.requests[1:]] == [
        ("GET", f"/v1/responses/{first.id}")
    ]


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


@pytest.mark.anyio
async def test_a_call_cancelled_while_its_context_is_looked_up_holds_nothing(
    make_guard: Any,
) -> None:
    import asyncio
    import gc
    import warnings

    import httpx
    import openai

    never = asyncio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        await never.wait()  # the lookup never answers
        raise AssertionError("unreachable")

    guard = make_guard(budget=Budget.daily(1))
    raw = openai.AsyncOpenAI(
        api_key="sk-t",
        base_url="http://provider.test/v1",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handle)),
        max_retries=0,
    )
    client = guard.wrap(raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                client.responses.create(
                    model="gpt-4o", input="ok", previous_response_id="resp_slow"
                ),
                0.2,
            )
        gc.collect()
    await raw.close()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert guard.ledger.open_holds == 0 and guard.status()[0].spent == 0


def test_the_same_words_continuing_different_turns_are_not_a_loop(
    server: StandIn, make_guard: Any
) -> None:
    # "continue", six times, each after the response before: six turns of one conversation.
    guard = make_guard(budget=Budget.daily(1), detect_loops=True, loop_threshold=3)
    client = guarded_openai(server, guard)
    previous = None
    for _ in range(6):
        kwargs: dict[str, Any] = {} if previous is None else {"previous_response_id": previous}
        answer = client.responses.create(
            model="gpt-4o", input=[{"role": "user", "content": "continue"}], **kwargs
        )
        previous = answer.id
    assert len(server.requests) == 6
    # The same turn asked for again and again is a loop.
    for _ in range(2):
        client.responses.create(model="gpt-4o", input="continue", previous_response_id=previous)
    with pytest.raises(LoopDetectedError):
        client.responses.create(model="gpt-4o", input="continue", previous_response_id=previous)
    assert len(server.requests) == 8
