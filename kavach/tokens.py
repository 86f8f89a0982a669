"""Pre-call token estimates, fully offline.

The guard reserves the worst-case cost of a call before it is made, so it needs the
input token count before the provider reports it. This module counts it locally:

- OpenAI models are counted exactly with tiktoken, using OpenAI's chat-format overhead.
- Other providers' tokenizers are not public, so their counts are conservative
  estimates built on the same tokenizer with a safety factor (see
  :func:`estimate_input_tokens`).

The ``o200k_base`` and ``cl100k_base`` encodings ship inside the package
(``kavach/_encodings``, checked against tiktoken's own sha256 hashes), so nothing is
downloaded, ever: tiktoken's usual first-use download fails offline and behind
firewalls. Each encoding loads lazily on first use, once per process; importing this
module loads nothing and does not import tiktoken.

>>> count_text_tokens("gpt-4o", "hello world")
2
>>> estimate_input_tokens("openai", "gpt-4o", messages=[{"role": "user", "content": "hello"}])
8
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kavach import _media
from kavach._media import ProviderKind
from kavach.errors import KavachError

if TYPE_CHECKING:
    import tiktoken

__all__ = ["count_text_tokens", "encoding_for_model", "estimate_input_tokens"]

# --------------------------------------------------------------------------- encodings

# sha256 of the decompressed files; the same values tiktoken checks its downloads against
# (tiktoken_ext/openai_public.py, ``expected_hash=``).
_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

# The split patterns live inside tiktoken's constructor functions, which download, so
# they are copied here; tests/kavach/test_tokens.py checks them against tiktoken's.
_PAT_STR = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
        r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}

# Loaded encodings by name. Filled once per name under _LOAD_LOCK, read without it.
_ENCODINGS: dict[str, tiktoken.Encoding] = {}
_LOAD_LOCK = threading.Lock()


def _special_tokens(name: str) -> dict[str, int]:
    from tiktoken_ext import openai_public as op  # type: ignore[import-untyped]

    if name == "o200k_base":
        return {op.ENDOFTEXT: 199999, op.ENDOFPROMPT: 200018}
    return {
        op.ENDOFTEXT: 100257,
        op.FIM_PREFIX: 100258,
        op.FIM_MIDDLE: 100259,
        op.FIM_SUFFIX: 100260,
        op.ENDOFPROMPT: 100276,
    }


def _load_ranks(name: str) -> dict[bytes, int]:
    import binascii
    from importlib import resources

    packed = (resources.files("kavach") / "_encodings" / f"{name}.tiktoken.gz").read_bytes()
    data = gzip.decompress(packed)
    if hashlib.sha256(data).hexdigest() != _SHA256[name]:
        raise KavachError(
            f"The packaged {name} encoding is damaged (sha256 mismatch); "
            "reinstall agentkavach to restore kavach/_encodings."
        )
    # One "base64token rank" pair per line. The hash above pins the content, in which
    # the ranks run 0, 1, 2 ... in line order, so they need not be parsed.
    tokens = data.split()[0::2]
    return dict(zip(map(binascii.a2b_base64, tokens), range(len(tokens)), strict=True))


def _get_encoding(name: str) -> tiktoken.Encoding:
    encoding = _ENCODINGS.get(name)
    if encoding is not None:
        return encoding
    with _LOAD_LOCK:
        encoding = _ENCODINGS.get(name)
        if encoding is None:
            import tiktoken

            encoding = tiktoken.Encoding(
                name,
                pat_str=_PAT_STR[name],
                mergeable_ranks=_load_ranks(name),
                special_tokens=_special_tokens(name),
            )
            _ENCODINGS[name] = encoding
    return encoding


# --------------------------------------------------------------------------- models

_CL100K_MODEL = re.compile(
    r"gpt-4(?:-|$)|gpt-3\.5|gpt-35|text-embedding-3|text-embedding-ada-002"
    r"|davinci-002|babbage-002"
)
_OPENAI_MODEL = re.compile(
    r"gpt-(?!oss)|chatgpt-|o\d|text-embedding-|omni-moderation|text-moderation|codex-"
    r"|computer-use-|davinci-002|babbage-002"
)


def _bare_model(model: str) -> str:
    """``openai/gpt-4o`` -> ``gpt-4o``; ``ft:gpt-4o-mini:org::id`` -> ``gpt-4o-mini``."""
    bare = model.strip().lower().rsplit("/", 1)[-1]
    if bare.startswith("ft:"):
        bare = bare[3:].split(":", 1)[0]
    return bare


@functools.lru_cache(maxsize=512)
def _encoding_name(model: str) -> str:
    return "cl100k_base" if _CL100K_MODEL.match(_bare_model(model)) else "o200k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for ``model``, loaded from the packaged files.

    ``cl100k_base`` for gpt-4 (and gpt-4-turbo), gpt-3.5, text-embedding-3-* and
    text-embedding-ada-002; ``o200k_base`` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5*,
    o1/o3/o4*, chatgpt-4o, omni-moderation and any name it does not know. Provider
    prefixes (``openai/gpt-4o``) and fine-tune names (``ft:gpt-4o-mini:org::id``) are
    understood. The first call for an encoding loads it (a few hundred ms); later calls
    return the same object.

    >>> encoding_for_model("gpt-4o").name
    'o200k_base'
    >>> encoding_for_model("gpt-3.5-turbo").name
    'cl100k_base'
    """
    return _get_encoding(_encoding_name(model))


