"""Python functions given as tools are declared in the request, and billed as its input."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import types

from kavach import AgentKavach, Budget, BudgetExceededError
from kavach._devtools.standin import StandIn

from .conftest import Events

MODEL = "gemini-2.0-flash"  # $0.10 input, $0.40 output per million tokens

_open: list[genai.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def client(server: StandIn, guard: AgentKavach) -> genai.Client:
    options = types.HttpOptions(base_url=server.google_url, retry_options=None)
    c = guard.wrap(genai.Client(api_key="k", http_options=options))
    _open.append(c)
    return c


def search_the_archive(query: str, year: int) -> str:
    return "nothing found"


# A long docstring, sent in the request as the function's description: ~5,000 tokens.
search_the_archive.__doc__ = "Searches the archive of every report. " * 700

NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


def test_a_function_tool_is_counted_as_the_declaration_the_sdk_sends(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    # The declaration alone costs about $0.0005 of input, more than the $0.0003 budget: the
    # call is refused before it is sent. The function was counted as its repr (a few
    # tokens), so the call went out and spent past the limit in strict mode.
    guard = make_guard(budget=Budget.daily(0.0003), mode="strict")
    c = client(server, guard)
    config = types.GenerateContentConfig(
        tools=[search_the_archive], automatic_function_calling=NO_AFC
    )
    with pytest.raises(BudgetExceededError):
        c.models.generate_content(model=MODEL, contents="Any reports from 1990?", config=config)
    assert server.requests == []
    assert [e.status for e in events.calls] == ["refused"]


# How the SDK declares a function tool it is given: by JSON schema from google-genai 2.x on.
_AS_THE_SDK_DECLARES = (
    {"use_json_schema": True}
    if "use_json_schema"
    in inspect.signature(types.FunctionDeclaration.from_callable_with_api_option).parameters
    else {}
)


def test_a_function_tool_and_its_declaration_hold_the_same(
    server: StandIn, make_guard: Any, events: Events
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c = client(server, guard)
    declared = types.Tool(
        function_declarations=[
            types.FunctionDeclaration.from_callable_with_api_option(
                callable=search_the_archive, **_AS_THE_SDK_DECLARES
            )
        ]
    )
    for tool in (search_the_archive, declared):
        config = types.GenerateContentConfig(
            tools=[tool], automatic_function_calling=NO_AFC, max_output_tokens=10
        )
        c.models.generate_content(model=MODEL, contents="Any reports from 1990?", config=config)
    by_function, by_declaration = (e.reserved_nanos for e in events.calls)
    assert by_function == by_declaration > 4000 * 100  # over 4,000 input tokens held
