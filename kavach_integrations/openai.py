"""OpenAI: how to read chat completions, Responses, embeddings and image requests, usage and
streams.

``guard.wrap(OpenAI())`` / ``guard.wrap(AsyncOpenAI())`` guard ``chat.completions`` (create,
parse, stream), ``responses`` (create, stream, parse, compact), ``completions``,
``embeddings``, ``decisions`` (openai 3.x) and ``images.generate`` with a GPT image model
(``gpt-image-*``, streamed too). A ``background=True`` response answers before it runs and
reports its usage only when retrieved later: it is settled at its worst case (its input and
max output tokens, which strict mode sets) when created, as is a background stream closed
before it completed.
Responses over a WebSocket (``responses.connect()``) and Realtime sessions over one
(``realtime.connect()``) are held and settled one response at a time, as streams
(``kavach_integrations._sockets``, ``_openai_realtime``).
``audio.transcriptions`` with a model billed by the token (``gpt-4o-transcribe``) is held
for the length of the speech uploaded; ``whisper-1`` transcriptions and translations by the
second of it, and ``tts-1`` speech by the character (``kavach_integrations._openai_audio``).
Paid endpoints without a usage price (DALL·E images, image edits and variations,
``gpt-4o-mini-tts`` speech, videos, batches, fine-tuning, Assistants runs) and Realtime
sessions the guard does not see (WebRTC and SIP calls, browser client secrets, the
deprecated ``beta.realtime``) stop with the agent but are not counted: see
``AgentKavach.admit_unmetered``.
Usage maps to ``kavach.usage.Usage`` as OpenAI reports it: ``prompt_tokens`` include
``cached_tokens`` (reads) and ``cache_write_tokens``, ``completion_tokens`` include
reasoning and audio tokens.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from kavach.spec import CallSpec
from kavach.stream import Outcome
from kavach.tokens import estimate_input_tokens
from kavach.usage import Usage
from kavach_integrations._openai_audio import (
    SPEECH_UNMETERED,
    TRANSLATION_UNMETERED,
    choose_speech,
    choose_transcription,
    choose_translation,
)
from kavach_integrations._openai_audio import UNMETERED as TRANSCRIPTION_UNMETERED
from kavach_integrations._openai_realtime import REALTIME
from kavach_integrations._provider import (
    ASSUMED_SEARCHES,
    READERS,
    Body,
    Endpoint,
    PerRequest,
    StoredContext,
    TokenCounter,
    Unmetered,
    field,
    guard_request_method,
    guard_unmetered_method,
    price_variant,
    reader,
    remember,
    set_max_tokens,
    tool_signature,
)
from kavach_integrations._sockets import RequestsAsSent, SocketProtocol, guard_socket

try:
    import openai
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    from kavach.errors import MissingDependencyError

    raise MissingDependencyError("openai", "openai") from exc

if TYPE_CHECKING:
    from kavach.client import AgentKavach

PROVIDER = "openai"


def chat_usage(usage: Any, tier: Any = None) -> Usage:
    """Chat completions (and Mistral) usage: ``prompt_tokens`` already include cached ones.
    ``tier`` is the response's ``service_tier``, which decides the price (priority, flex)."""
    read = READERS.get(type(usage)) or reader(usage)
    prompt = read(usage, "prompt_tokens_details", None)
    completion = read(usage, "completion_tokens_details", None)
    read_prompt = READERS.get(type(prompt)) or reader(prompt)
    read_completion = READERS.get(type(completion)) or reader(completion)
    return Usage(
        input_tokens=read(usage, "prompt_tokens", None) or 0,
        output_tokens=read(usage, "completion_tokens", None) or 0,
        cache_read_tokens=read_prompt(prompt, "cached_tokens", None) or 0,
        cache_write_tokens=read_prompt(prompt, "cache_write_tokens", None) or 0,
        reasoning_tokens=read_completion(completion, "reasoning_tokens", None) or 0,
        input_audio_tokens=read_prompt(prompt, "audio_tokens", None) or 0,
        output_audio_tokens=read_completion(completion, "audio_tokens", None) or 0,
        price_variant=None if tier is None else price_variant("service_tier", tier),
    )


