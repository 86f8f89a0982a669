"""OpenAI speech APIs: what a transcription, a translation or speech is held for and how its
usage reads, for ``audio.transcriptions.create``, ``audio.translations.create`` and
``audio.speech.create`` (over HTTP, here) and the transcription of a Realtime session's
speech (``kavach_integrations._openai_realtime``).

Speech to text billed by the token (``gpt-4o-transcribe``, ``gpt-4o-mini-transcribe`` and
their versions) is billed for its speech at the model's audio input rate, any prompt at its
text rate, and the transcript at its output rate. It is held for:

- the speech, at ``AUDIO_TOKENS_PER_SECOND``. Over HTTP the length comes from the uploaded
  file's headers (WAV, FLAC, MP3, Ogg, M4A, WebM; ``kavach._media.audio_seconds``); a WebM
  without a duration (a browser's recording) is held to its last block and a second more.
  Files whose headers do not tell are held as if at
  ``kavach._media.UNREAD_AUDIO_BYTES_PER_SECOND``, the low end of the bit rates speech is
  recorded at, so that they are over-held, not under;
- a transcript of up to ``TRANSCRIPT_TOKENS_PER_AUDIO_TOKEN`` tokens for each of its audio
  tokens; nothing in the request can limit it.

It is settled at the usage the response reports (``{"type": "tokens", ...}``). A response
without usage (``response_format="text"``, ``"srt"``, ``"vtt"``) is settled at the speech as
held and its transcript's tokens.

``whisper-1`` (transcriptions and translations) is billed by the second of audio given, at
genai-prices' price per hour: held for the length read from the file's headers, rounded up,
and settled at the ``duration`` a ``verbose_json`` answer reports (rounded to the nearest
second, as billed), else as held. ``tts-1`` and ``tts-1-hd`` speech is billed by the
character of its input: held and settled at exactly that. ``gpt-4o-mini-tts``, billed by
tokens it does not report unless streamed as events, and a file the guard cannot read
without consuming it (a stream that cannot seek) are let through, stopped with the agent
and said not to be counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kavach import _media
from kavach.spec import CallSpec
from kavach.stream import Outcome
from kavach.tokens import count_text_tokens
from kavach.usage import Usage
from kavach_integrations._provider import Endpoint, TokenCounter, Unmetered, field

PROVIDER = "openai"

AUDIO_TOKENS_PER_SECOND = 20
"""Audio tokens a second of speech makes. OpenAI does not publish the rate; its prices per
minute (when the Realtime API launched, $0.06 a minute of input and $0.24 of output at $100
and $200 per million tokens) work out at 10 a second in and 20 out, and the transcription
models' ($0.006 a minute at $6 per million) at about 17. Speech is held at 20: the usage
each response reports replaces the estimate."""

TRANSCRIPT_TOKENS_PER_AUDIO_TOKEN = 0.5
"""The most transcript a transcription of speech is held for: 10 tokens a second at
``AUDIO_TOKENS_PER_SECOND``, more than the fastest speakers say (about 7)."""

UNMETERED = Unmetered(PROVIDER, "transcription")


def transcript_bound(speech: int) -> int:
    """The most transcript ``speech`` audio tokens are held for."""
    return int(speech * TRANSCRIPT_TOKENS_PER_AUDIO_TOKEN) + 16


def transcription_spec(model: Any, prompt: Any, speech: int, key: object = None) -> CallSpec:
    """A transcription of ``speech`` audio tokens by ``model``; ``key`` tells its audio apart
    from another's of the same length (loop detection)."""
    return CallSpec(
        provider=PROVIDER,
        model=str(model or ""),
        operation="transcription",
        prompt=prompt if isinstance(prompt, str) else None,
        max_output_tokens=transcript_bound(speech),
        text_output=True,
        fixed_output=True,  # nothing in the request can limit it
        context_tokens=speech,
        context_media_tokens=speech,
        request_key=key,
    )


def reports_tokens(usage: Any) -> bool:
    return field(usage, "type", "tokens") == "tokens" and field(usage, "input_tokens") is not None


