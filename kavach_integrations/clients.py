"""Provider clients built by ``AgentKavach(provider=..., llm_key=...)``, guarded, made on first use.

>>> guard = AgentKavach(provider="openai", llm_key="sk-...", budget=Budget.daily(50))  # doctest: +SKIP
>>> guard.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello!"}])    # doctest: +SKIP
>>> await guard.acreate(model="gpt-4o", messages=[...])                                # doctest: +SKIP
>>> guard.chat.completions.create(...)   # provider-shaped paths; async twin: .acreate(...)

``llm_key`` falls back to the SDK's own environment variable (``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``, ``GOOGLE_API_KEY``/``GEMINI_API_KEY``, ``MISTRAL_API_KEY``) and the
SDK's base-URL variables (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``, ...) keep working.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kavach.errors import KavachConfigError, MissingDependencyError
from kavach_integrations._provider import wrap

if TYPE_CHECKING:
    from kavach.client import AgentKavach

PROVIDERS = ("openai", "anthropic", "google", "mistral")
_EXTRAS = {
    "openai": ("openai", "openai"),
    "anthropic": ("anthropic", "anthropic"),
    "google": ("google-genai", "google"),
    "mistral": ("mistralai", "mistral"),
}


def check_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise KavachConfigError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    return provider


def _build(provider: str, llm_key: str | None, base_url: str | None) -> tuple[Any, Any]:
    """The provider's sync and async SDK clients (the async one may be the same object)."""
    package, extra = _EXTRAS[provider]
    try:
        if provider == "openai":
            import openai

            return (
                openai.OpenAI(api_key=llm_key, base_url=base_url),
                openai.AsyncOpenAI(api_key=llm_key, base_url=base_url),
            )
        if provider == "anthropic":
            import anthropic

            return (
                anthropic.Anthropic(api_key=llm_key, base_url=base_url),
                anthropic.AsyncAnthropic(api_key=llm_key, base_url=base_url),
            )
        if provider == "google":
            from google import genai
            from google.genai import types

            options = types.HttpOptions(base_url=base_url) if base_url else None
            client = genai.Client(api_key=llm_key, http_options=options)
            return client, client.aio
        try:
            from mistralai.client import Mistral
        except ImportError:  # mistralai 1.x: the client is at the package's top level
            from mistralai import Mistral  # type: ignore[attr-defined,no-redef,unused-ignore]

        mistral_client = Mistral(
            api_key=llm_key or os.environ.get("MISTRAL_API_KEY"),
            server_url=base_url or os.environ.get("MISTRAL_SERVER_URL") or None,
        )
        return mistral_client, mistral_client
    except ImportError as exc:
        raise MissingDependencyError(package, extra) from exc