def responses_usage(usage: Any, tier: Any = None, output: Any = ()) -> Usage:
    """Responses API usage; ``output`` (the response's items) gives the web and file search
    calls, each billed apart from the tokens."""
    details = field(usage, "input_tokens_details")
    web = files = 0
    for item in output or ():
        kind = field(item, "type")
        if kind == "web_search_call":
            web += 1
        elif kind == "file_search_call":
            files += 1
    return Usage(
        web_searches=web,
        file_searches=files,
        input_tokens=field(usage, "input_tokens", 0),
        output_tokens=field(usage, "output_tokens", 0),
        cache_read_tokens=field(details, "cached_tokens", 0),
        cache_write_tokens=field(details, "cache_write_tokens", 0),
        reasoning_tokens=field(field(usage, "output_tokens_details"), "reasoning_tokens", 0),
        price_variant=None if tier is None else price_variant("service_tier", tier),
    )


def _args_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else repr(arguments)


# -- chat completions ---------------------------------------------------------------------


def read_chat(provider: str) -> Any:
    def read(body: Mapping[str, Any]) -> CallSpec:
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        n = body.get("n")  # each of n choices may run to max tokens, all billed
        return CallSpec(
            provider=provider,
            model=str(body.get("model", "")),
            messages=body.get("messages"),
            tools=body.get("tools"),
            max_output_tokens=max_tokens,
            # A spoken reply needs ``audio`` (and "audio" in ``modalities``).
            text_output=body.get("audio") is None,
            choices=n if type(n) is int and n > 1 else 1,
            price_variant=price_variant("service_tier", body.get("service_tier")),
        )

    return read


def chat_outcome(response: Any) -> Outcome:
    read = READERS.get(type(response)) or reader(response)
    tool_calls = []
    finish = []
    for choice in read(response, "choices", None) or ():
        read_choice = READERS.get(type(choice)) or reader(choice)
        if (reason := read_choice(choice, "finish_reason", None)) is not None:
            finish.append(reason if type(reason) is str else str(reason))
        message = read_choice(choice, "message", None)
        read_message = READERS.get(type(message)) or reader(message)
        for call in read_message(message, "tool_calls", None) or ():
            fn = field(call, "function")
            tool_calls.append(tool_signature(field(fn, "name", ""), field(fn, "arguments", "")))
    return Outcome(
        usage=chat_usage(read(response, "usage", None), read(response, "service_tier", None)),
        response_model=read(response, "model", None),
        finish_reasons=tuple(finish),
        tool_calls=tuple(tool_calls),
    )


class ChatMeter(TokenCounter):
    """Chat completion chunks. The usage-only last chunk is hidden unless the caller asked."""

    __slots__ = ("show_usage",)
    exact = True

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        options = body.get("stream_options")
        self.show_usage = bool(isinstance(options, Mapping) and options.get("include_usage"))

    def feed(self, chunk: Any) -> bool:
        self.received = True
        choices = chunk.choices
        usage = chunk.usage
        if usage is not None:
            # OpenAI: a last chunk with no choices; Mistral: on the finishing chunk.
            self.usage = chat_usage(usage, getattr(chunk, "service_tier", None))
            self.model = chunk.model
            self.complete = True
        if choices:
            choice = choices[0]
            delta = choice.delta
            content = delta.content
            if content and type(content) is str:  # Mistral: may be Unset() or a list
                self.output_tokens += 1
            calls = delta.tool_calls
            if calls:
                for call in calls:
                    fn = call.function
                    if fn is not None:
                        self.tool(call.index, fn.name, _args_text(fn.arguments or ""))
                        self.count_one(fn.arguments)
            if choice.finish_reason is not None:
                self.finish_reasons.append(str(choice.finish_reason))
            return False
        return usage is not None and not self.show_usage


