"""What a call consumed, in tokens, by kind.

Conventions (those of genai-prices and OpenAI, so pricing needs no special
cases): ``input_tokens`` counts *all* input tokens, including the cache reads,
cache writes, audio, image and video tokens also reported in their own fields;
``output_tokens`` counts all output tokens, including ``reasoning_tokens`` and
the audio and image tokens of a reply. Adapters for providers that
report cache tokens beside the input count (Anthropic) add them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kavach._values import fast_init

PriceVariant = tuple[tuple[str, str], ...]
"""A price variant as genai-prices selects it: request-context pairs such as
``(("service_tier", "priority"),)`` or ``(("speed", "fast"),)``; ``()`` is the standard price."""


def tier_name(variant: PriceVariant | None) -> str | None:
    """How events and the dashboard name a price variant: its values (``"priority"``,
    ``"flex"``, ``"fast"``), or ``None`` for the standard price.

    >>> tier_name((("service_tier", "priority"),)), tier_name(())
    ('priority', None)
    """
    if not variant:
        return None
    return "+".join(value for _, value in variant)


@fast_init
@dataclass(frozen=True)
class Usage:
    """Token counts of one call (or of a stream so far).

    >>> Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1000).uncached_input_tokens
    200
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    """Cache writes at the default (5-minute) lifetime."""
    cache_write_1h_tokens: int = 0
    """Anthropic's 1-hour cache writes, priced higher than 5-minute ones."""
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_audio_read_tokens: int = 0
    input_image_tokens: int = 0
    """Images in the input, where the model prices them apart from text (OpenAI's image
    models, Gemini embeddings); models without an image rate price them as input."""
    output_image_tokens: int = 0
    """Images a model made (Gemini image models, OpenAI's image models), part of output."""
    input_video_tokens: int = 0
    web_searches: int = 0
    """Searches a server-side web search tool made (Anthropic's ``web_search``, OpenAI's
    ``web_search`` in the Responses API), billed per search on top of the tokens."""
    file_searches: int = 0
    """OpenAI ``file_search`` tool calls, billed per call on top of the tokens."""
    input_characters: int = 0
    """Characters of input text, for models billed by the character rather than the token
    (OpenAI's ``tts-1`` and ``tts-1-hd`` speech)."""
    audio_seconds: int = 0
    """Seconds of audio, for models billed by the length of the audio they are given rather
    than by the token (OpenAI's ``whisper-1``)."""
    price_variant: PriceVariant | None = field(default=None, compare=False)
    """The price variant the provider says it served the call at (OpenAI's response
    ``service_tier``, Anthropic's ``usage.speed``): ``()`` for the standard price. ``None``
    when the response does not say, and the call is priced as it was reserved. Not part of
    equality: two usages with the same counts are the same usage."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        return max(
            0,
            self.input_tokens
            - self.cache_read_tokens
            - self.cache_write_tokens
            - self.cache_write_1h_tokens,
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            input_audio_tokens=self.input_audio_tokens + other.input_audio_tokens,
            output_audio_tokens=self.output_audio_tokens + other.output_audio_tokens,
            cache_audio_read_tokens=self.cache_audio_read_tokens + other.cache_audio_read_tokens,
            input_image_tokens=self.input_image_tokens + other.input_image_tokens,
            output_image_tokens=self.output_image_tokens + other.output_image_tokens,
            input_video_tokens=self.input_video_tokens + other.input_video_tokens,
            web_searches=self.web_searches + other.web_searches,
            file_searches=self.file_searches + other.file_searches,
            input_characters=self.input_characters + other.input_characters,
            audio_seconds=self.audio_seconds + other.audio_seconds,
            price_variant=(
                self.price_variant if other.price_variant is None else other.price_variant
            ),
        )


ZERO_USAGE = Usage()