# --------------------------------------------------------------------------- counting

# Repeated text is the common case: an agent resends its system prompt, tool schemas and
# history on every turn. Short strings are cached by value; long ones by their hash, so
# the cache never pins large prompts in memory.
_SHORT_TEXT = 512
_LONG_CACHE_SIZE = 1024
_long_counts: OrderedDict[tuple[str, int, int], int] = OrderedDict()
_long_lock = threading.Lock()


@functools.lru_cache(maxsize=8192)
def _count_short(encoding: str, text: str) -> int:
    return len(_get_encoding(encoding).encode_ordinary(text))


def _count(encoding: str, text: str) -> int:
    if not text:
        return 0
    if len(text) <= _SHORT_TEXT:
        return _count_short(encoding, text)
    # Python's string hash (cached on the string, so a resent text costs nothing to key)
    # stands for the text, as in the message cache below; the text itself is not kept.
    key = (encoding, len(text), hash(text))
    with _long_lock:
        cached = _long_counts.get(key)
        if cached is not None:
            _long_counts.move_to_end(key)
            return cached
    # Special-token strings inside user text are ordinary text to the provider.
    count = len(_get_encoding(encoding).encode_ordinary(text))
    with _long_lock:
        _long_counts[key] = count
        if len(_long_counts) > _LONG_CACHE_SIZE:
            _long_counts.popitem(last=False)
    return count


def count_text_tokens(model: str, text: str) -> int:
    """Tokens in ``text`` with ``model``'s tiktoken encoding; no chat overhead, no factor.

    For non-OpenAI models this is the ``o200k_base`` count, not the provider's own;
    :func:`estimate_input_tokens` turns it into a conservative estimate.
    Special-token strings such as ``<|endoftext|>`` count as ordinary text.

    >>> count_text_tokens("gpt-4o", "hello world")
    2
    """
    return _count(_encoding_name(model), text)


# --------------------------------------------------------------------------- providers

_OPENAI: ProviderKind = "openai"
_ANTHROPIC: ProviderKind = "anthropic"
_GOOGLE: ProviderKind = "google"
_MISTRAL: ProviderKind = "mistral"
_OTHER: ProviderKind = "other"

# Non-OpenAI text is counted with o200k and multiplied by these. Claude's tokenizer
# yields noticeably more tokens than OpenAI's for the same text (more again for code
# and non-English text); Mistral's older 32k-vocabulary tokenizers do too. Gemini's
# 256k vocabulary is usually at least as compact as o200k. Unknown providers get the
# largest factor.
_SAFETY_FACTOR: dict[ProviderKind, float] = {
    _ANTHROPIC: 1.35,
    _GOOGLE: 1.25,
    _MISTRAL: 1.35,
    _OTHER: 1.35,
}
# Role markers and separators around each message, and the turn opener, for providers
# that do not document them; generous so they cover every provider we know.
_OTHER_PER_MESSAGE = 6
_OTHER_PER_REQUEST = 10
# Anthropic adds a tool-use system prompt when tools are present (346 tokens for
# Claude 4 and 3.7, 530 for Claude 3 Opus, the largest documented).
_ANTHROPIC_TOOLS_PROMPT = 530