def _ask_for_usage(body: Body) -> Body:
    options = body.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage"):
        return body
    return {**body, "stream_options": {**(options or {}), "include_usage": True}}


CHAT = Endpoint(
    operation="chat",
    read=read_chat(PROVIDER),
    outcome=chat_outcome,
    limit=set_max_tokens("max_completion_tokens", "max_tokens"),
    meter=ChatMeter,
    prepare_stream=_ask_for_usage,
)

# -- legacy completions -------------------------------------------------------------------


def _read_completion(body: Mapping[str, Any]) -> CallSpec:
    # Every prompt of a batch gets ``best_of`` completions (at least ``n``), each up to
    # max_tokens and all billed, though only ``n`` are returned.
    prompt = body.get("prompt")
    prompts = 1
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompts = len(prompt)  # texts, or token-id lists; a list of ints is one prompt
    per_prompt = max(_count(body.get("n")), _count(body.get("best_of")))
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        prompt=prompt,
        max_output_tokens=body.get("max_tokens"),
        operation="text_completion",
        choices=prompts * per_prompt,
    )


def _count(value: Any) -> int:
    return value if type(value) is int and value > 1 else 1


class CompletionMeter(TokenCounter):
    __slots__ = ("show_usage",)
    exact = True

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        self.show_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def feed(self, chunk: Any) -> bool:
        self.received = True
        if chunk.usage is not None:
            self.usage = chat_usage(chunk.usage)
            self.model = chunk.model
            self.complete = True
        if chunk.choices:
            self.count_one(chunk.choices[0].text)
            return False
        return chunk.usage is not None and not self.show_usage


COMPLETIONS = Endpoint(
    operation="text_completion",
    read=_read_completion,
    outcome=lambda r: Outcome(chat_usage(field(r, "usage")), field(r, "model")),
    limit=set_max_tokens("max_tokens"),
    meter=CompletionMeter,
    prepare_stream=_ask_for_usage,
)

# -- Responses ----------------------------------------------------------------------------


def read_response(body: Mapping[str, Any]) -> CallSpec:
    source = body.get("input")
    if isinstance(source, str):  # billed as one user message, with the chat overhead
        source = [{"role": "user", "content": source}]
    continued = _continued(body)
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        messages=source if isinstance(source, list) else None,
        system=body.get("instructions"),
        tools=body.get("tools"),
        max_output_tokens=body.get("max_output_tokens"),
        text_output=True,  # no audio replies; the image_generation tool bills apart
        price_variant=price_variant("service_tier", body.get("service_tier")),
        max_searches=_max_searches(body),
        context_tokens=_stored_context(body),
        # "continue" after one response is not the same request as after another.
        request_key=continued if any(continued) else None,
    )


# What each response this process saw answered left in its conversation (input and visible
# output), by response id and conversation id: a request that continues one is billed for
# all of it as input, so it is held for it too. Bounded: the oldest entries go first.
_CONTEXT: dict[str, int] = {}
_CONTEXT_MAX = 10_000


