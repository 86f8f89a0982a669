"""AgentKavach(provider=..., llm_key=...): guarded SDK clients built on first use."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from kavach import AgentKavach, Budget, KavachConfigError, MissingDependencyError
from kavach._devtools.standin import StandIn

from .conftest import Events

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)


def guard_for(provider: str, events: Events, **kwargs: Any) -> AgentKavach:
    guard = AgentKavach(
        "facade", budget=Budget.daily(1), provider=provider, detect_loops=False, **kwargs
    )
    guard.add_observer(events)
    return guard


def test_openai_quickstart_with_key_and_base_url_from_the_environment(
    server: StandIn, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
    guard = guard_for("openai", events)
    response = guard.create(model="gpt-4o", messages=MSGS)
    assert response.choices[0].message.content
    assert server.last.headers["authorization"] == "Bearer sk-from-env"
    guard.chat.completions.create(model="gpt-4o", messages=MSGS)
    guard.responses.create(model="gpt-4o", input="hi")
    assert [e.status for e in events.calls] == ["ok", "ok", "ok"]


@pytest.mark.anyio
async def test_async_twins(server: StandIn, events: Events) -> None:
    guard = guard_for("openai", events, llm_key="sk-given", base_url=server.openai_url)
    await guard.acreate(model="gpt-4o", messages=MSGS)
    await guard.chat.completions.acreate(model="gpt-4o", messages=MSGS)
    stream = await guard.acreate(model="gpt-4o", messages=MSGS, stream=True)
    assert [c async for c in stream]
    assert server.last.headers["authorization"] == "Bearer sk-given"
    assert [e.status for e in events.calls] == ["ok", "ok", "ok"]
    sync, async_ = guard.clients.sync, guard.clients.async_
    await guard.aclose()  # closes the SDK clients the guard made
    assert sync.is_closed() and async_.is_closed()
    guard.create(model="gpt-4o", messages=MSGS)  # a closed guard may be used again
    assert guard.clients.sync is not sync and events.calls[-1].status == "ok"
    guard.close()
    assert guard.clients._pair is None


@pytest.mark.anyio
async def test_anthropic_google_and_mistral(server: StandIn, events: Events) -> None:
    anthropic_guard = guard_for("anthropic", events, llm_key="k", base_url=server.anthropic_url)
    anthropic_guard.create(model="claude-sonnet-4-0", messages=MSGS[1:])
    assert server.last.body["max_tokens"] == 4096  # filled in: Anthropic requires it
    await anthropic_guard.messages.acreate(
        model="claude-sonnet-4-0", max_tokens=50, messages=MSGS[1:]
    )

    google_guard = guard_for("google", events, llm_key="k", base_url=server.google_url)
    google_guard.create(model="gemini-2.0-flash", messages=MSGS, max_tokens=30)
    assert server.last.body["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert server.last.body["generationConfig"]["maxOutputTokens"] == 30
    await google_guard.models.agenerate_content(model="gemini-2.0-flash", contents="hi")
    chunks = [
        c
        async for c in await google_guard.acreate(
            model="gemini-2.0-flash", messages=MSGS, stream=True
        )
    ]
    assert chunks

    mistral_guard = guard_for("mistral", events, llm_key="k", base_url=server.base_url)
    mistral_guard.create(model="mistral-small-latest", messages=MSGS)
    await mistral_guard.acreate(model="mistral-small-latest", messages=MSGS)
    assert [(e.provider, e.status) for e in events.calls] == [
        ("anthropic", "ok"),
        ("anthropic", "ok"),
        ("google", "ok"),
        ("google", "ok"),
        ("google", "ok"),
        ("mistral", "ok"),
        ("mistral", "ok"),
    ]
    anthropic_clients = anthropic_guard.clients.sync, anthropic_guard.clients.async_
    mistral_client = mistral_guard.clients.sync
    for guard in (google_guard, anthropic_guard, mistral_guard):
        await guard.aclose()  # closes the SDK clients each guard made
    assert all(client.is_closed() for client in anthropic_clients)
    assert mistral_client.sdk_configuration.client is None
    assert mistral_client.sdk_configuration.async_client is None


def test_configuration_errors_and_no_secret_in_repr() -> None:
    with pytest.raises(KavachConfigError, match="provider must be one of"):
        AgentKavach(provider="cohere")
    with pytest.raises(KavachConfigError, match="has no provider"):
        AgentKavach().create(model="gpt-4o", messages=MSGS)
    guard = AgentKavach(provider="openai", llm_key="sk-secret-value")
    assert "sk-secret-value" not in repr(guard) + repr(guard.clients) + repr(guard._provider)
    with pytest.raises(KavachConfigError, match="cannot guard"):
        guard.wrap(object())


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mistralai", None)  # not installed, whatever its version
    monkeypatch.setitem(sys.modules, "mistralai.client", None)
    guard = AgentKavach(provider="mistral", llm_key="k")
    with pytest.raises(MissingDependencyError, match=r"agentkavach\[mistral\]"):
        guard.create(model="mistral-small-latest", messages=MSGS)


def test_importing_kavach_imports_no_provider_sdk() -> None:
    code = (
        "import sys, kavach; "
        "g = kavach.AgentKavach(provider='openai', llm_key='k'); "
        "print(sorted(m for m in ('openai', 'anthropic', 'google.genai', 'mistralai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
