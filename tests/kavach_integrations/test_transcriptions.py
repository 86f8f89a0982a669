"""``audio.transcriptions.create`` with a model billed by the token (gpt-4o-transcribe): the
real OpenAI SDK (2.x on httpx, 3.x on httpx2) against a mock transport that answers as the
API does, the uploaded audio held for its length before the request is sent."""

from __future__ import annotations

import io
import json
import logging
import warnings
import wave
from collections.abc import Callable
from typing import Any

import pytest

from kavach import AgentKavach, AgentKilledError, Budget
from kavach.errors import BudgetExceededError, LoopDetectedError
from kavach_integrations import _openai_audio

from .conftest import Events, amocked_openai, mocked_server, sdk_httpx, spent

httpx = sdk_httpx()

MODEL = "gpt-4o-transcribe"  # $6 per million audio tokens in, $2.50 text in, $10 out
USAGE = {
    "type": "tokens",
    "input_tokens": 610,
    "output_tokens": 90,
    "total_tokens": 700,
    "input_token_details": {"audio_tokens": 600, "text_tokens": 10},
}
COST = 600 * 6_000 + 10 * 2_500 + 90 * 10_000
TEXT = "Thanks for calling. Your order shipped this morning and arrives on Thursday."


def wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"\0\0" * int(16_000 * seconds))
    return out.getvalue()


