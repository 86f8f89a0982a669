"""CallSpec: what an adapter knows about a call before it is made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kavach._values import fast_init
from kavach.usage import PriceVariant


@fast_init
@dataclass(frozen=True)
class CallSpec:
    """A provider call described neutrally, for estimating and guarding it.

    ``messages`` keep the provider's own shape (OpenAI chat messages, Anthropic
    messages, Gemini contents); ``prompt`` is plain input text (completions,
    embeddings). ``max_output_tokens`` is what the request asks for, or ``None``.
    ``input_tokens`` lets an adapter that already counted the input skip the estimate.

    >>> CallSpec(provider="openai", model="gpt-4o",
    ...          messages=[{"role": "user", "content": "Hi"}], max_output_tokens=256).model
    'gpt-4o'
    """

    provider: str
    model: str
    messages: Sequence[Any] | None = None
    prompt: str | Sequence[str] | None = None
    system: Any = None
    tools: Sequence[Any] | None = None
    max_output_tokens: int | None = None
    operation: str = "chat"
    agent: str | None = None
    run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    input_tokens: int | None = None
    cache_writes: bool = False
    """The request may write the provider's prompt cache (Anthropic ``cache_control``): its
    input is reserved at the cache-write price, which is dearer than plain input."""
    text_output: bool = False
    """The request asks for a text reply (OpenAI chat without ``audio``, Gemini with
    ``response_modalities=["TEXT"]``). Otherwise the reply may be audio or images, and a
    model that bills those above text (Gemini image models: ten times) is reserved at
    that rate."""
    choices: int = 1
    """How many replies the request asks for (OpenAI and Mistral chat ``n``, Gemini
    ``candidate_count``). The provider bills each reply's output (the input once), so
    output is reserved for all of them: ``max_output_tokens`` is per reply, while the
    reservation's ``max_output_tokens`` counts every reply's output together (as streams
    meter it). Send ``r.max_output_tokens // choices`` as the request's per-reply limit."""
    fixed_output: bool = False
    """The request's output cannot be limited (OpenAI image generation: its size and quality
    decide it, and it has no max-tokens parameter), so strict mode reserves all of
    ``max_output_tokens`` too, or refuses, rather than a smaller limit for the adapter to send."""
    price_variant: PriceVariant | None = None
    """The price tier the request asks for (OpenAI and Gemini ``service_tier="priority"`` or
    ``"flex"``, Anthropic ``speed="fast"``), as genai-prices names it; ``()`` for the standard
    price. ``None`` when the request leaves the tier to the account (OpenAI's ``auto``): the
    guard then reserves at the tier the provider last reported serving such calls at, since
    a project whose default is priority pays priority prices without asking."""
    max_searches: int = 0
    """Server-side searches the request may make (a web or file search tool's ``max_uses``,
    OpenAI's ``max_tool_calls``), each billed per search: held at the search price on top of
    the tokens."""
    context_tokens: int = 0
    """Tokens of context the provider keeps and adds to this request's input (an OpenAI
    ``previous_response_id`` or ``conversation`` the guard saw answered): held on top of the
    input counted from the request itself."""
    context_media_tokens: int = 0
    """Of ``context_tokens``, those that are audio, images or video (a Realtime session's
    speech): held at the dearest of the input and media rates, as media in a request is."""
    request_key: object = None
    """What else tells this request apart from another with the same messages, prompt and
    tools, for loop detection (hashable): the content of the audio a transcription uploads,
    the turn of speech a Realtime transcription is of. The context a request continues
    (``context_tokens``) tells requests apart too."""
    input_characters: int = 0
    """Characters of input billed by the character (OpenAI ``tts-1`` speech): held at the
    model's price per character."""
    audio_seconds: int = 0
    """Seconds of input audio billed by the second (OpenAI ``whisper-1``): held at the
    model's price per second of audio."""