_PROVIDER_ALIASES: dict[str, ProviderKind] = {
    "openai": _OPENAI,
    "azure": _OPENAI,
    "azure_openai": _OPENAI,
    "anthropic": _ANTHROPIC,
    "google": _GOOGLE,
    "gemini": _GOOGLE,
    "vertex": _GOOGLE,
    "vertex_ai": _GOOGLE,
    "google_genai": _GOOGLE,
    "mistral": _MISTRAL,
    "mistralai": _MISTRAL,
}
_MISTRAL_MODEL = re.compile(r"(mistral|mixtral|codestral|pixtral|ministral|magistral|devstral)")


@functools.lru_cache(maxsize=512)
def _provider_kind(provider: str, model: str) -> ProviderKind:
    """Which counting rules apply. The model name decides first: it is what is billed."""
    bare = _bare_model(model)
    if _OPENAI_MODEL.match(bare):
        return _OPENAI
    if "claude" in bare:
        return _ANTHROPIC
    if bare.startswith(("gemini", "gemma")):
        return _GOOGLE
    if _MISTRAL_MODEL.search(bare):
        return _MISTRAL
    kind = _PROVIDER_ALIASES.get(provider.strip().lower().replace("-", "_"), _OTHER)
    # An OpenAI-compatible server (vLLM, Ollama, ...) behind provider "openai" runs a
    # model with its own tokenizer, so an unknown model name is never counted exactly.
    return _OTHER if kind == _OPENAI else kind


@functools.lru_cache(maxsize=512)
def _model_rules(provider: str, model: str) -> tuple[ProviderKind, str, str]:
    """The counting rules, the bare model name and the encoding for one provider and model."""
    kind = _provider_kind(provider, model)
    encoding = _encoding_name(model) if kind == _OPENAI else "o200k_base"
    return kind, _bare_model(model), encoding


# --------------------------------------------------------------------------- walking


@dataclass(slots=True)
class _Tally:
    """What a request contains, before the provider's formula turns it into tokens."""

    kind: ProviderKind
    model: str  # bare, as the media cost tables want it
    encoding: str
    text: int = 0  # tokens of plain text, with the model's (or o200k) encoding
    media: int = 0  # images, audio, documents: already in provider tokens
    messages: int = 0
    names: int = 0
    calls: int = 0  # tool calls made by the assistant in earlier turns
    first_system: str | None = None

    def add_text(self, text: str) -> None:
        self.text += _count(self.encoding, text)


def _as_mapping(obj: Any) -> Mapping[str, Any] | None:
    """A dict view of a message, part or tool: dicts, pydantic models, plain objects."""
    if isinstance(obj, Mapping):
        return obj
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            dumped = dump(exclude_none=True)
        except TypeError:  # a model_dump that is not pydantic's
            dumped = dump()
        return dumped if isinstance(dumped, Mapping) else None
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        return {k: v for k, v in attrs.items() if not k.startswith("_")}
    return None


def _get(d: Mapping[str, Any], snake: str, camel: str) -> Any:
    value = d.get(snake)
    return d.get(camel) if value is None else value


def _to_json(value: Any) -> str:
    import json

    def default(obj: Any) -> Any:
        mapping = _as_mapping(obj)
        return dict(mapping) if mapping is not None else str(obj)

    return json.dumps(value, default=default, ensure_ascii=False)


# The per-message part of a count, for the common plain-text message (a dict whose values
# are all strings): an agent resends its whole history every turn, so each message is
# counted once. Keyed by the hash of its items, which Python computes from the strings'
# cached hashes, so nothing is pinned (no prompt text is kept) and a resent message costs a
# few operations whatever its length. A 64-bit hash with a per-process key stands for the
# content: two different messages share one with a chance of about 1 in 10^16 per lookup.
# Two generations per encoding: when the newer fills, it becomes the older and a new one
# starts, so the cache stays bounded without a clear that would recount whole histories.
_MESSAGE_CACHE_SIZE = 4096
_message_counts: dict[str, list[dict[int, tuple[int, int]]]] = {}
_SKIPPED_KEYS = frozenset(("type", "id", "status"))
# Keys whose value _walk_message reads as structure, never as text.
_STRUCTURED_KEYS = frozenset(("tool_calls", "function_call"))


