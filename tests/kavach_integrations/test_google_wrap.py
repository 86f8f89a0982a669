"""Wrapping a google-genai ``Client`` guards its ``.aio`` too: wrapping both is one guard."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import types

from kavach import Budget
from kavach._devtools.standin import StandIn
from kavach_integrations._provider import unwrap

from .conftest import Events

MODEL = "gemini-2.0-flash"
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)

_open: list[genai.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def new_client(server: StandIn) -> genai.Client:
    options = types.HttpOptions(base_url=server.google_url, retry_options=None)
    c = genai.Client(api_key="k", http_options=options)
    _open.append(c)
    return c


@pytest.mark.anyio
@pytest.mark.parametrize("aio_first", [False, True])
async def test_wrapping_the_client_and_its_aio_charges_an_async_call_once(
    server: StandIn, make_guard: Any, events: Events, aio_first: bool
) -> None:
    # guard.wrap(client) guards client.aio; wrapping client.aio as well (before or after)
    # reserved and charged every async call twice.
    guard = make_guard(budget=Budget.daily(1))
    c = new_client(server)
    if aio_first:
        aio = guard.wrap(c.aio)
        guard.wrap(c)
    else:
        guard.wrap(c)
        aio = guard.wrap(c.aio)
    await aio.models.generate_content(model=MODEL, contents="hi")
    stream = await aio.models.generate_content_stream(model=MODEL, contents="hi")
    async for _ in stream:
        pass
    c.models.generate_content(model=MODEL, contents="hi")
    assert len(server.requests) == 3
    assert [e.status for e in events.calls] == ["ok", "ok", "ok"]
    assert guard.status()[0].spent == sum(e.cost_nanos for e in events.calls)
    assert guard.ledger.open_holds == 0
    await c.aio.aclose()


@pytest.mark.anyio
async def test_unwrapping_the_client_unguards_its_aio(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = guard.wrap(new_client(server))
    unwrap(c)
    await c.aio.models.generate_content(model=MODEL, contents="hi")
    assert events.calls == []
    guard.wrap(c.aio)  # guardable again on its own
    await c.aio.models.generate_content(model=MODEL, contents="hi")
    assert [e.status for e in events.calls] == ["ok"]
    await c.aio.aclose()
