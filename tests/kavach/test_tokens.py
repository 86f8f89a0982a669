"""kavach.tokens: exact OpenAI counts, conservative estimates elsewhere, never a download."""

from __future__ import annotations

import base64
import doctest
import io
import os
import struct
import subprocess
import sys
import textwrap
import threading
import wave
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kavach import tokens
from kavach.errors import KavachError
from kavach.tokens import count_text_tokens, encoding_for_model, estimate_input_tokens

ROOT = Path(__file__).resolve().parents[2]

# OpenAI cookbook, "How to count tokens with tiktoken", section 6. The API reported
# 129 prompt tokens for gpt-3.5-turbo and gpt-4, 124 for gpt-4o and gpt-4o-mini.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]

# Same cookbook, section 7: 105 tokens (gpt-3.5-turbo, gpt-4) and 101 (gpt-4o, -mini).
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {
                    "type": "string",
                    "description": "The unit of temperature to return",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location"],
        },
    },
}
MODEL_OF = {
    "openai": "gpt-4o",
    "anthropic": "claude-sonnet-4-5",
    "google": "gemini-2.5-flash",
    "mistral": "mistral-large-latest",
}

WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]

CHAT = [
    {"role": "system", "content": "You are a concise assistant for a travel agency."},
    {"role": "user", "content": "I want to visit Lisbon in March. What should I pack?"},
    {"role": "assistant", "content": "Layers, a light rain jacket and comfortable shoes."},
    {"role": "user", "content": "And which neighbourhoods are good for a first visit?"},
    {"role": "assistant", "content": "Baixa, Chiado and Alfama are central and walkable."},
]