def _add_message(tally: _Tally, message: Any) -> None:
    if type(message) is dict and "role" in message:
        counts = _plain_messages(tally.encoding, [message])
        if counts is not None:
            tally.messages += 1
            tally.text += counts[0]
            tally.names += counts[1]
            if tally.first_system is None:
                tally.first_system = counts[2]
            return
    _walk_message(tally, message)


def _plain_messages(
    encoding: str, messages: list[Any], bounded: bool = False
) -> tuple[int, int, Any, int] | None:
    """Text tokens, names, the first system content and a content hash of messages that are
    all plain (dicts with a role whose values are strings or None), from the message cache;
    None if any message is not plain, so the caller walks them. ``bounded``: see
    ``estimate_with_content_hash``."""
    text = names = 0
    first_system = None
    cache_key = encoding + _BOUNDED_SUFFIX if bounded else encoding
    generations = _message_counts.get(cache_key)
    if generations is None:
        generations = _message_counts.setdefault(cache_key, [{}, {}])
    newer, older = generations
    hashes = []
    for message in messages:
        if type(message) is not dict or "role" not in message:
            return None
        try:
            key = hash(tuple(message.items()))
        except TypeError:  # a value that is a list (parts, tool calls)
            return None
        counts = newer.get(key)
        if counts is None:
            counts = older.get(key)
            if counts is None:
                counts = _plain_message_counts(encoding, message, bounded)
                if counts is None:
                    return None
            if len(newer) >= _MESSAGE_CACHE_SIZE:
                generations[1] = newer
                newer = generations[0] = {}
            newer[key] = counts
        text += counts[0]
        names += counts[1]
        hashes.append(key)
        if first_system is None and message["role"] in ("system", "developer"):
            content = message.get("content")
            first_system = message.get("parts") if content is None else content
    return text, names, first_system, hash(tuple(hashes))


def _plain_message_counts(
    encoding: str, message: dict[str, Any], bounded: bool = False
) -> tuple[int, int] | None:
    """Text tokens and names of a message whose values are all strings (or None), as
    ``_walk_message`` counts them; None for any other message. The common case, in one loop.
    """
    text = names = 0
    for key, value in message.items():
        if value is None:
            continue
        if type(value) is not str or key in _STRUCTURED_KEYS:
            return None
        if key in _SKIPPED_KEYS:
            continue
        if key == "name":
            names += 1
        if len(value) <= _REPEATED_TEXT:  # role, name, ids: few, and seen on every call
            text += _count_short(encoding, value) if value else 0
        elif bounded and len(value) <= _BOUNDED_TEXT and value.isascii():
            text += len(value)  # one token a byte at most: an upper bound, no tokenizer
        else:  # content: the message cache keeps its count, the text cache need not
            text += _count_new(encoding, value)
    return text, names


# A reservation (bounded=True) counts a new ASCII text of up to this many characters as one
# token a character: every token is at least a byte, so this never under-counts, and it
# spares the hot path the tokenizer, which costs several microseconds on a cold CPU cache
# inside a real call. It over-counts such a text by a hundred tokens at most, a hold of
# well under a tenth of a cent that the call's settlement gives back.
_BOUNDED_TEXT = 128
_BOUNDED_SUFFIX = ":bounded"


# Values up to this long (roles, names, ids) go through the text cache in plain messages.
_REPEATED_TEXT = 32
# Each encoding's Rust encode function, called without tiktoken's Python wrapper (one frame
# less for every new message); the wrapper's surrogate handling is kept by _count_new.
_ENCODE: dict[str, Callable[[str], list[int]]] = {}


def _count_new(encoding: str, text: str) -> int:
    encode = _ENCODE.get(encoding)
    if encode is None:
        loaded = _get_encoding(encoding)
        core = getattr(loaded, "_core_bpe", None)
        encode = _ENCODE[encoding] = getattr(core, "encode_ordinary", loaded.encode_ordinary)
    try:
        return len(encode(text))
    except UnicodeEncodeError:  # lone surrogates: tiktoken's wrapper replaces them
        return len(_get_encoding(encoding).encode_ordinary(text))