def transcription_usage(usage: Any) -> Usage:
    """A transcription's usage by the token (``{"type": "tokens", ...}``)."""
    return Usage(
        input_tokens=field(usage, "input_tokens", 0),
        output_tokens=field(usage, "output_tokens", 0),
        input_audio_tokens=field(field(usage, "input_token_details"), "audio_tokens", 0),
    )


# -- audio.transcriptions.create ------------------------------------------------------------


def is_token_priced(model: Any) -> bool:
    # gpt-4o-transcribe, gpt-4o-mini-transcribe, their dated and diarize versions; whisper-1
    # is billed by the minute.
    return isinstance(model, str) and "transcribe" in model


def _upload(files: Any) -> Any:
    """The ``file`` part of a multipart request's files, as the SDK hands them to httpx."""
    entries = files.items() if isinstance(files, Mapping) else files or ()
    for name, value in entries:
        if name == "file":
            return value[1] if isinstance(value, tuple) else value
    return None


def _read(content: Any) -> bytes | None:
    """The bytes of an upload, leaving a file object where it was; None when they cannot be
    read without consuming them (a stream that cannot seek)."""
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    try:
        seekable = getattr(content, "seekable", None)
        if not callable(seekable) or not seekable():
            return None
        at = content.tell()
        try:
            data = content.read()
        finally:
            content.seek(at)
    except (OSError, ValueError):  # closed, or not a file after all: the SDK will say so
        return None
    return data if isinstance(data, bytes) else None


def uploaded(files: Any) -> bytes | None:
    """The audio file a transcription or translation request uploads, or None when it
    cannot be read without consuming it."""
    return _read(_upload(files))


def speech_tokens(data: bytes) -> int:
    """Audio tokens of the speech in an audio file."""
    return math.ceil(_media.audio_length(data, "") * AUDIO_TOKENS_PER_SECOND) + 1


class TranscriptMeter(TokenCounter):
    """A streamed transcription (``stream=True``): its text deltas, then the usage its
    ``transcript.text.done`` reports."""

    __slots__ = ("speech",)

    def __init__(self, speech: int) -> None:
        super().__init__()
        self.speech = speech

    def feed(self, event: Any) -> bool:
        self.received = True
        kind = field(event, "type")
        if kind == "transcript.text.delta":
            self.count(field(event, "delta"))
        elif kind == "transcript.text.done":
            usage = field(event, "usage")
            if reports_tokens(usage):
                self.usage = transcription_usage(usage)
            self.complete = True
        return False

    def outcome(self, estimated_input_tokens: int) -> Outcome:
        if self.usage is not None:
            return Outcome(usage=self.usage)
        usage = Usage(
            input_tokens=estimated_input_tokens,
            input_audio_tokens=min(self.speech, estimated_input_tokens),
            output_tokens=self.output_tokens,
        )
        return Outcome(usage=usage)


def transcription_endpoint(speech: int, key: object = None) -> Endpoint:
    """How to guard one transcription request whose upload is ``speech`` audio tokens (and
    whose content is ``key``)."""

    def read(body: Mapping[str, Any]) -> CallSpec:
        return transcription_spec(body.get("model"), body.get("prompt"), speech, key)

    def outcome(response: Any) -> Outcome:
        usage = field(response, "usage")
        if reports_tokens(usage):
            return Outcome(usage=transcription_usage(usage))
        # No usage (a text, SRT or VTT answer): the speech as held, and the transcript.
        text = response if isinstance(response, str) else field(response, "text", "")
        transcript = count_text_tokens("gpt-4o", text) if isinstance(text, str) else 0
        # input_tokens 0: the endpoint fills in the input as held (the prompt's too).
        return Outcome(usage=Usage(input_audio_tokens=speech, output_tokens=transcript))

    return Endpoint(
        operation="transcription",
        read=read,
        outcome=outcome,
        meter=lambda body: TranscriptMeter(speech),
        estimate_unreported_input=True,
    )


def choose_transcription(body: Mapping[str, Any], files: Any) -> Endpoint | Unmetered:
    """``audio.transcriptions.create``: metered for a model billed by the token or by the
    second whose upload the guard can read."""
    model = body.get("model")
    if is_token_priced(model):
        data = uploaded(files)
        if data is None:
            return UNMETERED
        return transcription_endpoint(speech_tokens(data), hash(data))
    return _by_the_second(body, files, "transcription") or UNMETERED