def png(width: int, height: int) -> bytes:
    """The start of a PNG: signature and IHDR, which is all a size reader needs."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def png_b64(width: int, height: int) -> str:
    return base64.b64encode(png(width, height)).decode()


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


# --------------------------------------------------------------------------- encodings


def test_known_literal_counts() -> None:
    o200k = encoding_for_model("gpt-4o")
    cl100k = encoding_for_model("gpt-4")
    assert o200k.encode_ordinary("hello world") == [24912, 2375]
    assert cl100k.encode_ordinary("hello world") == [15339, 1917]
    assert count_text_tokens("gpt-4o", "hello world") == 2
    assert count_text_tokens("gpt-4o", "hello") == 1
    assert count_text_tokens("gpt-4o", "") == 0
    # o200k is more compact than cl100k on Japanese: 8 tokens against 9 (cookbook).
    assert count_text_tokens("gpt-4o", "お誕生日おめでとう") == 8
    assert count_text_tokens("gpt-4", "お誕生日おめでとう") == 9


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5.1-codex", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("omni-moderation-latest", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("some-future-model", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("ft:gpt-3.5-turbo:acme::abc123", "cl100k_base"),
    ],
)
def test_encoding_for_model(model: str, name: str) -> None:
    assert encoding_for_model(model).name == name


def test_encoding_is_loaded_once_and_shared() -> None:
    assert encoding_for_model("gpt-4o") is encoding_for_model("gpt-5-mini")


def test_special_token_text_is_counted_not_refused() -> None:
    # A user pasting "<|endoftext|>" must not crash the guard; the API treats it as text.
    assert count_text_tokens("gpt-4o", "<|endoftext|>") > 1


def test_patterns_and_special_tokens_match_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiktoken_ext import openai_public  # type: ignore[import-untyped]

    # Run tiktoken's own constructors with the download stubbed out.
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})
    for name, constructor in [
        ("o200k_base", openai_public.o200k_base),
        ("cl100k_base", openai_public.cl100k_base),
    ]:
        expected = constructor()
        encoding = tokens._get_encoding(name)
        assert tokens._PAT_STR[name] == expected["pat_str"]
        assert encoding._special_tokens == expected["special_tokens"]
    assert encoding_for_model("gpt-4o").n_vocab == 200019
    assert encoding_for_model("gpt-4").n_vocab == 100277


def test_damaged_encoding_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_ENCODINGS", {})
    monkeypatch.setitem(tokens._SHA256, "cl100k_base", "0" * 64)
    with pytest.raises(KavachError, match="reinstall agentkavach"):
        tokens._get_encoding("cl100k_base")


def test_concurrent_first_use_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_ENCODINGS", {})
    loads: list[str] = []
    real_load = tokens._load_ranks

    def counting_load(name: str) -> dict[bytes, int]:
        loads.append(name)
        return real_load(name)

    monkeypatch.setattr(tokens, "_load_ranks", counting_load)
    barrier = threading.Barrier(8)
    seen: list[object] = []

    def worker() -> None:
        barrier.wait()
        seen.append(tokens._get_encoding("cl100k_base"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["cl100k_base"]
    assert len(seen) == 8 and all(e is seen[0] for e in seen)


def test_long_text_counts_are_cached_by_digest() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 200
    first = count_text_tokens("gpt-4o", text)
    assert first == len(encoding_for_model("gpt-4o").encode_ordinary(text))
    assert count_text_tokens("gpt-4o", text) == first
    variant = text + "Fin."
    # The trailing space joins "Fin"; only "." is new.
    assert count_text_tokens("gpt-4o", variant) == first + 1
    assert count_text_tokens("gpt-4", text) != 0


# --------------------------------------------------------------------------- no network


def test_counting_never_touches_the_network(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    result = run_python(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from kavach.tokens import count_text_tokens, estimate_input_tokens
        assert count_text_tokens("gpt-4o", "hello world") == 2
        assert count_text_tokens("gpt-4", "hello world") == 2
        n = estimate_input_tokens("openai", "gpt-4o-mini",
                                  messages=[{"role": "user", "content": "hello"}])
        assert n == 8, n
        assert estimate_input_tokens("anthropic", "claude-sonnet-4-5", prompt="hi") > 0
        print("ok")
        """,
        env={"TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert list(cache.iterdir()) == []


def test_import_loads_no_encoding() -> None:
    result = run_python(
        """
        import sys
        import kavach.tokens
        assert kavach.tokens._ENCODINGS == {}, kavach.tokens._ENCODINGS
        assert "tiktoken" not in sys.modules
        kavach.tokens.count_text_tokens("gpt-4o", "hi")
        assert list(kavach.tokens._ENCODINGS) == ["o200k_base"]
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------- OpenAI exact


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4-0613", 129), ("gpt-4", 129), ("gpt-4o", 124)],
)
def test_cookbook_chat_counts(model: str, expected: int) -> None:
    assert estimate_input_tokens("openai", model, messages=COOKBOOK_MESSAGES) == expected


def test_chat_overhead_formula() -> None:
    enc = encoding_for_model("gpt-4o")
    expected = 3  # reply priming
    for m in COOKBOOK_MESSAGES:
        expected += 3 + sum(len(enc.encode(v)) for v in m.values())
        expected += 1 if "name" in m else 0
    assert estimate_input_tokens("openai", "gpt-4o", messages=COOKBOOK_MESSAGES) == expected
    # By hand: "hello" and "user" are one token each: 3 + 1 + 1 + 3.
    hello = [{"role": "user", "content": "hello"}]
    assert estimate_input_tokens("openai", "gpt-4o", messages=hello) == 8


def test_content_parts_count_like_plain_text() -> None:
    plain = [{"role": "user", "content": "hello world"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    assert estimate_input_tokens("openai", "gpt-4o", messages=parts) == estimate_input_tokens(
        "openai", "gpt-4o", messages=plain
    )


@pytest.mark.parametrize(("model", "expected"), [("gpt-3.5-turbo", 105), ("gpt-4o", 101)])
def test_cookbook_tool_counts(model: str, expected: int) -> None:
    got = estimate_input_tokens("openai", model, messages=WEATHER_MESSAGES, tools=[WEATHER_TOOL])
    assert got == expected


FOO = {"name": "foo", "parameters": {"type": "object", "properties": {}}}
DO_STUFF = {"name": "do_stuff", "parameters": {"type": "object", "properties": {}}}
BING_BONG = {
    "name": "bing_bong",
    "description": "Do a bing bong",
    "parameters": {
        "type": "object",
        "properties": {
            "foo": {
                "type": "object",
                "properties": {
                    "bar": {"type": "string", "enum": ["a", "b", "c"]},
                    "baz": {"type": "boolean"},
                },
            }
        },
    },
}


# Prompt token counts from the gpt-3.5-turbo API, as recorded in hmarr/openai-chat-tokens.
@pytest.mark.parametrize(
    ("messages", "functions", "expected"),
    [
        ([{"role": "user", "content": "hello world"}], None, 9),
        (
            [
                {"role": "system", "content": "# Important: you're the best robot"},
                {"role": "user", "content": "hello robot"},
                {"role": "assistant", "content": "hello world"},
            ],
            None,
            27,
        ),
        ([{"role": "user", "content": "hello"}], [FOO], 31),
        ([{"role": "user", "content": "hello"}], [BING_BONG], 68),
        (
            [{"role": "system", "content": "Hello:"}, {"role": "user", "content": "Hi there"}],
            [DO_STUFF],
            35,
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": "",
                    "function_call": {
                        "name": "do_stuff",
                        "arguments": '{"foo": "bar", "baz": 1.5}',
                    },
                }
            ],
            None,
            26,
        ),
    ],
)
def test_counts_recorded_from_the_api(
    messages: list[dict[str, Any]], functions: list[dict[str, Any]] | None, expected: int
) -> None:
    assert estimate_input_tokens("openai", "gpt-3.5-turbo", messages=messages, tools=functions) == (
        expected
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google", "mistral"])
def test_a_resent_history_counts_the_same_as_the_first_time(provider: str) -> None:
    # Messages are remembered after their first count: an agent resends its history each
    # turn. A warm count must equal a cold one, system prompt, names and tools included.
    model = MODEL_OF[provider]
    history = [
        *WEATHER_MESSAGES,
        {"role": "user", "name": "ana", "content": "And tomorrow?"},
        {"role": "assistant", "content": "x" * 2000},  # long: remembered by hash, not kept
        {"role": "user", "content": [{"type": "text", "text": "parts are walked"}]},
    ]

    def count() -> int:
        return estimate_input_tokens(provider, model, messages=history, tools=[WEATHER_TOOL])

    tokens._message_counts.clear()
    cold = count()
    assert count() == cold
    # The cache holds numbers only (hashes and counts), never message text.
    for generation in (g for gens in tokens._message_counts.values() for g in gens):
        assert all(type(k) is int and all(type(n) is int for n in v) for k, v in generation.items())
    assert tokens._message_counts  # and it was used
    tokens._message_counts.clear()
    history.append({"role": "user", "content": "one more turn"})
    assert count() > cold
    assert count() == count()


def test_tool_shapes_agree() -> None:
    f = WEATHER_TOOL["function"]
    chat = estimate_input_tokens(
        "openai", "gpt-4o", messages=WEATHER_MESSAGES, tools=[WEATHER_TOOL]
    )
    legacy = estimate_input_tokens("openai", "gpt-4o", messages=WEATHER_MESSAGES, tools=[f])
    responses = estimate_input_tokens(
        "openai", "gpt-4o", messages=WEATHER_MESSAGES, tools=[{"type": "function", **f}]
    )
    assert chat == legacy == responses


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google", "mistral"])
def test_more_tools_cost_more(provider: str) -> None:
    model = MODEL_OF[provider]
    one = [WEATHER_TOOL]
    two = [WEATHER_TOOL, {"type": "function", "function": BING_BONG}]
    none = estimate_input_tokens(provider, model, messages=WEATHER_MESSAGES)
    with_one = estimate_input_tokens(provider, model, messages=WEATHER_MESSAGES, tools=one)
    with_two = estimate_input_tokens(provider, model, messages=WEATHER_MESSAGES, tools=two)
    assert none < with_one < with_two


def test_assistant_tool_calls_and_tool_results_count() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": '{"location": "Lisbon"}'},
    }
    history = [
        *WEATHER_MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 17}'},
    ]
    base = estimate_input_tokens("openai", "gpt-4o", messages=WEATHER_MESSAGES)
    assert estimate_input_tokens("openai", "gpt-4o", messages=history) > base + 20


def test_responses_input_shapes() -> None:
    as_text = estimate_input_tokens("openai", "gpt-4o", messages="hello world")
    as_message = estimate_input_tokens(
        "openai", "gpt-4o", messages=[{"role": "user", "content": "hello world"}]
    )
    assert as_text == as_message  # a bare string is a user message
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": "x"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "a long answer " * 20},
    ]
    assert estimate_input_tokens("openai", "gpt-4o", messages=items) > 40
    with_instructions = estimate_input_tokens(
        "openai", "gpt-4o", messages=items, system="Answer in French."
    )
    assert with_instructions > estimate_input_tokens("openai", "gpt-4o", messages=items)


def test_prompt_counts_plain_text_without_chat_overhead() -> None:
    assert estimate_input_tokens("openai", "text-embedding-3-small", prompt="hello world") == 2
    assert estimate_input_tokens("openai", "text-embedding-3-small", prompt=["a b", "c"]) == 3
    token_ids: Any = [[15339, 1917], [15339]]
    assert estimate_input_tokens("openai", "text-embedding-3-small", prompt=token_ids) == 3


def test_single_message_object_is_accepted() -> None:
    one = {"role": "user", "parts": [{"text": "hello world"}]}
    many = [one]
    assert estimate_input_tokens("google", "gemini-2.5-flash", messages=one) == (
        estimate_input_tokens("google", "gemini-2.5-flash", messages=many)
    )


def test_real_openai_sdk_objects() -> None:
    from openai.types.chat import ChatCompletionMessage

    reply = ChatCompletionMessage(role="assistant", content="hello world")
    as_dict = [{"role": "assistant", "content": "hello world"}]
    assert estimate_input_tokens("openai", "gpt-4o", messages=[reply]) == estimate_input_tokens(
        "openai", "gpt-4o", messages=as_dict
    )


# --------------------------------------------------------------------------- images


def image_message(url: str, detail: str | None = None) -> list[dict[str, Any]]:
    image: dict[str, Any] = {"url": url}
    if detail:
        image["detail"] = detail
    return [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]


def test_openai_image_tiles() -> None:
    base = estimate_input_tokens("openai", "gpt-4o", messages=[{"role": "user", "content": []}])
    url = "https://example.com/cat.png"

    def cost(msgs: list[dict[str, Any]], model: str = "gpt-4o") -> int:
        return estimate_input_tokens("openai", model, messages=msgs) - base

    assert cost(image_message(url, "low")) == 85
    assert cost(image_message(url)) == 765  # size unknown: taken as 1024x1024
    assert cost(image_message(url, "high")) == 765
    # OpenAI's worked example: 2048x4096 -> 768x1536 -> 6 tiles.
    assert cost(image_message(f"data:image/png;base64,{png_b64(2048, 4096)}", "high")) == 1105
    assert cost(image_message(f"data:image/png;base64,{png_b64(500, 400)}")) == 85 + 170
    assert cost(image_message(url), "gpt-4o-mini") == 2833 + 4 * 5667
    # Patch-based models: 1024x1024 is 1024 patches of 32px, times the multiplier.
    assert cost(image_message(url), "gpt-4.1-mini") == 1659


def test_anthropic_images() -> None:
    text_only = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}]}]
    unknown = [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    small = [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": png_b64(200, 150),
                    },
                },
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    base = estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=text_only)
    assert estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=unknown) == base + 1600
    assert estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=small) == base + 40


def test_gemini_inline_image() -> None:
    contents = [
        {
            "role": "user",
            "parts": [
                {"inline_data": {"mime_type": "image/png", "data": png(300, 300)}},
                {"text": "Describe it."},
            ],
        }
    ]
    text_only = [{"role": "user", "parts": [{"text": "Describe it."}]}]
    base = estimate_input_tokens("google", "gemini-2.5-flash", messages=text_only)
    assert estimate_input_tokens("google", "gemini-2.5-flash", messages=contents) == base + 258
    big = [
        {
            "role": "user",
            "parts": [{"inline_data": {"mime_type": "image/png", "data": png(1536, 768)}}],
        }
    ]
    assert estimate_input_tokens("google", "gemini-2.5-flash", messages=big) >= 2 * 258
    assert estimate_input_tokens("google", "gemini-3-pro-preview", messages=contents) == base + 1120


def test_the_estimate_says_how_many_of_its_tokens_are_media() -> None:
    # A reservation prices these at the model's media rates, which can be far above text's.
    url = "https://example.com/cat.png"
    total, _, media = tokens.estimate_with_content_hash(
        "openai", "gpt-4o", messages=image_message(url, "low")
    )
    assert media == 85 and total > media
    gemini = [
        {
            "role": "user",
            "parts": [
                {"inline_data": {"mime_type": "image/png", "data": png(300, 300)}},
                {"text": "Describe it."},
            ],
        }
    ]
    assert (
        tokens.estimate_with_content_hash("google", "gemini-2.5-flash", messages=gemini)[2] == 258
    )
    text = [{"role": "user", "content": "hello"}]
    assert tokens.estimate_with_content_hash("openai", "gpt-4o", messages=text)[2] == 0


def test_audio_in_a_message_is_held_for_its_length() -> None:
    def wav(seconds: int, rate: int) -> bytes:
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(b"\0\0" * rate * seconds)
        return out.getvalue()

    # 3 s at 24 kHz: 30 tokens at OpenAI's 10 a second (+1), not the 9 s its size suggests.
    data = base64.b64encode(wav(3, 24_000)).decode()
    audio = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    chat = [{"role": "user", "content": [audio, {"type": "text", "text": "Transcribe."}]}]
    assert (
        tokens.estimate_with_content_hash("openai", "gpt-4o-audio-preview", messages=chat)[2] == 31
    )
    # Gemini: 32 tokens a second, raw bytes in inline_data.
    blob = {"inline_data": {"mime_type": "audio/wav", "data": wav(4, 16_000)}}
    gemini = [{"role": "user", "parts": [blob]}]
    assert (
        tokens.estimate_with_content_hash("google", "gemini-2.5-flash", messages=gemini)[2] == 129
    )


def test_audio_and_pdf_are_counted() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 40_000, "format": "wav"}}
    with_audio = [{"role": "user", "content": [audio]}]
    assert estimate_input_tokens("openai", "gpt-4o-audio-preview", messages=with_audio) > 10
    pdf = b"%PDF-1.4\n" + b"1 0 obj << /Type /Page >> endobj\n" * 3 + b"%%EOF"
    document = {
        "type": "document",
        "source": {
            "type": "base64",
            "media_type": "application/pdf",
            "data": base64.b64encode(pdf).decode(),
        },
    }
    msgs = [{"role": "user", "content": [document, {"type": "text", "text": "Summarise."}]}]
    assert estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=msgs) > 3 * 3000


# --------------------------------------------------------------------------- conservative


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["anthropic", "google", "mistral", "acme"]))
def test_other_providers_never_count_below_o200k(text: str, provider: str) -> None:
    model = {
        "anthropic": "claude-sonnet-4-5",
        "google": "gemini-2.5-pro",
        "mistral": "mistral-large-latest",
        "acme": "acme-1",
    }[provider]
    msgs = [{"role": "user", "content": text}]
    exact = estimate_input_tokens("openai", "gpt-4o", messages=msgs)
    assert estimate_input_tokens(provider, model, messages=msgs) >= exact
    assert estimate_input_tokens(provider, model, prompt=text) >= count_text_tokens("gpt-4o", text)


def test_anthropic_estimate_includes_safety_factor_and_system() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    o200k = count_text_tokens("gpt-4o", text)
    msgs = [{"role": "user", "content": text}]
    estimate = estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=msgs)
    assert estimate >= 1.35 * o200k
    with_system = estimate_input_tokens(
        "anthropic", "claude-sonnet-4-5", messages=msgs, system=[{"type": "text", "text": text}]
    )
    assert with_system >= estimate + 1.35 * o200k


def test_anthropic_tools_add_the_tool_prompt() -> None:
    tool = {
        "name": "get_weather",
        "description": "Get the weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    msgs = [{"role": "user", "content": "hi"}]
    without = estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=msgs)
    assert estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=msgs, tools=[tool]) > (
        without + 530
    )


def test_model_name_decides_the_rules() -> None:
    msgs = [{"role": "user", "content": "hello world"}]
    exact = estimate_input_tokens("openai", "gpt-4o", messages=msgs)
    # An OpenAI-compatible server running another model is not counted as OpenAI.
    assert estimate_input_tokens("openai", "llama-3.1-70b", messages=msgs) > exact
    # Claude through a proxy is still Claude.
    proxied = estimate_input_tokens("openrouter", "anthropic/claude-sonnet-4-5", messages=msgs)
    assert proxied == estimate_input_tokens("anthropic", "claude-sonnet-4-5", messages=msgs)
    assert estimate_input_tokens("azure", "openai/gpt-4o", messages=msgs) == exact
    mistral = estimate_input_tokens("mistral", "mistral-large-latest", messages=msgs)
    assert estimate_input_tokens("openrouter", "mistralai/open-mistral-nemo", messages=msgs) == (
        mistral
    )


def test_gemini_content_shapes() -> None:
    from google.genai import types

    as_text = estimate_input_tokens("google", "gemini-2.5-flash", messages="hello world")
    as_list = estimate_input_tokens("google", "gemini-2.5-flash", messages=["hello world"])
    as_dict = estimate_input_tokens(
        "google",
        "gemini-2.5-flash",
        messages=[{"role": "user", "parts": [{"text": "hello world"}]}],
    )
    as_sdk = estimate_input_tokens(
        "google",
        "gemini-2.5-flash",
        messages=[types.Content(role="user", parts=[types.Part(text="hello world")])],
    )
    assert as_text == as_list == as_dict == as_sdk > 0

    class Part:  # any object with the right attribute names will do
        def __init__(self, text: str) -> None:
            self.text = text

    class Content:
        def __init__(self, role: str, parts: list[Part]) -> None:
            self.role, self.parts = role, parts

    plain = estimate_input_tokens(
        "google", "gemini-2.5-flash", messages=[Content("user", [Part("hello world")])]
    )
    assert plain == as_dict

    call = types.Part(function_call=types.FunctionCall(name="lookup", args={"q": "weather"}))
    with_call = [types.Content(role="model", parts=[call])]
    assert estimate_input_tokens("google", "gemini-2.5-flash", messages=with_call) > 10


def test_real_anthropic_sdk_blocks() -> None:
    from anthropic.types import TextBlock, ToolUseBlock

    blocks = [
        TextBlock(type="text", text="Let me check."),
        ToolUseBlock(type="tool_use", id="tu_1", name="get_weather", input={"city": "Lisbon"}),
    ]
    as_dicts = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Lisbon"}},
    ]
    sdk = estimate_input_tokens(
        "anthropic", "claude-sonnet-4-5", messages=[{"role": "assistant", "content": blocks}]
    )
    plain = estimate_input_tokens(
        "anthropic", "claude-sonnet-4-5", messages=[{"role": "assistant", "content": as_dicts}]
    )
    assert sdk == plain > 0


def test_docstring_examples() -> None:
    result = doctest.testmod(tokens)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_packaged_ranks_parse_like_tiktoken(name: str) -> None:
    import gzip

    path = ROOT / "kavach" / "_encodings" / f"{name}.tiktoken.gz"
    data = gzip.decompress(path.read_bytes())
    # tiktoken.load.load_tiktoken_bpe's parse, without its download cache.
    expected = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    assert tokens._load_ranks(name) == expected


def test_a_message_edited_in_place_is_counted_again() -> None:
    # The cache is keyed by content, never by object: an agent that rewrites its history
    # (summarising, truncating) gets the new count, and the guard sees a new request.
    history = [{"role": "user", "content": "short"}]
    before = estimate_input_tokens("openai", "gpt-4o", messages=history)
    tokens_before, content_before, _ = tokens.estimate_with_content_hash(
        "openai", "gpt-4o", messages=history
    )
    history[0]["content"] = "a much longer message than the one that was counted first " * 4
    tokens_after, content_after, _ = tokens.estimate_with_content_hash(
        "openai", "gpt-4o", messages=history
    )
    assert tokens_before == before < tokens_after
    assert content_before != content_after and content_after is not None


def test_the_message_cache_stays_bounded_and_keeps_counting_right() -> None:
    tokens._message_counts.clear()
    size = tokens._MESSAGE_CACHE_SIZE
    first = [{"role": "user", "content": "the first message of a long session"}]
    expected = estimate_input_tokens("openai", "gpt-4o", messages=first)
    for i in range(3 * size):
        estimate_input_tokens("openai", "gpt-4o", messages=[{"role": "user", "content": f"m{i}"}])
    newer, older = tokens._message_counts["o200k_base"]
    assert len(newer) <= size and len(older) <= size
    assert estimate_input_tokens("openai", "gpt-4o", messages=first) == expected


def test_a_reservation_bounds_short_new_texts_from_above_and_the_estimate_stays_exact() -> None:
    samples = [
        "ok",
        "What's the weather in Paris tomorrow?",
        "Summarise item 1000123 of the report in one line.",
        "x" * 128,
        "    indented\tcode = [1, 2, 3]  # and a comment!!",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9 ,.;:?!",
    ]
    for provider in ("openai", "anthropic"):
        model = MODEL_OF[provider]
        for text in samples:
            messages = [{"role": "user", "content": text}]
            exact = estimate_input_tokens(provider, model, messages=messages)
            bounded, _, _ = tokens.estimate_with_content_hash(
                provider, model, messages=messages, bounded=True
            )
            assert exact <= bounded  # never under-counts
            assert bounded <= exact + 2 * len(text)  # and over-counts at most the text
            # The exact count is not disturbed by the bounded one cached beside it.
            assert estimate_input_tokens(provider, model, messages=messages) == exact
    long = [{"role": "user", "content": "word " * 40}]  # 200 characters: counted exactly
    assert tokens.estimate_with_content_hash("openai", "gpt-4o", messages=long, bounded=True)[
        0
    ] == estimate_input_tokens("openai", "gpt-4o", messages=long)