def _walk_message(tally: _Tally, message: Any) -> None:
    if isinstance(message, str):  # Gemini contents / Responses input: a user turn
        message = {"role": "user", "content": message}
    d = _as_mapping(message)
    if d is None:
        tally.messages += 1
        tally.add_text(str(message))
        return
    if "role" not in d and "parts" not in d and d.get("type") not in (None, "message"):
        _add_item(tally, d)
        return
    if "role" not in d and "parts" not in d and "content" not in d:
        _add_part(tally, d)  # a bare Gemini part
        return
    tally.messages += 1
    for key, value in d.items():
        if value is None or key in ("type", "id", "status"):
            continue
        if key in ("content", "parts"):
            if d.get("role") in ("system", "developer") and tally.first_system is None:
                tally.first_system = value if isinstance(value, str) else ""
            _add_content(tally, value)
        elif key == "name":
            tally.names += 1
            tally.add_text(str(value))
        elif key == "tool_calls":
            for call in value:
                _add_call(tally, (_as_mapping(call) or {}).get("function"))
        elif key == "function_call":
            _add_call(tally, value)
        elif isinstance(value, str):  # role, tool_call_id, refusal ... as the cookbook does
            tally.add_text(value)


def _add_call(tally: _Tally, call: Any) -> None:
    d = _as_mapping(call) or {}
    tally.calls += 1
    tally.add_text(str(d.get("name") or ""))
    arguments = d.get("arguments", d.get("args", d.get("input")))
    tally.add_text(arguments if isinstance(arguments, str) else _to_json(arguments or {}))


def _add_item(tally: _Tally, item: Mapping[str, Any]) -> None:
    """An OpenAI Responses input item that is not a message."""
    tally.messages += 1
    kind = item.get("type")
    if kind in ("function_call", "custom_tool_call"):
        _add_call(tally, item)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        _add_content(tally, item.get("output"))
    elif kind == "reasoning":
        _add_content(tally, item.get("summary"))
        _add_content(tally, item.get("content"))
    elif kind == "item_reference":
        pass  # a stored item; its size is not known here
    else:
        _add_part(tally, item)


def _add_content(tally: _Tally, content: Any) -> None:
    if content is None:
        return
    if isinstance(content, str):
        tally.add_text(content)
    elif isinstance(content, (bytes, bytearray)):
        tally.media += _media.document_tokens(tally.kind, tally.model, 1)
    elif isinstance(content, Sequence):
        for part in content:
            _add_part(tally, part)
    else:
        _add_part(tally, content)


def _add_part(tally: _Tally, part: Any) -> None:
    if isinstance(part, str):
        tally.add_text(part)
        return
    d = _as_mapping(part)
    if d is None:
        tally.add_text(str(part))
        return
    kind = d.get("type")
    text = d.get("text")
    if kind in ("text", "input_text", "output_text") or (kind is None and isinstance(text, str)):
        tally.add_text(str(text or ""))
    elif kind == "refusal":
        tally.add_text(str(d.get("refusal") or ""))
    elif kind in ("thinking", "reasoning_text", "summary_text"):
        tally.add_text(str(d.get("thinking") or d.get("text") or ""))
    elif kind == "redacted_thinking":
        pass  # encrypted; not readable, and usually dropped from the context
    elif kind == "image_url":  # Chat Completions, Mistral
        image = d.get("image_url")
        spec = _as_mapping(image) or {}
        url = image if isinstance(image, str) else spec.get("url")
        _add_image_url(tally, url, spec.get("detail"))
    elif kind == "input_image":  # Responses
        _add_image_url(tally, d.get("image_url"), d.get("detail"))
    elif kind == "image":  # Anthropic
        _add_source(tally, d.get("source"), default_mime="image/")
    elif kind == "input_audio":
        audio = _as_mapping(d.get("input_audio")) or {}
        data = audio.get("data") or ""
        tally.media += _media.audio_tokens(tally.kind, data, str(audio.get("format")))
    elif kind in ("file", "input_file"):
        spec = _as_mapping(d.get("file")) or d
        _add_data_url(tally, spec.get("file_data"), default_mime="application/pdf")
    elif kind == "document":  # Anthropic
        for key in ("title", "context"):
            if isinstance(d.get(key), str):
                tally.add_text(d[key])
        _add_source(tally, d.get("source"), default_mime="application/pdf")
    elif kind == "tool_use":
        _add_call(tally, d)
    elif kind == "tool_result":
        _add_content(tally, d.get("content"))
    elif (inline := _get(d, "inline_data", "inlineData")) is not None:  # Gemini
        blob = _as_mapping(inline) or {}
        _add_blob(tally, str(_get(blob, "mime_type", "mimeType") or ""), blob.get("data") or b"")
    elif _get(d, "file_data", "fileData") is not None:  # Gemini file by URI: size unknown
        ref = _as_mapping(_get(d, "file_data", "fileData")) or {}
        _add_unknown_media(tally, str(_get(ref, "mime_type", "mimeType") or ""))
    elif (call := _get(d, "function_call", "functionCall")) is not None:
        _add_call(tally, call)
    elif (result := _get(d, "function_response", "functionResponse")) is not None:
        tally.add_text(_to_json(result))
    elif (code := _get(d, "executable_code", "executableCode")) is not None:
        tally.add_text(str((_as_mapping(code) or {}).get("code") or ""))
    elif (output := _get(d, "code_execution_result", "codeExecutionResult")) is not None:
        tally.add_text(str((_as_mapping(output) or {}).get("output") or ""))
    else:
        # Unknown part: count it as the JSON it is sent as, which over-counts a little.
        tally.add_text(_to_json(d))