def _continued(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The ``previous_response_id`` and ``conversation`` id a request continues, if any."""
    previous = body.get("previous_response_id")
    conversation = body.get("conversation")
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    return (
        previous if isinstance(previous, str) and previous else None,
        conversation if isinstance(conversation, str) and conversation else None,
    )


def _stored_context(body: Mapping[str, Any]) -> int:
    """Input tokens the provider adds from ``previous_response_id`` or ``conversation``
    (0 for one this process neither saw answered nor could look up)."""
    previous, conversation = _continued(body)
    return max(
        _CONTEXT.get(previous, 0) if previous is not None else 0,
        _CONTEXT.get(conversation, 0) if conversation is not None else 0,
    )


class _Stored(NamedTuple):
    """A stored response or conversation a request continues, to look up (see below)."""

    kind: str  # "response" or "conversation"
    id: str
    model: str

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


def _unknown_context(body: Mapping[str, Any]) -> _Stored | None:
    """The ``previous_response_id`` or ``conversation`` of a request whose earlier turns this
    process has not seen answered (another worker or process made them): looked up before
    the request is held."""
    previous, conversation = _continued(body)
    if previous is not None:
        if previous in _CONTEXT:
            return None
        return _Stored("response", previous, str(body.get("model", "")))
    if conversation is not None and conversation not in _CONTEXT:
        return _Stored("conversation", conversation, str(body.get("model", "")))
    return None


def _fetch_context(client: Any, ref: _Stored) -> None:
    if ref.kind == "response":
        # response_outcome remembers a finished response's context (not a running one's).
        response_outcome(client.responses.retrieve(ref.id))
    else:
        items = client.conversations.items.list(ref.id, limit=100, order="asc")
        _remember_items(ref, list(items))


async def _afetch_context(client: Any, ref: _Stored) -> None:
    if ref.kind == "response":
        response_outcome(await client.responses.retrieve(ref.id))
    else:
        items = client.conversations.items.list(ref.id, limit=100, order="asc")
        _remember_items(ref, [item async for item in items])


def _remember_items(ref: _Stored, items: list[Any]) -> None:
    """A conversation's size, counted from its items as the guard counts a request's input
    (the items API reports no usage): every item is input to the next turn."""
    messages = [i.model_dump() if hasattr(i, "model_dump") else i for i in items]
    tokens = estimate_input_tokens(PROVIDER, ref.model or "gpt-4o", messages=messages)
    remember(_CONTEXT, ref.id, tokens, _CONTEXT_MAX)


_STORED_TURNS = StoredContext(_unknown_context, _fetch_context, _afetch_context)


def _remember_context(response: Any, usage: Usage) -> None:
    tokens = usage.input_tokens + usage.output_tokens - usage.reasoning_tokens
    conversation = field(field(response, "conversation"), "id")
    for key in (field(response, "id"), conversation):
        if isinstance(key, str):
            remember(_CONTEXT, key, tokens, _CONTEXT_MAX)


_SEARCH_TOOLS = ("web_search", "file_search")


def _max_searches(body: Mapping[str, Any]) -> int:
    """Searches a Responses request may make: ``max_tool_calls`` (which bounds every built-in
    tool call of the response) when it has a web or file search tool, else an assumed 10."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not any(
        isinstance(t, Mapping) and str(t.get("type", "")).startswith(_SEARCH_TOOLS) for t in tools
    ):
        return 0
    limit = body.get("max_tool_calls")
    return limit if type(limit) is int and limit >= 0 else ASSUMED_SEARCHES


def response_outcome(response: Any) -> Outcome:
    tool_calls = tuple(
        tool_signature(field(item, "name", ""), field(item, "arguments", ""))
        for item in field(response, "output", ())
        if field(item, "type") == "function_call"
    )
    status = field(response, "status")
    usage = responses_usage(
        field(response, "usage"), field(response, "service_tier"), field(response, "output")
    )
    if status not in _RUNNING:
        _remember_context(response, usage)
    return Outcome(
        usage=usage,
        response_model=field(response, "model"),
        finish_reasons=(str(status),) if status else (),
        tool_calls=tool_calls,
        # A background response answers "queued" and runs on, billed when it finishes.
        billed_later=status in _RUNNING,
    )


_RUNNING = ("queued", "in_progress")


