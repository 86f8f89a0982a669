"""OpenAI Realtime sessions over a WebSocket (``realtime.connect()``): every response held
before it runs and settled at the usage its ``response.done`` reports.

A Realtime session is a conversation the server keeps. Each response takes all of it as
input (text and speech, the earlier replies included) and is billed for the usage its
``response.done`` reports, speech at the audio rates. A response starts when the client
sends ``response.create`` or, with voice activity detection (the default), when the server
hears the user stop speaking; the socket (``kavach_integrations._sockets``) holds the first
before it is sent and the second when it starts, closing the socket when the budget cannot
pay for it.

The hold is the worst case of the next response, from the events the session has seen:

- input: the conversation as the last response left it (its input and output tokens, the
  speech among them held at the audio input rate), the speech and text added since (speech
  at ``AUDIO_TOKENS_PER_SECOND``), and the instructions and tools;
- output: the response's or the session's max output tokens (the guard's default when
  ``"inf"``), at the audio output rate unless the response is text only. Strict mode sets
  the max output tokens of a ``response.create`` it holds; a response the server starts
  itself runs to the session's.

Output is metered as it streams (speech by its bytes), so a response that runs past its hold
is cut.

Transcribing the user's speech (the session's ``audio.input.transcription``) is billed apart,
by its own model, for each turn of speech the input buffer commits. Each is held when the
server says the buffer was committed (``input_audio_buffer.committed``, by the client or by
voice activity detection), for the speech appended since the last commit and a transcript of
up to ``TRANSCRIPT_TOKENS_PER_AUDIO_TOKEN`` tokens for each of its audio tokens
(``kavach_integrations._openai_audio``), and settled at
the usage its ``conversation.item.input_audio_transcription.completed`` reports; a failed one
is given back. A model billed by the second of speech (``whisper-1``) is held for the
seconds committed and settled at the seconds its usage reports. A model the guard has no
price for is let through, stopped with the agent and said not to be counted; with
``unmetered="refuse"``, the ``session.update`` that turns it on is refused before it is sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kavach.spec import CallSpec
from kavach.stream import Outcome
from kavach.tokens import count_text_tokens
from kavach.usage import Usage
from kavach_integrations._openai_audio import (
    AUDIO_TOKENS_PER_SECOND,
    billed_seconds,
    is_priced_by_the_second,
    reports_tokens,
    transcript_bound,
    transcription_spec,
    transcription_usage,
    unit_spec,
)
from kavach_integrations._provider import Body, Endpoint, TokenCounter, field, tool_signature
from kavach_integrations._sockets import Aside, Event, SocketProtocol

PROVIDER = "openai"

_BYTES_PER_SECOND = {"pcm": 48_000, "g711": 8_000}  # 24 kHz 16-bit PCM; 8 kHz G.711


def _audio_tokens(audio: Any, bytes_per_second: int) -> int:
    """Tokens of base64 ``audio``, rounded up."""
    if not isinstance(audio, str) or not audio:
        return 0
    size = len(audio) * 3 // 4
    return -(-size * AUDIO_TOKENS_PER_SECOND // bytes_per_second)


def _format_rate(value: Any) -> int | None:
    """Bytes a second of an audio format (``{"type": "audio/pcmu"}``), if it names one."""
    kind = field(value, "type")
    if not isinstance(kind, str):
        return None
    return _BYTES_PER_SECOND["g711" if kind in ("audio/pcmu", "audio/pcma") else "pcm"]


# What a session sets (``session.update``) and a response may override (``response.create``).
_SETTINGS = ("instructions", "tools", "max_output_tokens", "output_modalities")


def _max_output(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None  # "inf": the guard's default


class RealtimeConversation:
    """What the next response of one Realtime session takes, from the events that pass."""

    __slots__ = (
        "added_media",
        "added_text",
        "buffered",
        "context",
        "context_media",
        "in_rate",
        "model",
        "out_rate",
        "settings",
        "transcription",
        "turns",
    )

    def __init__(self, connect_kwargs: Mapping[str, Any]) -> None:
        model = connect_kwargs.get("model")
        self.model = model if isinstance(model, str) else ""  # else from session.created
        self.settings: dict[str, Any] = {}
        self.context = self.context_media = 0  # as the last response left the conversation
        self.added_text = self.added_media = 0  # since
        self.in_rate = self.out_rate = _BYTES_PER_SECOND["pcm"]
        self.buffered = 0  # speech tokens in the input buffer, not yet committed
        self.transcription: Mapping[str, Any] | None = None  # the session's setting
        self.turns = 0
        """Items the conversation has gained (speech committed, items created, responses
        done): a response asked for at another count is another request, for loop
        detection, however alike its settings."""

    def _session(self, session: Any) -> None:
        if not isinstance(session, Mapping):
            return
        if isinstance(session.get("model"), str):
            self.model = session["model"]
        for name in _SETTINGS:
            if name in session:
                self.settings[name] = session[name]
        audio = session.get("audio")
        audio_in = field(audio, "input")
        if isinstance(audio_in, Mapping) and "transcription" in audio_in:  # None turns it off
            transcription = audio_in["transcription"]
            self.transcription = transcription if isinstance(transcription, Mapping) else None
        self.in_rate = _format_rate(field(audio_in, "format")) or self.in_rate
        self.out_rate = _format_rate(field(field(audio, "output"), "format")) or self.out_rate

    def sent(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            tokens = _audio_tokens(event.get("audio"), self.in_rate)
            self.added_media += tokens
            self.buffered += tokens
        elif kind == "input_audio_buffer.clear":
            self.buffered = 0
        elif kind == "conversation.item.create":
            self.turns += 1
            text, media = self._item_tokens(event.get("item"))
            self.added_text += text
            self.added_media += media
        elif kind == "session.update":
            self._session(event.get("session"))

    def _item_tokens(self, item: Any) -> tuple[int, int]:
        """Text and speech tokens of a conversation item (a message, a function's output)."""
        if not isinstance(item, Mapping):
            return 0, 0
        texts = [item.get("output"), item.get("arguments")]
        media = 0
        for part in item.get("content") or ():
            if isinstance(part, Mapping):
                texts += [part.get("text"), part.get("transcript")]
                media += _audio_tokens(part.get("audio"), self.in_rate)
        model = self.model or "gpt-4o"
        return sum(count_text_tokens(model, t) for t in texts if isinstance(t, str)), media

    def received(self, event: Event) -> None:
        kind = event.get("type")
        if kind in ("response.done", "input_audio_buffer.committed"):
            self.turns += 1
        if kind == "response.done":
            usage = field(event.get("response"), "usage")
            if usage is not None:
                # All of it, the reply included, is input to the next response.
                self.context = field(usage, "input_tokens", 0) + field(usage, "output_tokens", 0)
                self.context_media = field(
                    field(usage, "input_token_details"), "audio_tokens", 0
                ) + field(field(usage, "output_token_details"), "audio_tokens", 0)
                self.added_text = self.added_media = 0
        elif kind in ("session.created", "session.updated"):
            self._session(event.get("session"))
        elif kind == "input_audio_buffer.cleared":
            self.buffered = 0

    def aside(self, event: Event) -> Event | None:
        """A transcription of the speech ``input_audio_buffer.committed`` says was committed,
        when the session transcribes it."""
        if event.get("type") != "input_audio_buffer.committed":
            return None
        speech, self.buffered = self.buffered, 0
        transcription = self.transcription
        model = _transcription_model(transcription)
        if model is None:
            return None
        prompt = field(transcription, "prompt")
        return {
            "model": model,
            "item_id": event.get("item_id"),
            "prompt": prompt if isinstance(prompt, str) else None,
            "audio_tokens": speech,
        }

    def request(self, event: Event) -> Event:
        return self.successor(event.get("response") or {})

    def successor(self, response: Mapping[str, Any]) -> Event:
        settings = dict(self.settings)
        for name in _SETTINGS:
            if response.get(name) is not None:
                settings[name] = response[name]
        modalities = settings.get("output_modalities")
        # Items given with the response (out of band, ``conversation: "none"``) are its input
        # too; the conversation is held all the same (over, never under).
        text = media = 0
        for item in response.get("input") or ():
            item_text, item_media = self._item_tokens(item)
            text += item_text
            media += item_media
        return {
            "model": self.model,
            "instructions": settings.get("instructions"),
            "tools": settings.get("tools"),
            "max_output_tokens": _max_output(settings.get("max_output_tokens")),
            "text_only": isinstance(modalities, list) and "audio" not in modalities,
            "context_tokens": self.context + self.added_text + self.added_media + text + media,
            "context_media_tokens": self.context_media + self.added_media + media,
            "out_rate": self.out_rate,
            "turn": self.turns,
        }


def _read(body: Mapping[str, Any]) -> CallSpec:
    tools = body.get("tools")
    instructions = body.get("instructions")
    return CallSpec(
        provider=PROVIDER,
        model=str(body.get("model") or ""),
        operation="realtime",
        system=instructions if isinstance(instructions, str) else None,
        tools=tools if isinstance(tools, list) and tools else None,
        max_output_tokens=body.get("max_output_tokens"),
        text_output=bool(body.get("text_only")),
        context_tokens=body.get("context_tokens", 0),
        context_media_tokens=body.get("context_media_tokens", 0),
        request_key=body.get("turn"),
    )


def realtime_usage(usage: Any) -> Usage:
    details = field(usage, "input_token_details")
    return Usage(
        input_tokens=field(usage, "input_tokens", 0),
        output_tokens=field(usage, "output_tokens", 0),
        cache_read_tokens=field(details, "cached_tokens", 0),
        cache_audio_read_tokens=field(field(details, "cached_tokens_details"), "audio_tokens", 0),
        input_audio_tokens=field(details, "audio_tokens", 0),
        input_image_tokens=field(details, "image_tokens", 0),
        output_audio_tokens=field(field(usage, "output_token_details"), "audio_tokens", 0),
    )


def _outcome(response: Any) -> Outcome:
    status = field(response, "status")
    return Outcome(
        usage=realtime_usage(field(response, "usage")),
        finish_reasons=(str(status),) if status else (),
        tool_calls=tuple(
            tool_signature(field(item, "name", ""), field(item, "arguments", ""))
            for item in field(response, "output", ())
            if field(item, "type") == "function_call"
        ),
    )


_TEXT_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")


class RealtimeMeter(TokenCounter):
    """One Realtime response's events: speech counted by its bytes, text a token a delta."""

    __slots__ = ("audio_bytes", "context_media", "final", "model_name", "out_rate", "text")
    exact = False  # speech is counted at an assumed rate

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        self.final: Any = None
        self.audio_bytes = self.text = 0
        self.out_rate = body.get("out_rate") or _BYTES_PER_SECOND["pcm"]
        self.context_media = body.get("context_media_tokens", 0)
        self.model_name = body.get("model")

    def _audio(self) -> int:
        return -(-self.audio_bytes * AUDIO_TOKENS_PER_SECOND // self.out_rate)

    def feed(self, event: Any) -> bool:
        self.received = True
        kind = event.type
        if kind == "response.output_audio.delta":
            delta = event.delta
            if isinstance(delta, str):
                self.audio_bytes += len(delta) * 3 // 4
                self.output_tokens = self.text + self._audio()
        elif kind in _TEXT_DELTAS:
            if event.delta:
                self.text += 1
                self.output_tokens = self.text + self._audio()
        elif kind == "response.done":
            self.final = event.response
            if field(self.final, "usage") is not None:
                self.complete = True
        return False

    def outcome(self, estimated_input_tokens: int) -> Outcome:
        if self.complete:
            outcome = _outcome(self.final)
            return dataclasses.replace(outcome, response_model=self.model_name)
        # Ended early: the input as held, speech in it at the audio rate; the output counted.
        usage = Usage(
            input_tokens=estimated_input_tokens,
            input_audio_tokens=min(self.context_media, estimated_input_tokens),
            output_tokens=self.output_tokens,
            output_audio_tokens=self._audio(),
        )
        return Outcome(usage=usage, response_model=self.model_name)


def _read_transcription(body: Mapping[str, Any]) -> CallSpec:
    model, prompt, speech = body.get("model"), body.get("prompt"), body.get("audio_tokens", 0)
    key = body.get("item_id")  # the turn of speech: each is new
    if is_priced_by_the_second(model):  # whisper-1
        return unit_spec(model, prompt, "transcription", seconds=_seconds(speech), key=key)
    return transcription_spec(model, prompt, speech, key)


def _seconds(speech: int) -> int:
    """Seconds of speech that made ``speech`` audio tokens, rounded up."""
    return -(-speech // AUDIO_TOKENS_PER_SECOND)


def _transcription_outcome(event: Any) -> Outcome:
    """A finished transcription (its ``completed`` event)."""
    seconds = billed_seconds(event)
    if seconds is not None:  # billed by the second (whisper-1)
        return Outcome(usage=Usage(audio_seconds=seconds))
    return Outcome(usage=transcription_usage(field(event, "usage")))


class TranscriptionMeter(TokenCounter):
    """One transcription of committed speech, ended by the event that reports its usage."""

    __slots__ = ("final", "model_name", "speech")
    exact = True  # nothing is cut: the transcript streams beside the responses

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__()
        self.model_name = body.get("model")
        self.speech: int = body.get("audio_tokens", 0)
        self.final: Any = None
        # The server transcribes what it committed whether or not the socket stays open: a
        # transcription the socket closes on is billed at what was held.
        self.received = True

    def feed(self, event: Any) -> bool:
        self.final = event
        self.complete = True
        return False

    def outcome(self, estimated_input_tokens: int) -> Outcome:
        final = self.final
        if final is not None and (
            reports_tokens(field(final, "usage")) or billed_seconds(final) is not None
        ):
            outcome = _transcription_outcome(final)
            return dataclasses.replace(outcome, response_model=self.model_name)
        # Unfinished when the socket closed, or its usage unreadable: what was held.
        if is_priced_by_the_second(self.model_name):
            usage = Usage(audio_seconds=_seconds(self.speech))
            return Outcome(usage=usage, response_model=self.model_name)
        usage = Usage(
            input_tokens=estimated_input_tokens,
            input_audio_tokens=min(self.speech, estimated_input_tokens),
            output_tokens=transcript_bound(self.speech),
        )
        return Outcome(usage=usage, response_model=self.model_name)


def _transcription_model(setting: Any) -> str | None:
    """The model a session's transcription setting names (None: it transcribes nothing)."""
    model = field(setting, "model")
    return model if isinstance(model, str) and model else None


def _transcription_asked(event: Event) -> str | None:
    """The transcription model a ``session.update`` turns on, if it turns one on."""
    if event.get("type") != "session.update":
        return None
    audio_in = field(field(event.get("session"), "audio"), "input")
    return _transcription_model(field(audio_in, "transcription"))


TRANSCRIPTION = Aside(
    endpoint=Endpoint(
        operation="transcription",
        read=_read_transcription,
        outcome=_transcription_outcome,
        meter=TranscriptionMeter,
    ),
    key="item_id",
    finished=("conversation.item.input_audio_transcription.completed",),
    failed=("conversation.item.input_audio_transcription.failed",),
    asked=_transcription_asked,
)


def _limit(event: Body, tokens: int) -> Body:
    """Strict mode: the ``response.create`` event with its response's max output tokens."""
    response = dict(event.get("response") or {})
    current = response.get("max_output_tokens")
    response["max_output_tokens"] = min(current, tokens) if type(current) is int else tokens
    return {**event, "response": response}


REALTIME = SocketProtocol(
    provider=PROVIDER,
    endpoint=Endpoint(
        operation="realtime",
        read=_read,
        outcome=_outcome,
        limit=_limit,
        meter=RealtimeMeter,
    ),
    request="response.create",
    started="response.created",
    finished=("response.done",),
    error="error",
    state=RealtimeConversation,
    lane=None,
    aside=TRANSCRIPTION,
)
