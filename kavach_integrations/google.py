"""Google (google-genai): how to read ``generate_content`` and ``embed_content`` requests,
usage and stream chunks.

``guard.wrap(genai.Client())`` guards ``client.models.generate_content``,
``generate_content_stream``, ``embed_content`` and ``decisions.create`` (google-genai 3.x), and
their ``client.aio`` twins. ``count_tokens`` and model listing pass untouched; image and video
generation, batches, tuning, File Search indexing, the Interactions API
(``interactions.create``) and Live sessions (``aio.live.connect``, and the ephemeral tokens that
open them) stop with the agent but are not counted (see ``AgentKavach.admit_unmetered``).
Gemini's ``prompt_token_count`` includes cached tokens; thinking tokens
(``thoughts_token_count``) are output beside ``candidates_token_count``.

With automatic function calling (Python callables as tools, up to ``maximum_remote_calls``
requests) and automatic continuation, one ``generate_content`` sends several requests, each
billed. The guard sits where the SDK sends each one (``_generate_content`` and
``_generate_content_stream``): every request is reserved, sent and settled on its own, with
its own worst case and its own usage, and the budget can stop the loop between two requests.
A refusal or a cut stops the whole ``generate_content_stream``: the SDK's continuation loop,
which resumes a failed stream from its last checkpoint, neither retries nor resumes it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from kavach.errors import KavachError
from kavach.spec import CallSpec
from kavach.stream import Outcome, StreamSettlement
from kavach.usage import PriceVariant, Usage
from kavach_integrations._provider import (
    _GUARD_ATTR,
    ASSUMED_SEARCHES,
    Body,
    Endpoint,
    StoredContext,
    TokenCounter,
    Unmetered,
    attach_aiterator,
    field,
    guard_method,
    guard_unmetered_method,
    patch,
    price_variant,
    remember,
    tool_signature,
)

try:
    from google import genai
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from kavach.errors import MissingDependencyError

    raise MissingDependencyError("google-genai", "google") from exc

if TYPE_CHECKING:
    from kavach.client import AgentKavach

PROVIDER = "google"


def _by_modality(details: Any) -> dict[str, int]:
    """``[{modality: IMAGE, token_count: 1290}, ...]`` as ``{"IMAGE": 1290}``."""
    counts: dict[str, int] = {}
    for detail in details or ():
        modality = str(field(detail, "modality", "")).upper().rsplit(".", 1)[-1]
        counts[modality] = counts.get(modality, 0) + (field(detail, "token_count", 0) or 0)
    return counts


def gemini_usage(meta: Any) -> Usage:
    """Usage metadata, with the input's audio, images and video and the reply's audio and
    images apart: image models bill the images they make at ten times their text rate."""
    prompt = _by_modality(field(meta, "prompt_tokens_details"))
    for modality, count in _by_modality(field(meta, "tool_use_prompt_tokens_details")).items():
        prompt[modality] = prompt.get(modality, 0) + count
    reply = _by_modality(field(meta, "candidates_tokens_details"))
    thoughts = field(meta, "thoughts_token_count", 0)
    return Usage(
        input_tokens=field(meta, "prompt_token_count", 0)
        + field(meta, "tool_use_prompt_token_count", 0),
        output_tokens=field(meta, "candidates_token_count", 0) + thoughts,
        cache_read_tokens=field(meta, "cached_content_token_count", 0),
        reasoning_tokens=thoughts,
        input_audio_tokens=prompt.get("AUDIO", 0),
        input_image_tokens=prompt.get("IMAGE", 0),
        input_video_tokens=prompt.get("VIDEO", 0),
        output_audio_tokens=reply.get("AUDIO", 0),
        output_image_tokens=reply.get("IMAGE", 0),
        price_variant=price_variant("service_tier", field(meta, "service_tier")),
    )


def _text_reply(config: Any) -> bool:
    """Whether the request keeps the reply to text (``response_modalities=["TEXT"]``)."""
    modalities = field(config, "response_modalities")
    return bool(modalities) and all(str(m).upper().rsplit(".", 1)[-1] == "TEXT" for m in modalities)


def _plain(item: Any) -> Any:
    dump = getattr(item, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else item


def _model_name(model: str) -> str:
    # "models/gemini-2.0-flash" and Vertex resource names price as the bare model id.
    return model.rsplit("/", 1)[-1]


def _contents(contents: Any) -> tuple[str | list[str] | None, list[Any] | None]:
    """``contents`` as plain text (a string or a list of strings) or as Gemini contents."""
    if isinstance(contents, str):
        return contents, None
    if isinstance(contents, list):
        if all(isinstance(c, str) for c in contents):
            return list(contents), None
        return None, [_plain(c) for c in contents]
    if contents is not None:
        return None, [_plain(contents)]
    return None, None


def _candidates(config: Any) -> int:
    """How many candidates the request asks for: each may run to max output tokens."""
    count = field(config, "candidate_count")
    if count is None and isinstance(config, Mapping):
        count = config.get("candidateCount")  # a dict config may use the API's spelling
    return count if type(count) is int and count > 1 else 1


@functools.lru_cache(maxsize=256)
def _declaration(function: Callable[..., Any]) -> Any:
    """A Python function given as a tool, as the SDK declares it in the request (name,
    docstring and the parameters' JSON schema, all billed input), once per function."""
    declare: Callable[..., Any] = genai.types.FunctionDeclaration.from_callable_with_api_option
    # google-genai 2.x on declares by JSON schema; 1.x has no such option and declares its way
    options = {"use_json_schema": True} if _takes_json_schema(declare) else {}
    try:
        declaration = declare(callable=function, **options)
    except Exception:  # the SDK refuses it too, when it sends the request
        return {"name": function.__name__, "description": inspect.getdoc(function) or ""}
    return {"function_declarations": [declaration.model_dump(mode="json", exclude_none=True)]}


@functools.cache
def _takes_json_schema(declare: Callable[..., Any]) -> bool:
    return "use_json_schema" in inspect.signature(declare).parameters


def _tool(tool: Any) -> Any:
    if inspect.isfunction(tool) or inspect.ismethod(tool):
        return _declaration(tool)
    return _plain(tool)


def _read(body: Mapping[str, Any]) -> CallSpec:
    config = body.get("config")
    prompt, messages = _contents(body.get("contents"))
    tools = field(config, "tools")
    model = _model_name(str(body.get("model", "")))
    return CallSpec(
        provider=PROVIDER,
        model=model,
        messages=messages,
        prompt=prompt,
        system=_plain(field(config, "system_instruction")),
        tools=[_tool(t) for t in tools] if tools else None,
        max_output_tokens=field(config, "max_output_tokens"),
        text_output=_text_reply(config),
        choices=_candidates(config),
        price_variant=_tier(config),
        context_tokens=_cached_tokens(field(config, "cached_content")),
        max_searches=_max_searches(tools, model) if tools else 0,
    )


# Explicit context caches created, read or updated through a wrapped client: name -> the
# tokens it holds, which Gemini adds to the input of every request that names the cache.
_CACHED: dict[str, int] = {}
_CACHED_MAX = 10_000


def _cached_tokens(name: Any) -> int:
    """Tokens of the context cache a request names (0 for one this process never saw: a
    cache made elsewhere is counted when the answer reports it)."""
    return _CACHED.get(name, 0) if isinstance(name, str) else 0


def _unknown_cache(body: Mapping[str, Any]) -> str | None:
    """The context cache a request names that this process has not seen made or read (by
    another worker): looked up before the request is held."""
    name = field(body.get("config"), "cached_content")
    return name if isinstance(name, str) and name and name not in _CACHED else None


# The wrapped client's caches.get is tracked (_track_caches): reading the cache remembers it.
def _fetch_cache(client: Any, name: str) -> None:
    _caches(client, is_async=False).get(name=name)


async def _afetch_cache(client: Any, name: str) -> None:
    await _caches(client, is_async=True).get(name=name)


def _caches(client: Any, is_async: bool) -> Any:
    """The caches API of ``client``: its async one for an async call (a ``Client``'s
    ``.aio`` is guarded with it, so an async call may come with the sync client)."""
    if is_async and isinstance(client, genai.Client):
        return client.aio.caches
    return client.caches


_CACHE_CONTEXT = StoredContext(_unknown_cache, _fetch_cache, _afetch_cache)


def _remember_cache(cache: Any) -> None:
    name = field(cache, "name")
    tokens = field(field(cache, "usage_metadata"), "total_token_count")
    if isinstance(name, str) and type(tokens) is int:
        remember(_CACHED, name, tokens, _CACHED_MAX)


def _track_caches(client: Any, caches: Any, is_async: bool) -> None:
    """Learn the size of the caches made or read through ``caches``."""
    for name in ("create", "get", "update"):
        original = getattr(caches, name, None)
        if original is not None:
            track = _atracked if is_async else _tracked
            patch(client, caches, name, functools.wraps(original)(track(original)))


def _tracked(original: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        cache = original(*args, **kwargs)
        _remember_cache(cache)
        return cache

    return call


def _atracked(original: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        cache = await original(*args, **kwargs)
        _remember_cache(cache)
        return cache

    return call


def _tier(config: Any) -> PriceVariant:
    """``service_tier`` (flex, priority: each priced apart); unset, the standard tier."""
    tier = field(config, "service_tier")
    if tier is None and isinstance(config, Mapping):
        tier = config.get("serviceTier")  # a dict config may use the API's spelling
    return price_variant("service_tier", tier) or ()


def _limit(body: Body, tokens: int) -> Body:
    config = body.get("config")
    current = field(config, "max_output_tokens")
    value = min(int(current), tokens) if current is not None else tokens
    if config is None:
        new_config: Any = {"max_output_tokens": value}
    elif isinstance(config, Mapping):
        new_config = {**config, "max_output_tokens": value}
    else:
        new_config = config.model_copy(update={"max_output_tokens": value})
    return {**body, "config": new_config}


def _per_prompt(model: Any) -> bool:
    """Gemini 1 and 2 bill Grounding with Google Search per grounded prompt; later models
    per search query."""
    name = str(model or "").removeprefix("models/")
    return name.startswith(("gemini-1", "gemini-2"))


def _searches(candidates: Any, model: Any) -> int:
    """Billed Google Search grounding: the queries the answer ran (one, for the models
    billed per grounded prompt)."""
    queries = 0
    for candidate in candidates or ():
        grounding = field(candidate, "grounding_metadata")
        queries += len(field(grounding, "web_search_queries", ()) or ())
    return min(queries, 1) if _per_prompt(model) else queries


def _max_searches(tools: Any, model: str) -> int:
    """Searches a request with a Google Search tool may be billed for (assumed, as for the
    other providers' search tools, at most ten a call on the models billed per query)."""
    grounded = any(
        field(t, "google_search") is not None or field(t, "google_search_retrieval") is not None
        for t in tools or ()
    )
    if not grounded:
        return 0
    return 1 if _per_prompt(model) else ASSUMED_SEARCHES


def _outcome(response: Any) -> Outcome:
    finish: list[str] = []
    tool_calls: list[str] = []
    for candidate in field(response, "candidates", ()):
        if (reason := field(candidate, "finish_reason")) is not None:
            finish.append(str(getattr(reason, "value", reason)))
        for part in field(field(candidate, "content"), "parts", ()):
            call = field(part, "function_call")
            if call is not None:
                tool_calls.append(tool_signature(field(call, "name", ""), field(call, "args", {})))
    usage = gemini_usage(field(response, "usage_metadata"))
    searches = _searches(field(response, "candidates", ()), field(response, "model_version"))
    if searches:
        usage = dataclasses.replace(usage, web_searches=searches)
    return Outcome(
        usage=usage,
        response_model=field(response, "model_version"),
        finish_reasons=tuple(finish),
        tool_calls=tuple(tool_calls),
    )


class GeminiMeter(TokenCounter):
    """Stream chunks are whole ``GenerateContentResponse`` values; the last has full usage."""

    __slots__ = ("calls", "searches")

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        self.calls = 0
        self.searches = 0

    def feed(self, chunk: Any) -> bool:
        self.received = True
        for candidate in chunk.candidates or ():
            content = candidate.content
            for part in (content.parts if content is not None else None) or ():
                if part.text:
                    self.count(part.text)
                call = part.function_call
                if call is not None:
                    self.tool(self.calls, call.name, json.dumps(call.args or {}))
                    self.calls += 1
            if candidate.finish_reason is not None:
                reason = candidate.finish_reason
                self.finish_reasons.append(str(getattr(reason, "value", reason)))
                self.complete = True
        if chunk.candidates:  # grounding comes with the last chunks; never sum repeats
            self.searches = max(self.searches, _searches(chunk.candidates, chunk.model_version))
        meta = chunk.usage_metadata
        if meta is not None:
            self.usage = gemini_usage(meta)
            self.model = chunk.model_version
            # Gemini's running count, when it sends one, replaces the estimate from text.
            if self.usage.output_tokens:
                self.output_tokens = self.usage.output_tokens
        usage = self.usage
        if self.searches and usage is not None and usage.web_searches != self.searches:
            self.usage = dataclasses.replace(usage, web_searches=self.searches)
        self.complete = self.complete and self.usage is not None
        return False


GENERATE = Endpoint("chat", _read, _outcome, _limit, GeminiMeter, context=_CACHE_CONTEXT)


def _read_embeddings(body: Mapping[str, Any]) -> CallSpec:
    # Text is counted as a prompt; parts (images, files for multimodal embedding models) are
    # counted the way generate_content counts them.
    prompt, messages = _contents(body.get("contents"))
    model = _model_name(str(body.get("model", "")))
    return CallSpec(
        provider=PROVIDER,
        model=model,
        messages=messages,
        prompt=prompt,
        max_output_tokens=0,
        operation="embeddings",
    )


def _embeddings_outcome(response: Any) -> Outcome:
    tokens = field(field(response, "usage_metadata"), "prompt_token_count", 0)
    if not tokens:  # Vertex AI: a token count per embedding
        counts = (
            field(field(e, "statistics"), "token_count", 0)
            for e in field(response, "embeddings", ())
        )
        tokens = math.ceil(sum(counts))
    # The Gemini API's batchEmbedContents may report no usage at all; 0 here settles the call
    # at the reserved input estimate (EMBEDDINGS.estimate_unreported_input), never at zero.
    return Outcome(Usage(input_tokens=tokens))


EMBEDDINGS = Endpoint(
    operation="embeddings",
    read=_read_embeddings,
    outcome=_embeddings_outcome,
    estimate_unreported_input=True,
)


# Paid per image, second of video or job, not by reported token usage; or billed by tokens
# but not through one request a hold can bound:
# - interactions.create follows continuation tokens itself (several requests, each billing the
#   input again), runs server-side agents and background interactions, and continues stored
#   conversations (previous_interaction_id) whose input the guard never sees;
# - a Live session (websockets) is billed as it runs, for as long as it stays open: the guard
#   can refuse to open one (or to join a live interaction), not meter it, and refuses to hand
#   out an ephemeral token that opens one from a browser (as OpenAI's Realtime client secrets);
# - importing or uploading a file into a File Search store is billed for embedding it.
# (Agent trigger runs are not guarded: reading ``client.triggers`` makes the SDK warn that it
# is experimental, which wrapping must not do.)
_UNMETERED = {
    "interactions": {"create": "interaction", "connect": "live_session"},
    "interactions.auth_tokens": {"create": "live_session"},
    "file_search_stores": {
        "import_file": "file_search_indexing",
        "upload_to_file_search_store": "file_search_indexing",
    },
    "live": {"connect": "live_session"},
    "auth_tokens": {"create": "live_session"},
    "live.music": {"connect": "music_generation"},
    "models": {
        "generate_images": "image_generation",
        "edit_image": "image_edit",
        "upscale_image": "image_upscale",
        "recontext_image": "image_edit",
        "segment_image": "image_segmentation",
        "generate_videos": "video_generation",
    },
    "batches": {"create": "batch", "create_embeddings": "batch"},
    "tunings": {"tune": "fine_tuning"},
}


# -- decisions ----------------------------------------------------------------------------
# ``decisions.create`` (google-genai 3.x) answers questions about an input, billed by tokens
# and reported in the Interactions API's usage form. It takes no output limit: it is held at
# the default max output tokens. Input and questions are counted as the JSON sent (images
# in the input as their base64 text: more than Gemini bills, never less).


def _read_decision(body: Mapping[str, Any]) -> CallSpec:
    payload = {"input": body.get("input"), "questions": body.get("questions")}
    return CallSpec(
        provider=PROVIDER,
        model=_model_name(str(body.get("model", ""))),
        prompt=json.dumps(payload, default=_as_json),
        text_output=True,
        fixed_output=True,
    )


def _as_json(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else str(value)


def _decision_outcome(response: Any) -> Outcome:
    # Thinking is reported apart from the output: google-genai's own Interactions tests give
    # total_tokens = total_input_tokens + total_output_tokens + total_thought_tokens. Both
    # are billed at the output rate, so output is their sum (each counted once).
    usage = field(response, "usage")
    thoughts = field(usage, "total_thought_tokens", 0)
    return Outcome(
        usage=Usage(
            input_tokens=field(usage, "total_input_tokens", 0)
            + field(usage, "total_tool_use_tokens", 0),
            output_tokens=field(usage, "total_output_tokens", 0) + thoughts,
            cache_read_tokens=field(usage, "total_cached_tokens", 0),
            reasoning_tokens=thoughts,
        ),
        response_model=field(response, "model"),
    )


DECISIONS = Endpoint(operation="chat", read=_read_decision, outcome=_decision_outcome)


def _guard_decisions(client: Any, root: Any, guard: AgentKavach, is_async: bool) -> None:
    decisions = getattr(root, "decisions", None)  # google-genai 3.x
    if decisions is not None:
        guard_method(client, decisions, "create", guard, DECISIONS, is_async=is_async)


def _guard_unmetered(client: Any, root: Any, guard: AgentKavach) -> None:
    for resource, methods in _UNMETERED.items():
        owner = root
        for name in resource.split("."):
            owner = getattr(owner, name, None)  # None: not in this SDK version (or sync client)
        if owner is not None:
            for name, operation in methods.items():
                unmetered = Unmetered(PROVIDER, operation)
                guard_unmetered_method(client, owner, name, guard, unmetered)


def _request_methods(models: Any) -> tuple[str, str]:
    """The methods that send one ``generateContent`` / ``streamGenerateContent`` request.

    The public methods loop over them (automatic function calling, continuation); an SDK
    without them is guarded at the public methods, one reservation a call.
    """
    if hasattr(models, "_generate_content") and hasattr(models, "_generate_content_stream"):
        return "_generate_content", "_generate_content_stream"
    return "generate_content", "generate_content_stream"  # pragma: no cover - older SDKs


# The metered request streams opened while one public async stream is being read. google-genai's
# aio generate_content_stream yields from generators that never close the ones they iterate,
# so closing the stream it returns leaves the request stream (and its hold) to the event
# loop's async generator finalizer, some time later.
_OPENED: ContextVar[list[AsyncIterator[Any]] | None] = ContextVar("kavach_gemini_streams")


def _attach_tracked(result: AsyncIterator[Any], settlement: StreamSettlement) -> Any:
    stream = attach_aiterator(result, settlement)
    opened = _OPENED.get(None)
    if opened is not None:
        opened.append(stream)
    return stream


async def _closing(outer: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``outer``'s chunks; closing it closes the metered request streams it opened, which
    settles them at once (each settles once: a closed stream's later close does nothing)."""
    opened: list[AsyncIterator[Any]] = []
    try:
        while True:
            # Set only while outer runs (in the caller's context), never across a yield.
            token = _OPENED.set(opened)
            try:
                chunk = await anext(outer)
            except StopAsyncIteration:
                return
            finally:
                _OPENED.reset(token)
            yield chunk
    finally:
        try:
            for stream in opened:
                await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await outer.aclose()  # type: ignore[attr-defined]


def _close_request_streams(client: Any, models: Any) -> None:
    """Make the public async ``generate_content_stream``'s ``aclose()`` settle at once."""
    original = getattr(models, "generate_content_stream", None)
    if original is None:  # pragma: no cover - older SDKs
        return

    async def generate_content_stream(**kwargs: Any) -> AsyncIterator[Any]:
        return _closing(await original(**kwargs))

    patch(
        client,
        models,
        "generate_content_stream",
        functools.wraps(original)(generate_content_stream),
    )


class _Stopped(BaseException):
    """A guard's error raised by one streamed request, on its way out of google-genai's
    continuation loop. The loop catches every ``Exception`` a request raises and resumes from
    the stream's last checkpoint (or retries, three times): a cut stream went on in a new
    request, and a new reservation, each time it was cut, and a refusal was retried."""

    def __init__(self, error: KavachError) -> None:
        super().__init__(error)
        self.error = error


def _stopping(stream: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from stream
    except KavachError as exc:
        raise _Stopped(exc) from None


async def _astopping(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for chunk in stream:
            yield chunk
    except KavachError as exc:
        raise _Stopped(exc) from None
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def _stopped(stream: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from stream
    except _Stopped as stop:
        raise stop.error from None


async def _astopped(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for chunk in stream:
            yield chunk
    except _Stopped as stop:
        raise stop.error from None
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def _stop_continuation(client: Any, models: Any, *, is_async: bool) -> None:
    """Carry the guard's errors of the (guarded) ``_generate_content_stream`` past the
    continuation loop that calls it, to the caller, as they were raised."""
    loop: Callable[..., Any] | None = getattr(
        models, "_generate_content_stream_with_continuation", None
    )
    one: Callable[..., Any] | None = models.__dict__.get("_generate_content_stream")
    if loop is None or one is None:  # pragma: no cover - SDKs without continuation
        return
    guarded, original_loop = one, loop
    if is_async:

        async def arequest(**kwargs: Any) -> AsyncIterator[Any]:
            try:
                stream = await guarded(**kwargs)
            except KavachError as exc:
                raise _Stopped(exc) from None
            return _astopping(stream)

        def aloop(**kwargs: Any) -> AsyncIterator[Any]:
            return _astopped(original_loop(**kwargs))

        patch(client, models, "_generate_content_stream", functools.wraps(guarded)(arequest))
        patch(client, models, "_generate_content_stream_with_continuation", aloop)
    else:

        def request(**kwargs: Any) -> Iterator[Any]:
            try:
                stream = guarded(**kwargs)
            except KavachError as exc:
                raise _Stopped(exc) from None
            return _stopping(stream)

        def sync_loop(**kwargs: Any) -> Iterator[Any]:
            return _stopped(original_loop(**kwargs))

        patch(client, models, "_generate_content_stream", functools.wraps(guarded)(request))
        patch(client, models, "_generate_content_stream_with_continuation", sync_loop)


def _guard_async(client: Any, root: Any, guard: AgentKavach) -> None:
    """Guard an async client's APIs: a ``Client``'s ``.aio``, or an ``AsyncClient`` wrapped
    on its own."""
    _guard_unmetered(client, root, guard)
    _guard_decisions(client, root, guard, is_async=True)
    _track_caches(client, root.caches, is_async=True)
    models = root.models
    one, one_stream = _request_methods(models)
    guard_method(client, models, one, guard, GENERATE, is_async=True)
    guard_method(client, models, "embed_content", guard, EMBEDDINGS, is_async=True)
    guard_method(
        client,
        models,
        one_stream,
        guard,
        GENERATE,
        streamed=True,
        is_async=True,
        attach=_attach_tracked,
    )
    if one_stream != "generate_content_stream":
        _close_request_streams(client, models)
    _stop_continuation(client, models, is_async=True)


def instrument(client: Any, guard: AgentKavach) -> None:
    if not isinstance(client, genai.Client):  # an AsyncClient (client.aio) wrapped on its own
        _guard_async(client, client, guard)
        return
    models = client.models
    _guard_unmetered(client, client, guard)
    _guard_decisions(client, client, guard, is_async=False)
    _track_caches(client, client.caches, is_async=False)
    one, one_stream = _request_methods(models)
    guard_method(client, models, one, guard, GENERATE)
    guard_method(client, models, one_stream, guard, GENERATE, streamed=True)
    guard_method(client, models, "embed_content", guard, EMBEDDINGS)
    _stop_continuation(client, models, is_async=False)
    aio = client.aio
    # client.aio is guarded with the client, once: wrapping it as well (before or after)
    # guarded its calls twice, two reservations and two charges for one request.
    if aio.__dict__.get(_GUARD_ATTR) is None:
        _guard_async(client, aio, guard)
        patch(client, aio, _GUARD_ATTR, guard)