def _gemini_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``create(messages=...)`` in the chat shape, turned into ``generate_content`` arguments."""
    messages = kwargs.pop("messages", None)
    if messages is None:
        return kwargs
    contents: list[dict[str, Any]] = []
    system: list[str] = []
    for message in messages:
        role, content = message.get("role", "user"), message.get("content", "")
        if role == "system":
            system.append(str(content))
            continue
        contents.append(
            {"role": "model" if role == "assistant" else "user", "parts": [{"text": str(content)}]}
        )
    config = dict(kwargs.pop("config", None) or {})
    if system:
        config.setdefault("system_instruction", "\n".join(system))
    if "max_tokens" in kwargs:
        config.setdefault("max_output_tokens", kwargs.pop("max_tokens"))
    return {**kwargs, "contents": contents, "config": config or None}


class ProviderPath:
    """``guard.chat.completions.create(...)``: an attribute path on the guarded client.

    A method name with an ``a`` in front (``acreate``, ``agenerate_content``) calls the async
    client's method (Mistral: the ``_async`` method) and returns its awaitable.
    """

    __slots__ = ("_clients", "_names")

    def __init__(self, clients: ProviderClients, names: tuple[str, ...]) -> None:
        self._clients = clients
        self._names = names

    def __getattr__(self, name: str) -> ProviderPath:
        if name.startswith("__"):
            raise AttributeError(name)
        return ProviderPath(self._clients, (*self._names, name))

    def _resolve(self, root: Any, names: tuple[str, ...]) -> Any:
        target = root
        for name in names:
            target = getattr(target, name)
        return target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        *head, last = self._names
        clients = self._clients
        sync = self._resolve(clients.sync, tuple(head))
        if hasattr(sync, last) or not last.startswith("a"):
            return getattr(sync, last)(*args, **kwargs)
        if clients.provider == "mistral":
            return getattr(sync, f"{last[1:]}_async")(*args, **kwargs)
        return getattr(self._resolve(clients.async_, tuple(head)), last[1:])(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<ProviderPath {'.'.join(self._names)}>"


class ProviderClients:
    """The guarded SDK clients of one guard, built on first use (thread-safe)."""

    def __init__(
        self,
        guard: AgentKavach,
        provider: str,
        llm_key: str | None = None,
        base_url: str | None = None,
    ) -> None:
        self._guard = guard
        self.provider = check_provider(provider)
        self._llm_key = llm_key
        self._base_url = base_url
        self._lock = threading.Lock()
        self._pair: tuple[Any, Any] | None = None
        self._closing = False

    def _clients(self) -> tuple[Any, Any]:
        pair = self._pair
        if pair is None:
            with self._lock:
                if self._pair is None:
                    sync, async_ = _build(self.provider, self._llm_key, self._base_url)
                    wrap(sync, self._guard)  # google-genai: guards client.aio too
                    if self.provider in ("openai", "anthropic"):
                        wrap(async_, self._guard)
                    self._pair = (sync, async_)
                    if not self._closing:
                        self._closing = True
                        self._guard.add_closer(self._close, self._aclose)
                pair = self._pair
        return pair

    def _take(self) -> tuple[Any, Any] | None:
        """The clients to close; the next call builds new ones (a closed guard may be used
        again)."""
        with self._lock:
            pair, self._pair = self._pair, None
        return pair

    def _close(self, _timeout: float) -> None:
        """``guard.close()``: close the sync client's connections. An async client's need
        its event loop: ``await guard.aclose()`` closes both."""
        pair = self._take()
        if pair is None:
            return
        sync, async_ = pair
        if self.provider == "mistral":
            sync.__exit__(None, None, None)
        else:
            sync.close()

    async def _aclose(self, _timeout: float) -> None:
        pair = self._take()
        if pair is None:
            return
        sync, async_ = pair
        if self.provider == "mistral":
            sync.__exit__(None, None, None)
            await sync.__aexit__(None, None, None)
            return
        sync.close()
        if self.provider == "google":
            await async_.aclose()
        else:
            await async_.close()

    @property
    def sync(self) -> Any:
        """The guarded sync client (``OpenAI``, ``Anthropic``, ``genai.Client``, ``Mistral``)."""
        return self._clients()[0]

    @property
    def async_(self) -> Any:
        """The guarded async client (``AsyncOpenAI``, ``AsyncAnthropic``, google-genai's
        ``client.aio``; for Mistral the same client, whose async methods end in ``_async``)."""
        return self._clients()[1]

    def path(self, name: str) -> ProviderPath:
        return ProviderPath(self, (name,))

    def _default(
        self, kwargs: dict[str, Any], is_async: bool
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        sync, async_ = self._clients()
        streamed = bool(kwargs.get("stream"))
        if self.provider == "openai":
            client = async_ if is_async else sync
            return client.chat.completions.create, kwargs
        if self.provider == "anthropic":
            client = async_ if is_async else sync
            kwargs.setdefault("max_tokens", self._guard.default_max_output_tokens)
            return client.messages.create, kwargs
        if self.provider == "google":
            kwargs.pop("stream", None)
            models = async_.models if is_async else sync.models
            name = "generate_content_stream" if streamed else "generate_content"
            return getattr(models, name), _gemini_request(kwargs)
        kwargs.pop("stream", None)
        name = "stream" if streamed else "complete"
        return getattr(sync.chat, f"{name}_async" if is_async else name), kwargs

    def create(self, **kwargs: Any) -> Any:
        """One chat call in the provider's own API, guarded; returns the SDK's response."""
        method, kwargs = self._default(dict(kwargs), is_async=False)
        return method(**kwargs)

    async def acreate(self, **kwargs: Any) -> Any:
        method, kwargs = self._default(dict(kwargs), is_async=True)
        return await method(**kwargs)

    def __repr__(self) -> str:
        state = "built" if self._pair is not None else "not built yet"
        return f"<ProviderClients {self.provider} ({state})>"