def _add_image_url(tally: _Tally, url: Any, detail: Any) -> None:
    size = None
    if isinstance(url, str) and (parsed := _media.split_data_url(url)) is not None:
        size = _media.image_size(_media.decode_base64_prefix(parsed[1]))
    detail_text = detail if isinstance(detail, str) else None
    tally.media += _media.image_tokens(tally.kind, tally.model, size, detail_text)


def _add_data_url(tally: _Tally, url: Any, default_mime: str) -> None:
    parsed = _media.split_data_url(url) if isinstance(url, str) else None
    if parsed is None:
        _add_unknown_media(tally, default_mime)
    else:
        _add_blob(tally, parsed[0], parsed[1])


def _add_source(tally: _Tally, source: Any, default_mime: str) -> None:
    """An Anthropic content source: base64, text, nested content, or a URL / file id."""
    d = _as_mapping(source) or {}
    kind = d.get("type")
    mime = str(d.get("media_type") or default_mime)
    if kind == "base64":
        _add_blob(tally, mime, d.get("data") or "")
    elif kind == "text":
        tally.add_text(str(d.get("data") or ""))
    elif kind == "content":
        _add_content(tally, d.get("content"))
    else:
        _add_unknown_media(tally, mime)


def _add_blob(tally: _Tally, mime: str, data: str | bytes) -> None:
    mime = mime.lower()
    if mime.startswith("image/"):
        size = _media.image_size(_media.decode_base64_prefix(data))
        tally.media += _media.image_tokens(tally.kind, tally.model, size, None)
    elif mime.startswith("audio/"):
        tally.media += _media.audio_tokens(tally.kind, data, mime)
    elif mime.startswith("video/"):
        tally.media += _media.video_tokens(_media.base64_size(data))
    elif mime.startswith("text/"):
        raw = data if isinstance(data, bytes) else _media.decode_base64_prefix(data, 1 << 62)
        tally.add_text(raw.decode("utf-8", "replace"))
    else:
        raw = data if isinstance(data, bytes) else _media.decode_base64_prefix(data, 1 << 62)
        tally.media += _media.document_tokens(tally.kind, tally.model, _media.pdf_pages(raw))


def _add_unknown_media(tally: _Tally, mime: str) -> None:
    """A file referenced by URL or id: its size is not known, so assume a typical one."""
    if mime.startswith("image"):
        tally.media += _media.image_tokens(tally.kind, tally.model, None, None)
    else:
        tally.media += _media.document_tokens(tally.kind, tally.model, 1)


# --------------------------------------------------------------------------- tools