class ResponsesMeter(TokenCounter):
    __slots__ = ("background", "final")
    exact = True

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        self.final: Any = None
        # A background response runs on when its stream is closed or cut, billed in full.
        self.background = body.get("background") is True

    def feed(self, event: Any) -> bool:
        self.received = True
        kind = event.type
        if kind == "response.output_text.delta" or kind == "response.function_call_arguments.delta":
            self.count_one(event.delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            final = self.final = event.response  # a dict over a WebSocket (_sockets)
            self.model = field(final, "model")
            usage = field(final, "usage")
            if usage is not None:
                self.usage = responses_usage(usage, field(final, "service_tier"))
                self.complete = True
        return False

    def outcome(self, estimated_input_tokens: int) -> Outcome:
        if self.final is not None and self.complete:
            return response_outcome(self.final)
        outcome = super().outcome(estimated_input_tokens)
        if self.background:
            return dataclasses.replace(outcome, billed_later=True)
        return outcome


_set_max_output_tokens = set_max_tokens("max_output_tokens")


def _limit_response(body: Body, tokens: int) -> Body:
    """Strict mode: max_output_tokens, and ``max_tool_calls`` for a request with a search
    tool and none, at the searches it is held for (the provider stops there too)."""
    body = _set_max_output_tokens(body, tokens)
    if body.get("max_tool_calls") is None and _max_searches(body):
        body = {**body, "max_tool_calls": ASSUMED_SEARCHES}
    return body


RESPONSES = Endpoint(
    operation="chat",
    read=read_response,
    outcome=response_outcome,
    limit=_limit_response,
    meter=ResponsesMeter,
    context=_STORED_TURNS,
)


def _read_compaction(body: Mapping[str, Any]) -> CallSpec:
    # ``responses.compact`` runs the model over a conversation and bills its usage, but takes
    # no output limit: it is held at the default max output tokens, in strict mode too.
    return dataclasses.replace(read_response(body), max_output_tokens=None, fixed_output=True)


COMPACTION = Endpoint(
    operation="chat", read=_read_compaction, outcome=response_outcome, context=_STORED_TURNS
)

# -- decisions ----------------------------------------------------------------------------
# ``decisions.create`` (openai 3.x) answers classification and scoring questions about an
# input, billed by tokens like a response. It takes no output limit: it is held at the
# default max output tokens, in strict mode too. The questions are input.


def _read_decision(body: Mapping[str, Any]) -> CallSpec:
    source = body.get("input")
    if isinstance(source, str):
        source = [{"role": "user", "content": source}]
    questions = body.get("questions")
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        messages=source if isinstance(source, list) else None,
        prompt=json.dumps(questions, default=str) if questions else None,
        text_output=True,
        fixed_output=True,
    )


def decision_outcome(response: Any) -> Outcome:
    return Outcome(
        usage=responses_usage(field(response, "usage")), response_model=field(response, "model")
    )


DECISIONS = Endpoint(operation="chat", read=_read_decision, outcome=decision_outcome)

# -- embeddings ---------------------------------------------------------------------------


def _read_embeddings(body: Mapping[str, Any]) -> CallSpec:
    # Texts, or token ids: a list of ints (one input) or of lists (several), each id a token.
    source = body.get("input")
    prompt = source if isinstance(source, str | list) else None
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        prompt = "\n".join(source)
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        prompt=prompt,
        max_output_tokens=0,
        operation="embeddings",
    )


EMBEDDINGS = Endpoint(
    operation="embeddings",
    read=_read_embeddings,
    outcome=lambda r: Outcome(
        Usage(input_tokens=field(field(r, "usage"), "prompt_tokens", 0)), field(r, "model")
    ),
)

# -- images -------------------------------------------------------------------------------

# Output tokens of one gpt-image-1 image by quality and size, as OpenAI documents them (its
# image generation guide); gpt-image-1-mini and gpt-image-1.5 bill the same counts.
_IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
_SIZE_PIXELS = {"1024x1024": 1024 * 1024, "1024x1536": 1024 * 1536, "1536x1024": 1536 * 1024}
_PARTIAL_IMAGE_TOKENS = 100  # each streamed partial image, per image
_IMAGE_GENERATION = Unmetered(PROVIDER, "image_generation")