class Server:
    """Answers transcriptions as the API does; keeps what it was sent."""

    def __init__(self, guard: AgentKavach) -> None:
        self.guard = guard
        self.uploads: list[bytes] = []
        self.held: list[int] = []  # what the guard held while each request was on its way
        self.whisper: dict[str, Any] | None = {"type": "duration", "seconds": 1}
        """The usage whisper-1's JSON answers report (None: none)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.uploads.append(body)
        self.held.append(self.guard.status()[0].reserved)
        if b'name="stream"\r\n\r\ntrue' in body:
            events = [
                {"type": "transcript.text.delta", "delta": word + " "} for word in TEXT.split()
            ]
            events.append({"type": "transcript.text.done", "text": TEXT, "usage": USAGE})
            sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        if b'name="response_format"\r\n\r\ntext' in body:
            return httpx.Response(200, text=TEXT, headers={"content-type": "text/plain"})
        if b'name="model"\r\n\r\nwhisper-1' in body:
            answer: dict[str, Any] = {"text": TEXT}
            if b'name="response_format"\r\n\r\nverbose_json' in body:
                answer |= {"task": "transcribe", "language": "english", "duration": 12.2}
            if self.whisper is not None:
                answer["usage"] = self.whisper
            return httpx.Response(200, json=answer)
        return httpx.Response(200, json={"text": TEXT, "usage": USAGE})


Connect = Callable[[AgentKavach], tuple[Any, Server]]


@pytest.fixture
def client() -> Connect:
    """A guarded client on a mock server, and the server; closed after the test."""
    return mocked_server(Server)


def test_a_transcription_is_held_for_its_speech_and_settled_at_its_usage(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    audio = wav(30)
    result = c.audio.transcriptions.create(model=MODEL, file=("call.wav", audio))
    assert result.text == TEXT
    # 30 s: 601 audio tokens at $6 per million, and a transcript of up to 316 at $10.
    assert server.held == [601 * 6_000 + 316 * 10_000]
    assert audio in server.uploads[0]  # the whole file went out
    (event,) = events.calls
    assert (event.operation, event.model, event.status) == ("transcription", MODEL, "ok")
    assert event.cost_nanos == COST
    assert event.usage.input_audio_tokens == 600
    assert spent(guard) == COST and guard.status()[0].reserved == 0


def test_a_file_whose_headers_do_not_tell_its_length_is_held_at_a_low_bit_rate(
    make_guard: Any, events: Events, client: Connect
) -> None:
    # 50,000 bytes of audio of no format read, held as if at 8 kbit/s: 50 s, 1,001 audio
    # tokens and up to 516 out.
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    unread = b"#!AMR\n" + b"\0" * 49_994
    c.audio.transcriptions.create(model=MODEL, file=("call.amr", unread))
    assert server.held == [1_001 * 6_000 + 516 * 10_000]
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)]


def test_a_transcription_the_budget_cannot_pay_for_is_refused_before_it_is_sent(
    make_guard: Any, events: Events, client: Connect
) -> None:
    # Ten minutes: 12,001 audio tokens ($0.072) and up to 6,016 out ($0.06).
    guard = make_guard(budget=Budget.daily(0.10))
    c, server = client(guard)
    with pytest.raises(BudgetExceededError):
        c.audio.transcriptions.create(model=MODEL, file=("long.wav", wav(600)))
    assert server.uploads == []
    assert [(e.operation, e.status) for e in events.calls] == [("transcription", "refused")]
    c.audio.transcriptions.create(model=MODEL, file=("short.wav", wav(60)))
    assert len(server.uploads) == 1


def test_a_text_answer_is_settled_at_the_speech_held_and_its_transcript(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    text = c.audio.transcriptions.create(
        model=MODEL, file=("call.wav", wav(30)), response_format="text"
    )
    assert text.strip() == TEXT
    (event,) = events.calls
    assert event.status == "ok"
    assert event.usage.input_audio_tokens == event.usage.input_tokens == 601
    assert 10 <= event.usage.output_tokens <= 25  # the transcript's tokens
    assert event.cost_nanos == 601 * 6_000 + event.usage.output_tokens * 10_000


def test_a_streamed_transcription_is_settled_at_the_usage_it_ends_with(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    stream = c.audio.transcriptions.create(model=MODEL, file=("call.wav", wav(30)), stream=True)
    deltas = [e.delta for e in stream if e.type == "transcript.text.delta"]
    assert "".join(deltas).strip() == TEXT
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)]
    assert guard.status()[0].reserved == 0


def test_a_file_object_is_measured_and_left_where_it_stood(
    make_guard: Any, events: Events, client: Connect
) -> None:
    # The guard reads the file to know its length, then puts it back for the SDK to send.
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    audio = wav(30)
    upload = io.BytesIO(audio)
    upload.name = "call.wav"
    c.audio.transcriptions.create(model=MODEL, file=upload)
    assert audio in server.uploads[0]
    assert server.held == [601 * 6_000 + 316 * 10_000]
    # httpx rewinds what it sends; a reader that does not is given the file where it was.
    upload.seek(0)
    assert _openai_audio.uploaded([("file", upload)]) == audio
    assert upload.tell() == 0
    upload.close()  # one that cannot be read is not measured; the SDK reports it
    assert _openai_audio.uploaded([("file", upload)]) is None


def test_what_the_guard_cannot_hold_goes_through_is_stopped_and_said_not_counted(
    make_guard: Any, events: Events, client: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    # A stream that cannot seek cannot be read first.
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)
            self.name = "pipe.wav"

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self._data.readinto(buffer)

    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    with caplog.at_level(logging.WARNING, logger="kavach"):
        c.audio.transcriptions.create(model=MODEL, file=Pipe(wav(5)))
        c.audio.transcriptions.create(model="whisper-1", file=Pipe(wav(5)))
    assert len(server.uploads) == 2 and server.held == [0, 0]
    assert events.calls == []
    assert any(
        "transcription" in r.getMessage() and "cannot meter" in r.getMessage()
        for r in caplog.records
    )
    guard.kill("stop")
    with pytest.raises(AgentKilledError):
        c.audio.transcriptions.create(model=MODEL, file=Pipe(wav(5)))
    assert len(server.uploads) == 2


def test_different_recordings_are_not_a_loop_and_the_same_one_again_is(
    make_guard: Any, client: Connect
) -> None:
    # Transcriptions with one model and no prompt differ only in the audio they upload.
    guard = make_guard(budget=Budget.daily(1), detect_loops=True, loop_threshold=3)
    c, server = client(guard)
    for seconds in (1, 2, 3, 4):
        c.audio.transcriptions.create(model=MODEL, file=("call.wav", wav(seconds)))
    c.audio.transcriptions.create(model=MODEL, file=("call.wav", wav(1)))
    with pytest.raises(LoopDetectedError):
        c.audio.transcriptions.create(model=MODEL, file=("call.wav", wav(1)))
    assert len(server.uploads) == 5


# -- whisper-1: billed by the second ($0.006 a minute: 100,000 nano-dollars a second) ---------

SECOND = 100_000


def test_whisper_is_held_for_the_seconds_uploaded_and_settled_at_those_it_reports(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    server.whisper = {"type": "duration", "seconds": 29.6}  # as the API reports whisper-1's
    result = c.audio.transcriptions.create(model="whisper-1", file=("call.wav", wav(29.55)))
    assert result.text == TEXT
    assert server.held == [30 * SECOND]  # 29.55 s, held to the second above
    [event] = events.calls
    assert (event.operation, event.model, event.status) == ("transcription", "whisper-1", "ok")
    assert event.usage.audio_seconds == 30 and event.cost_nanos == 30 * SECOND
    assert event.usage.input_tokens == 0  # seconds, not tokens
    assert spent(guard) == 30 * SECOND and guard.status()[0].reserved == 0


def test_whisper_without_usage_is_settled_at_its_duration_else_as_held(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(1))
    c, server = client(guard)
    server.whisper = None  # an answer with no usage: verbose_json's duration, or nothing
    c.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav(12)), response_format="verbose_json"
    )
    with warnings.catch_warnings():  # openai 3.x marks translations deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        c.audio.translations.create(
            model="whisper-1", file=("b.wav", wav(8.2)), response_format="text"
        )
    assert [(e.operation, e.usage.audio_seconds, e.cost_nanos) for e in events.calls] == [
        ("transcription", 12, 12 * SECOND),  # the duration it reports
        ("translation", 9, 9 * SECOND),  # a text answer: as held
    ]
    assert spent(guard) == 21 * SECOND


def test_whisper_the_budget_cannot_pay_for_is_refused_before_it_is_sent(
    make_guard: Any, events: Events, client: Connect
) -> None:
    guard = make_guard(budget=Budget.daily(0.05))  # $0.05: 500 s of whisper-1
    c, server = client(guard)
    with pytest.raises(BudgetExceededError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # openai 3.x: translations
        c.audio.translations.create(model="whisper-1", file=("long.wav", wav(600)))
    assert server.uploads == []
    assert events.calls[-1].status == "refused" and events.calls[-1].operation == "translation"


@pytest.mark.anyio
async def test_async_transcriptions_are_held_and_settled(make_guard: Any, events: Events) -> None:
    guard = make_guard(budget=Budget.daily(1))
    server = Server(guard)
    c, http = amocked_openai(guard, server)
    await c.audio.transcriptions.create(model=MODEL, file=("call.wav", wav(30)))
    await http.aclose()
    assert server.held == [601 * 6_000 + 316 * 10_000]
    assert [(e.status, e.cost_nanos) for e in events.calls] == [("ok", COST)]