def choose_translation(body: Mapping[str, Any], files: Any) -> Endpoint | Unmetered:
    """``audio.translations.create`` (``whisper-1``): metered when the guard can read the
    upload."""
    return _by_the_second(body, files, "translation") or TRANSLATION_UNMETERED


TRANSLATION_UNMETERED = Unmetered(PROVIDER, "translation")


# -- billed by the second: whisper-1 ----------------------------------------------------------


def is_priced_by_the_second(model: Any) -> bool:
    return isinstance(model, str) and model.startswith("whisper")


def _by_the_second(body: Mapping[str, Any], files: Any, operation: str) -> Endpoint | None:
    if not is_priced_by_the_second(body.get("model")):
        return None
    data = uploaded(files)
    if data is None:
        return None
    return seconds_endpoint(operation, math.ceil(_media.audio_length(data, "")), hash(data))


def unit_spec(
    model: Any,
    prompt: Any,
    operation: str,
    *,
    characters: int = 0,
    seconds: int = 0,
    key: object = None,
) -> CallSpec:
    """A request ``model`` bills by the unit, not the token: ``characters`` of input text
    (tts-1) or ``seconds`` of audio (whisper-1, whose content is ``key``). Held at exactly
    that, with no output to limit."""
    return CallSpec(
        provider=PROVIDER,
        model=str(model or ""),
        operation=operation,
        prompt=prompt if isinstance(prompt, str) else None,
        input_tokens=0,
        max_output_tokens=0,
        text_output=True,
        fixed_output=True,
        input_characters=characters,
        audio_seconds=seconds,
        request_key=key,
    )


def billed_seconds(answer: Any) -> int | None:
    """The seconds an answer says it was billed for: its usage by duration
    (``{"type": "duration", "seconds": 9.4}``), else a ``verbose_json`` answer's ``duration``,
    to the nearest second as billed; None when it says neither."""
    usage = field(answer, "usage")
    seconds = field(usage, "seconds") if field(usage, "type") == "duration" else None
    if seconds is None and not isinstance(answer, str):
        seconds = field(answer, "duration")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return max(1, math.floor(seconds + 0.5))
    return None


def seconds_endpoint(operation: str, seconds: int, key: object = None) -> Endpoint:
    """How to guard a request billed for ``seconds`` of audio uploaded (whose content is
    ``key``): held for them, settled at the seconds the answer reports, else as held."""

    def read(body: Mapping[str, Any]) -> CallSpec:
        return unit_spec(body.get("model"), body.get("prompt"), operation, seconds=seconds, key=key)

    def outcome(response: Any) -> Outcome:
        billed = billed_seconds(response)
        return Outcome(usage=Usage(audio_seconds=seconds if billed is None else billed))

    return Endpoint(operation=operation, read=read, outcome=outcome)


# -- billed by the character: tts-1 -----------------------------------------------------------


SPEECH_UNMETERED = Unmetered(PROVIDER, "speech")


def is_priced_by_the_character(model: Any) -> bool:
    # tts-1, tts-1-hd and their dated versions; gpt-4o-mini-tts is billed by the token.
    return isinstance(model, str) and model.startswith("tts-1")


def choose_speech(body: Mapping[str, Any], files: Any) -> Endpoint | Unmetered:
    """``audio.speech.create``: metered for a model billed by the character."""
    text = body.get("input")
    if not is_priced_by_the_character(body.get("model")) or not isinstance(text, str):
        return SPEECH_UNMETERED
    return characters_endpoint(len(text))


def characters_endpoint(characters: int) -> Endpoint:
    """How to guard a request billed for ``characters`` of input: held and settled at them
    (the answer is the audio, and reports nothing)."""

    def read(body: Mapping[str, Any]) -> CallSpec:
        return unit_spec(body.get("model"), body.get("input"), "speech", characters=characters)

    return Endpoint(
        operation="speech",
        read=read,
        outcome=lambda response: Outcome(usage=Usage(input_characters=characters)),
        reads_response=False,
    )