def image_tokens(quality: Any, size: Any) -> int:
    """The most output tokens one image of ``quality`` and ``size`` can be billed for.

    ``"auto"``, absent or unknown values may be any of the documented ones: the dearest.

    >>> image_tokens("low", "1024x1024"), image_tokens("auto", None), image_tokens(None, "1024x1024")
    (272, 6240, 4160)
    """
    tables = [_IMAGE_TOKENS[quality]] if quality in _IMAGE_TOKENS else _IMAGE_TOKENS.values()
    if isinstance(size, str) and all(size in table for table in tables):
        return max(table[size] for table in tables)
    largest = max(max(table.values()) for table in tables)
    pixels = _pixels(size)
    if pixels is None:  # "auto", absent or unreadable: the largest documented size
        return largest
    # A size the table lacks (later models allow larger images, and tokens grow with the
    # area): the dearest documented tokens per pixel, scaled to it, and never less than the
    # largest documented image. Conservative, so a hard budget still holds.
    scaled = max(
        -(-tokens * pixels // _SIZE_PIXELS[known])
        for table in tables
        for known, tokens in table.items()
    )
    return max(largest, scaled)


def _pixels(size: Any) -> int | None:
    width, _, height = size.partition("x") if isinstance(size, str) else ("", "", "")
    if width.isdigit() and height.isdigit():
        return int(width) * int(height)
    return None


def _is_token_priced(model: str) -> bool:
    # DALL·E (a request without a model gets dall-e-2) is billed per image, not by tokens.
    return model.startswith("gpt-image-")


def _image_generation_tokens(body: Mapping[str, Any]) -> int:
    """Worst-case output tokens of one image this request makes, partial images included."""
    partials = body.get("partial_images")
    per_image = image_tokens(body.get("quality"), body.get("size"))
    if type(partials) is int and partials > 0:
        per_image += partials * _PARTIAL_IMAGE_TOKENS
    return per_image


def _read_image_generation(body: Mapping[str, Any]) -> CallSpec:
    # n images, each billed its image tokens; the request has no limit the guard could lower.
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model", "")),
        prompt=body.get("prompt"),
        max_output_tokens=_image_generation_tokens(body),
        operation="image_generation",
        choices=_count(body.get("n")),
        fixed_output=True,
    )


def image_usage(usage: Any) -> Usage:
    """GPT image usage: output tokens are image tokens, unless the split says some are text."""
    output = field(usage, "output_tokens", 0)
    output_details = field(usage, "output_tokens_details")
    text_output = field(output_details, "text_tokens", 0)
    return Usage(
        input_tokens=field(usage, "input_tokens", 0),
        output_tokens=output,
        input_image_tokens=field(field(usage, "input_tokens_details"), "image_tokens", 0),
        output_image_tokens=field(output_details, "image_tokens", output - text_output),
    )


def _image_outcome(response: Any) -> Outcome:
    usage = field(response, "usage")
    if usage is not None:
        return Outcome(image_usage(usage))
    # No usage reported (a proxy, an older API version): the images were made and billed, so
    # settle at the documented tokens of the quality and size the response names (the worst
    # when it names none), for every image returned; the input is the reserved estimate.
    images = max(1, len(field(response, "data", ())))
    output = images * image_tokens(field(response, "quality"), field(response, "size"))
    return Outcome(Usage(output_tokens=output, output_image_tokens=output))