def _function_def(tool: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function definition inside an OpenAI tool (chat or Responses) or a legacy function."""
    inner = _as_mapping(tool.get("function"))
    if inner is not None:
        return inner
    if tool.get("type") in (None, "function") and isinstance(tool.get("name"), str):
        return tool
    return None


def _ts_type(schema: Mapping[str, Any], indent: int) -> str:
    kind = schema.get("type")
    enum = schema.get("enum")
    if kind == "string":
        return " | ".join(f'"{v}"' for v in enum) if enum else "string"
    if kind in ("number", "integer"):
        return " | ".join(str(v) for v in enum) if enum else "number"
    if kind in ("boolean", "null"):
        return str(kind)
    if kind == "object":
        return "{\n" + _ts_properties(schema, indent + 2) + "\n}"
    if kind == "array":
        items = _as_mapping(schema.get("items"))
        return f"{_ts_type(items, indent)}[]" if items else "any[]"
    return "any"


def _ts_properties(schema: Mapping[str, Any], indent: int) -> str:
    required = schema.get("required") or ()
    lines = []
    for name, prop in (schema.get("properties") or {}).items():
        p = _as_mapping(prop) or {}
        if p.get("description"):
            lines.append(f"// {p['description']}")
        optional = "" if name in required else "?"
        lines.append(f"{name}{optional}: {_ts_type(p, indent)},")
    return "\n".join(" " * indent + line for line in lines)


def _openai_functions_text(functions: Sequence[Mapping[str, Any]]) -> str:
    """Function definitions as OpenAI renders them for the model: a TypeScript namespace."""
    lines = ["namespace functions {", ""]
    for f in functions:
        if f.get("description"):
            lines.append(f"// {f['description']}")
        params = _as_mapping(f.get("parameters")) or {}
        if params.get("properties"):
            lines += [f"type {f.get('name')} = (_: {{", _ts_properties(params, 0), "}) => any;"]
        else:
            lines.append(f"type {f.get('name')} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _openai_tools_tokens(tally: _Tally, tools: Sequence[Any]) -> int:
    functions: list[Mapping[str, Any]] = []
    tokens = 0
    for tool in tools:
        d = _as_mapping(tool) or {}
        f = _function_def(d)
        if f is not None:
            functions.append(f)
        else:  # built-in tools (web_search, file_search ...): their JSON, as an upper bound
            tokens += _count(tally.encoding, _to_json(d))
    if not functions:
        return tokens
    # From hmarr/openai-chat-tokens, checked against the API: 9 tokens of framing, of
    # which 4 are saved by reusing an existing system message, whose text then gains a
    # trailing newline.
    tokens += _count(tally.encoding, _openai_functions_text(functions)) + 9
    if tally.first_system is not None:
        padded = _count(tally.encoding, tally.first_system + "\n")
        tokens += padded - _count(tally.encoding, tally.first_system) - 4
    return tokens


# --------------------------------------------------------------------------- estimate


def estimate_input_tokens(
    provider: str,
    model: str,
    *,
    messages: str | Sequence[Any] | None = None,
    prompt: str | Sequence[str] | None = None,
    system: Any = None,
    tools: Sequence[Any] | None = None,
) -> int:
    """Input tokens a call will be billed for, counted before it is made.

    ``messages`` are in the provider's own shape, as dicts or SDK objects (pydantic
    models are read through ``model_dump()``):

    - OpenAI Chat Completions messages (``role``, ``content`` as text or parts,
      ``name``, ``tool_calls``, ``tool_call_id``) or Responses ``input`` (a string or
      a list of items);
    - Anthropic messages with content blocks (text, image, tool_use, tool_result,
      document, thinking);
    - Gemini ``contents``: a string, a list of strings, or ``{"role", "parts"}``
      contents whose parts hold text, inline_data, file_data, function_call ...

    A single message or content object is accepted as well as a list.

    ``prompt`` is plain input text (completions, embeddings); ``system`` is the system
    prompt (OpenAI instructions, Anthropic ``system``, Gemini ``system_instruction``);
    ``tools`` are tool or function definitions in the provider's shape.

    OpenAI models are counted exactly as OpenAI's cookbook does: each message costs
    3 tokens plus its role and content, a ``name`` adds 1, and the reply is primed
    with 3. Function tools are rendered the way OpenAI shows them to the model (a
    TypeScript namespace), which matches the API on the cookbook's examples. Images
    follow OpenAI's vision pricing: a base cost plus a cost per 512px tile (85 + 170
    per tile for gpt-4o and gpt-4.1, other values for gpt-4o-mini, o1, o3 and gpt-5;
    32px patches for the mini and nano models); ``detail: "low"`` is the base cost, and
    an image whose size cannot be read from a data URL is taken as 1024x1024 (765 for
    gpt-4o).

    Other providers do not publish their tokenizers, so the estimate is conservative:
    an under-count would let a call spend past its budget, an over-count only holds a
    little more money until the call settles. Text is counted with ``o200k_base`` and
    multiplied by 1.35 (Anthropic, Mistral, unknown) or 1.25 (Google), with 6 tokens
    per message and 10 per request on top. Images follow the provider's formula
    (Anthropic width * height / 750, at most 1,600, and 1,600 when the size is unknown;
    Gemini 258 per 768px tile, 1,120 for Gemini 3). Anthropic tools add the tool-use
    system prompt (530 tokens, the largest documented) to their JSON. A model name
    decides before the provider: ``claude-*`` through a proxy counts as Anthropic, and an
    unknown model behind provider ``"openai"`` (an OpenAI-compatible server) is counted
    conservatively.

    Audio, video and PDFs are estimated from their size (PDF pages at 3,000 tokens,
    Gemini 258 a page); files referenced by URL or id count as one page or one image.

    >>> estimate_input_tokens("openai", "gpt-4o", messages=[
    ...     {"role": "system", "content": "You are terse."},
    ...     {"role": "user", "content": "hello world"},
    ... ])
    17
    >>> estimate_input_tokens("anthropic", "claude-sonnet-4-5",
    ...                       messages=[{"role": "user", "content": "hello world"}])
    21
    """
    return estimate_with_content_hash(
        provider, model, messages=messages, prompt=prompt, system=system, tools=tools
    )[0]


def estimate_with_content_hash(
    provider: str,
    model: str,
    *,
    messages: str | Sequence[Any] | None = None,
    prompt: str | Sequence[str] | None = None,
    system: Any = None,
    tools: Sequence[Any] | None = None,
    bounded: bool = False,
) -> tuple[int, int | None, int]:
    """``estimate_input_tokens``, a hash of ``messages`` when they are a list of plain
    messages (else None), taken in the same pass (the guard's loop detection uses it instead
    of hashing the history a second time), and how many of the tokens are media (images,
    audio, video, documents), which some models price above text.

    ``bounded`` (what a reservation asks for) counts a new short ASCII text in a plain
    message as one token a character, an upper bound that skips the tokenizer; the count is
    then at least the exact one, never below it.
    """
    kind, bare, encoding = _model_rules(provider, model)
    plain = None
    if system is None and prompt is None and type(messages) is list:
        plain = _plain_messages(encoding, messages, bounded)
    if plain is not None:  # the common case, counted in one loop from the message cache
        text_tokens, names, first_system, content = plain
        count = len(messages)  # type: ignore[arg-type]
        if kind == _OPENAI and not tools:
            return text_tokens + 3 * count + names + (3 if count else 0), content, 0
        tally = _Tally(kind, bare, encoding, text_tokens, 0, count, names, 0, first_system)
    else:
        content = None
        tally = _Tally(kind, bare, encoding)
        if system is not None:
            if isinstance(system, str) or _as_mapping(system) is None:
                system = {"role": "system", "content": system}
            _add_message(tally, system)
        if messages is not None:
            many = type(messages) is list or (
                isinstance(messages, Sequence) and not isinstance(messages, str)
            )
            for message in messages if many else [messages]:
                _add_message(tally, message)
    chat = tally.messages > 0
    if prompt is not None:
        for text in [prompt] if isinstance(prompt, str) else prompt:
            if isinstance(text, str):
                tally.add_text(text)
            else:  # embeddings also take token ids: one int, or a list of them
                tally.text += len(text) if isinstance(text, Sequence) else 1

    if kind == _OPENAI:
        total = tally.text + tally.media + 3 * tally.messages + tally.names + 3 * tally.calls
        if chat:
            total += 3  # every reply is primed with <|start|>assistant<|message|>
        if tools:
            total += _openai_tools_tokens(tally, tools)
        return total, content, tally.media

    total = math.ceil(tally.text * _SAFETY_FACTOR[kind]) + tally.media
    total += _OTHER_PER_MESSAGE * (tally.messages + tally.calls) + tally.names
    if chat:
        total += _OTHER_PER_REQUEST
    if tools:
        schema_tokens = sum(_count("o200k_base", _to_json(t)) for t in tools)
        total += math.ceil(schema_tokens * _SAFETY_FACTOR[kind])
        if kind == _ANTHROPIC:
            total += _ANTHROPIC_TOOLS_PROMPT
    return total, content, tally.media