class ImageMeter(TokenCounter):
    """``image_generation.*`` events: partial images, then each image's completed event with
    its usage. A stream that ends before every image completed settles the missing ones at
    their worst case: they may have been made, and billed."""

    __slots__ = ("completed", "images", "per_image")
    exact = True

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        self.images = _count(body.get("n"))
        self.per_image = _image_generation_tokens(body)
        self.completed = 0

    def feed(self, event: Any) -> bool:
        self.received = True
        # Output is counted when an image completes, made and billed: nothing left to cut.
        if event.type == "image_generation.completed":
            reported = field(event, "usage")
            if reported is not None:
                usage = image_usage(reported)
            else:
                usage = Usage(output_tokens=self.per_image, output_image_tokens=self.per_image)
            self.usage = usage if self.usage is None else self.usage + usage
            self.completed += 1
            self.complete = self.completed >= self.images
        return False

    def outcome(self, estimated_input_tokens: int) -> Outcome:
        missing = (self.images - self.completed) * self.per_image
        usage = Usage(output_tokens=missing, output_image_tokens=missing)
        if self.usage is not None:
            usage += self.usage
        if not usage.input_tokens:  # nothing reported it: the prompt was billed all the same
            usage = dataclasses.replace(usage, input_tokens=estimated_input_tokens)
        return Outcome(usage)


IMAGE_GENERATION = Endpoint(
    operation="image_generation",
    read=_read_image_generation,
    outcome=_image_outcome,
    meter=ImageMeter,
    estimate_unreported_input=True,  # a response without usage: the prompt was billed
)


def _choose_image_generation(body: Mapping[str, Any], files: Any) -> Endpoint | Unmetered:
    model = body.get("model")
    if isinstance(model, str) and _is_token_priced(model):
        return IMAGE_GENERATION
    return _IMAGE_GENERATION


_AGENT_RUN = Unmetered(PROVIDER, "agent_run")
_FINE_TUNING = Unmetered(PROVIDER, "fine_tuning")
_REALTIME = Unmetered(PROVIDER, "realtime_session")
_ROUTES: dict[str, Endpoint | Unmetered | PerRequest] = {
    "/chat/completions": CHAT,
    "/responses": RESPONSES,
    "/responses/compact": COMPACTION,
    "/decisions": DECISIONS,
    "/embeddings": EMBEDDINGS,
    "/completions": COMPLETIONS,
    "/images/generations": PerRequest(_choose_image_generation, _IMAGE_GENERATION),
    # gpt-4o-transcribe and its kin, held for the speech uploaded; whisper-1 by the second.
    "/audio/transcriptions": PerRequest(choose_transcription, TRANSCRIPTION_UNMETERED),
    # Paid, but priced per image, second or job rather than by reported token usage:
    # they stop with the agent, and their cost is not counted (a warning says so). Image
    # edits with a GPT image model bill tokens too, but their input images come as a
    # multipart upload the guard cannot count before sending (a large image costs thousands
    # of input tokens): a guess would either refuse affordable edits or pass ones that break
    # the budget, so edits stay unmetered, and said to be. Variations are DALL·E 2 only.
    "/images/edits": Unmetered(PROVIDER, "image_edit"),
    "/images/variations": Unmetered(PROVIDER, "image_variation"),
    # tts-1 by the character; gpt-4o-mini-tts, billed by tokens it does not report: unmetered.
    "/audio/speech": PerRequest(choose_speech, SPEECH_UNMETERED),
    "/audio/translations": PerRequest(choose_translation, TRANSLATION_UNMETERED),
    "/videos": Unmetered(PROVIDER, "video_generation"),
    "/videos/edits": Unmetered(PROVIDER, "video_generation"),
    "/videos/extensions": Unmetered(PROVIDER, "video_generation"),
    # A key for a browser's Realtime session (speech to speech, transcription, translation),
    # a session made for one, a WebRTC call started in one, a SIP call taken into one
    # (Realtime or Live), a Live WebRTC session or a stored one forked onto a new
    # connection: billed sessions.
    "/client_secrets": _REALTIME,
    "/realtime/sessions": _REALTIME,
    "/realtime/transcription_sessions": _REALTIME,
    "/realtime/calls": _REALTIME,  # an SDP offer answered
    "/accept": _REALTIME,  # /realtime/calls/{id}/accept
    "/live/sessions": _REALTIME,
    "/fork": _REALTIME,  # /live/sessions/{id}/fork
    "/chatkit/sessions": Unmetered(PROVIDER, "chatkit_session"),
    # Managed agents (beta): an automation invoked sets the agent to work at OpenAI, billed
    # there (sessions and their events: see endpoint_for).
    "/invocations": _AGENT_RUN,
    # Code Interpreter containers are billed per container session.
    "/containers": Unmetered(PROVIDER, "container"),
    "/graders/run": Unmetered(PROVIDER, "grader_run"),  # a model grader runs a model
    "/remix": Unmetered(PROVIDER, "video_generation"),
    "/batches": Unmetered(PROVIDER, "batch"),
    "/fine_tuning/jobs": _FINE_TUNING,
    "/runs": Unmetered(PROVIDER, "run"),  # Assistants thread runs, eval runs
    "/submit_tool_outputs": Unmetered(PROVIDER, "run"),
}


def endpoint_for(method: str, path: str) -> Endpoint | Unmetered | PerRequest | None:
    """The billable endpoint at ``path`` (Azure deployment prefixes included), or None."""
    if method.lower() != "post":
        return None
    for suffix, endpoint in _ROUTES.items():
        if path.endswith(suffix):
            return endpoint
    if "/agents/" in path and (
        path.endswith(("/agents/sessions", "/resume"))
        or (path.endswith("/events") and "/agents/sessions/" in path)
    ):
        return _AGENT_RUN  # a session started (with its input), an event, an automation resumed
    if path.endswith("/resume") and "/fine_tuning/jobs/" in path:
        return _FINE_TUNING  # a paused job trains on, billed
    return None


def _successor(response: Mapping[str, Any]) -> dict[str, Any]:
    """The request a response the server started itself amounts to (after steering, it
    continues the previous response with the same settings): read from that response."""
    return {name: response[name] for name in _SUCCESSOR_FIELDS if response.get(name) is not None}


_SUCCESSOR_FIELDS = (
    "model",
    "instructions",
    "tools",
    "max_output_tokens",
    "max_tool_calls",
    "previous_response_id",
    "conversation",
)

# Responses over ``responses.connect()``: each ``response.create`` event is held before it
# is sent and settled from the events that answer it (kavach_integrations._sockets).
RESPONSES_SOCKET = SocketProtocol(
    provider=PROVIDER,
    endpoint=RESPONSES,
    request="response.create",
    started="response.created",
    finished=("response.completed", "response.incomplete", "response.failed"),
    error="error",
    state=lambda connect_kwargs: RequestsAsSent(_successor),
)
_RESPONSE_SOCKETS = (("responses",), ("beta", "responses"))


def _owner(client: Any, path: tuple[str, ...]) -> Any:
    owner = client
    for name in path:  # absent from some SDK versions
        owner = getattr(owner, name, None)
    return owner


def instrument(client: Any, guard: AgentKavach) -> None:
    is_async = isinstance(client, openai.AsyncOpenAI)
    guard_request_method(client, guard, endpoint_for, is_async=is_async)
    for path in _RESPONSE_SOCKETS:
        if (owner := _owner(client, path)) is not None and hasattr(owner, "connect"):
            guard_socket(client, owner, guard, RESPONSES_SOCKET, is_async=is_async)
    # Realtime sessions over a WebSocket: every response held and settled
    # (kavach_integrations._openai_realtime). Sessions the guard does not see (WebRTC, SIP)
    # are opened through the ``_REALTIME`` routes, and the deprecated ``beta.realtime``
    # opens its socket where the guard cannot reach it: stopped with the agent, not counted.
    if (owner := _owner(client, ("realtime",))) is not None and hasattr(owner, "connect"):
        guard_socket(client, owner, guard, REALTIME, is_async=is_async)
    if (owner := _owner(client, ("beta", "realtime"))) is not None:
        guard_unmetered_method(client, owner, "connect", guard, _REALTIME)
