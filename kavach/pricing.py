"""The cost of a :class:`~kavach.usage.Usage`, from genai-prices, compiled to integers per model.

genai-prices' ``calc_price`` walks its unit registry and does ``Decimal`` arithmetic on
every call (hundreds of microseconds). A budget guard prices every call twice (the worst
case before it, the actual cost after it), so :class:`Pricing` resolves a model's price
record once, compiles it into a :class:`CompiledPrice` of integer nano-dollars per
million tokens, and caches it for as long as that record is in force.

Token conventions are genai-prices' own, so costs match ``calc_price`` exactly:

- ``input_tokens`` counts all input: cache reads, cache writes and audio are inside it
  and are priced at their own rates; the uncached remainder pays the input rate.
- ``cache_read_tokens`` includes ``cache_audio_read_tokens``, and so does
  ``input_tokens`` / ``input_audio_tokens``: an audio cache read is both audio and a read.
- ``cache_write_tokens`` (5-minute) and ``cache_write_1h_tokens`` are disjoint.
- ``input_image_tokens`` and ``input_video_tokens`` are inside ``input_tokens``;
  ``output_tokens`` includes ``reasoning_tokens``, ``output_audio_tokens`` and
  ``output_image_tokens``.
- Long-context tiers apply to *every* token of a call whose total ``input_tokens`` is
  above the tier's start (the "cliff" model of Anthropic, Google and OpenAI).

Price variants (tiers) come from genai-prices too: ``resolve(..., variant=(("service_tier",
"priority"),))`` is the price of an OpenAI or Gemini priority call, ``(("speed", "fast"),)``
an Anthropic fast-mode one; a tier the model does not list is priced at its standard rates.

genai-prices is imported only when a model is first resolved: importing it takes
~200 ms, which ``import kavach`` must not pay.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any

from kavach.errors import KavachConfigError, UnknownModelPriceError
from kavach.usage import PriceVariant, Usage

if TYPE_CHECKING:
    from genai_prices import types as gp_types

__all__ = ["CompiledPrice", "ModelPrice", "Pricing"]

_TOKENS_PER_MTOK = 1_000_000
_PER = {"_1k": "thousand searches", "_mchar": "million characters", "_hour": "hour of audio"}
_NANOS_PER_DOLLAR = Decimal(1_000_000_000)
_UTC = UTC


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's price in US dollars per million tokens, to add a model or override genai-prices.

    A rate left as ``None`` falls back as genai-prices would price the tokens: cache reads
    and 5-minute cache writes at the input rate, 1-hour cache writes at the 5-minute
    cache-write rate (else input), input audio, images and video at the input rate, output
    audio and images at the output rate.

    >>> ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0, cache_read_per_mtok=0.3)
    ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0, cache_read_per_mtok=0.3, ...)
    """

    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    cache_write_1h_per_mtok: float | None = None
    input_audio_per_mtok: float | None = None
    output_audio_per_mtok: float | None = None
    input_image_per_mtok: float | None = None
    output_image_per_mtok: float | None = None
    input_video_per_mtok: float | None = None
    web_search_per_1k: float | None = None
    """Dollars per thousand web searches a server-side search tool makes ($10 at Anthropic
    and OpenAI); unset, searches are not charged."""
    file_search_per_1k: float | None = None
    """Dollars per thousand OpenAI ``file_search`` calls."""
    input_per_mchar: float | None = None
    """Dollars per million characters of input, for a model billed by the character
    (OpenAI's ``tts-1``: $15)."""
    audio_per_hour: float | None = None
    """Dollars per hour of audio given to a model billed by the length of its input audio
    (OpenAI's ``whisper-1``: $0.36)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in ("input_per_mtok", "output_per_mtok"):
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float, Decimal))
                or not math.isfinite(value)
                or value < 0
            ):
                per = _PER.get(f.name[f.name.rfind("_") :], "million tokens")
                raise KavachConfigError(
                    f"ModelPrice.{f.name} must be a finite, non-negative number of dollars "
                    f"per {per}, got {value!r}"
                )

    def __repr__(self) -> str:
        # Show only the rates that are set: the fallbacks are the point of the None ones.
        parts = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) is not None
        ]
        rest = ", ..." if len(parts) < len(fields(self)) else ""
        return f"ModelPrice({', '.join(parts)}{rest})"

    def compile(self) -> CompiledPrice:
        """The integer form used on the hot path.

        >>> ModelPrice(input_per_mtok=0.0375, output_per_mtok=0.15).compile().input
        37500000
        """
        prices = {
            "input_mtok": self.input_per_mtok,
            "output_mtok": self.output_per_mtok,
            "cache_read_mtok": self.cache_read_per_mtok,
            "cache_write_mtok": self.cache_write_per_mtok,
            "cache_write_1h_mtok": self.cache_write_1h_per_mtok,
            "input_audio_mtok": self.input_audio_per_mtok,
            "output_audio_mtok": self.output_audio_per_mtok,
            "input_image_mtok": self.input_image_per_mtok,
            "output_image_mtok": self.output_image_per_mtok,
            "input_video_mtok": self.input_video_per_mtok,
            "web_searches_kcount": self.web_search_per_1k,
            "storage_searches_kcount": self.file_search_per_1k,
            "input_mchars": self.input_per_mchar,
            "input_audio_hours": self.audio_per_hour,
        }
        return _compile(
            {key: Decimal(str(value)) for key, value in prices.items() if value is not None}
        )


@dataclass(frozen=True, slots=True)
class CompiledPrice:
    """Integer nano-dollars per million tokens for each kind of token (exact for $0.0375/MTok).

    ``tiers`` holds long-context prices, highest start first: ``(start, price)`` applies
    to a call whose total input tokens exceed ``start``. Costs are rounded up to the
    nano-dollar, so spend is never under-counted.

    A reservation prices what it cannot yet tell apart at the dearest rate it may be
    billed at: ``media_input`` for images, audio, video and documents in the input,
    ``worst_output`` for a reply that may be audio or images (Gemini image models reply
    at ten times their text rate), ``text_output`` for one the request keeps to text.

    >>> price = ModelPrice(input_per_mtok=2.5, output_per_mtok=10.0).compile()
    >>> price.cost(Usage(input_tokens=1000, output_tokens=500))  # $0.0025 + $0.005
    7500000
    """

    input: int
    output: int
    cache_read: int
    cache_write: int
    cache_write_1h: int
    cache_audio_read: int
    input_audio: int
    reasoning: int
    output_audio: int
    input_image: int
    output_image: int
    input_video: int
    tiers: tuple[tuple[int, CompiledPrice], ...] = ()
    web_search: int = 0
    """Nano-dollars per web search a server-side search tool makes (genai-prices'
    ``web_searches_kcount``), charged on top of the tokens."""
    file_search: int = 0
    """Nano-dollars per file search (OpenAI's ``file_search``: ``storage_searches_kcount``)."""
    input_character: int = 0
    """Nano-dollars per million characters of input (genai-prices' ``input_mchars``), for
    models billed by the character."""
    audio_second: int = 0
    """Nano-dollars per million seconds of input audio (genai-prices' ``input_audio_hours``
    or ``audio_hours``), for models billed by the length of their input audio."""
    media_input: int = dataclass_field(init=False, compare=False, repr=False)
    text_output: int = dataclass_field(init=False, compare=False, repr=False)
    worst_output: int = dataclass_field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        text_output = max(self.output, self.reasoning)
        object.__setattr__(
            self,
            "media_input",
            max(self.input, self.input_audio, self.input_image, self.input_video),
        )
        object.__setattr__(self, "text_output", text_output)
        object.__setattr__(
            self, "worst_output", max(text_output, self.output_audio, self.output_image)
        )

    def for_input(self, input_tokens: int) -> CompiledPrice:
        """The tier in force for a call with this many input tokens (``self`` if untiered)."""
        for start, price in self.tiers:
            if input_tokens > start:
                return price
        return self

    def cost(self, usage: Usage) -> int:
        """Nano-dollars for ``usage``, rounded up; equal to genai-prices' ``calc_price``.

        >>> price = ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0,
        ...                    cache_read_per_mtok=0.3).compile()
        >>> price.cost(Usage(input_tokens=10_000, cache_read_tokens=8_000, output_tokens=100))
        9900000
        """
        p = self.for_input(usage.input_tokens) if self.tiers else self
        if not (
            usage.cache_read_tokens
            or usage.cache_write_tokens
            or usage.cache_write_1h_tokens
            or usage.reasoning_tokens
            or usage.input_audio_tokens
            or usage.output_audio_tokens
            or usage.cache_audio_read_tokens
            or usage.input_image_tokens
            or usage.output_image_tokens
            or usage.input_video_tokens
            or usage.web_searches
            or usage.file_searches
            or usage.input_characters
            or usage.audio_seconds
        ):  # plain input and output, as most calls are
            total = max(usage.input_tokens, 0) * p.input + max(usage.output_tokens, 0) * p.output
            return -(-total // _TOKENS_PER_MTOK)
        audio_read = usage.cache_audio_read_tokens
        text_read = usage.cache_read_tokens - audio_read
        audio_in = usage.input_audio_tokens - audio_read
        image_in = max(usage.input_image_tokens, 0)
        video_in = max(usage.input_video_tokens, 0)
        image_out = max(usage.output_image_tokens, 0)
        plain_in = (
            usage.input_tokens
            - usage.cache_read_tokens
            - usage.cache_write_tokens
            - usage.cache_write_1h_tokens
            - audio_in
            - image_in
            - video_in
        )
        plain_out = (
            usage.output_tokens - usage.reasoning_tokens - usage.output_audio_tokens - image_out
        )
        # A usage whose parts exceed their total (an adapter that did not add cache tokens
        # into input_tokens) must still be charged for every token it reports.
        if text_read < 0:
            text_read = 0
        if audio_in < 0:
            audio_in = 0
        if plain_in < 0:
            plain_in = 0
        if plain_out < 0:
            plain_out = 0
        total = (
            plain_in * p.input
            + text_read * p.cache_read
            + audio_read * p.cache_audio_read
            + usage.cache_write_tokens * p.cache_write
            + usage.cache_write_1h_tokens * p.cache_write_1h
            + audio_in * p.input_audio
            + plain_out * p.output
            + usage.reasoning_tokens * p.reasoning
            + usage.output_audio_tokens * p.output_audio
            + image_in * p.input_image
            + video_in * p.input_video
            + image_out * p.output_image
            + (max(usage.web_searches, 0) * p.web_search) * _TOKENS_PER_MTOK
            + (max(usage.file_searches, 0) * p.file_search) * _TOKENS_PER_MTOK
            + max(usage.input_characters, 0) * p.input_character
            + max(usage.audio_seconds, 0) * p.audio_second
        )
        return -(-total // _TOKENS_PER_MTOK)

    def unit_cost(self, characters: int, audio_seconds: int) -> int:
        """Nano-dollars, rounded up, for input billed by the character and by the second.

        >>> ModelPrice(input_per_mtok=0, output_per_mtok=0, audio_per_hour=0.36).compile(
        ...     ).unit_cost(0, 60)  # $0.006 a minute
        6000000
        """
        total = characters * self.input_character + audio_seconds * self.audio_second
        return -(-total // _TOKENS_PER_MTOK)

    def reservation_rates(
        self,
        input_tokens: int,
        cache_writes: bool = False,
        media_tokens: int = 0,
        text_output: bool = False,
    ) -> tuple[int, int]:
        """The worst-case input cost and the worst output price of one token (nano-dollars,
        rounded up), as a reservation is planned (on every call).

        ``media_tokens`` of the input (images, audio, video, documents) are priced at the
        dearest of the input and media rates; the output at the dearest of the text,
        reasoning, audio and image rates, or of text and reasoning alone with
        ``text_output`` (the request asks for a text reply).

        >>> ModelPrice(input_per_mtok=2.5, output_per_mtok=10.0).compile().reservation_rates(1000)
        (2500000, 10000)
        >>> image_model = ModelPrice(input_per_mtok=0.3, output_per_mtok=2.5,
        ...                          output_image_per_mtok=30.0).compile()
        >>> image_model.reservation_rates(1000), image_model.reservation_rates(1000, text_output=True)
        ((300000, 30000), (300000, 2500))
        """
        tier = self.for_input(input_tokens) if self.tiers else self
        rate = tier.input
        if cache_writes:
            rate = max(rate, tier.cache_write, tier.cache_write_1h)
        output = tier.text_output if text_output else tier.worst_output
        total = input_tokens * rate
        if media_tokens and input_tokens > 0:  # media above the text rate pays the difference
            total += min(media_tokens, input_tokens) * max(0, tier.media_input - rate)
        return -(-total // _TOKENS_PER_MTOK), -(-output // _TOKENS_PER_MTOK)

    def output_cost(self, output_tokens: int, input_tokens: int = 0) -> int:
        """``output_tokens`` at the output rate of the tier ``input_tokens`` selects, rounded up.

        >>> ModelPrice(input_per_mtok=2.5, output_per_mtok=10.0).compile().output_cost(3)
        30000
        """
        rate = self.for_input(input_tokens).output if self.tiers else self.output
        return -(-output_tokens * rate // _TOKENS_PER_MTOK)


def _dims(direction: str, **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({"family": "tokens", "direction": direction, **more}.items())


# The tokens each CompiledPrice field prices, as dimensions of genai-prices' unit registry.
# A kind pays the rate of the most specific priced unit whose dimensions it has, which is
# how genai-prices' leaf decomposition charges them.
_KIND_DIMS = {
    "input": _dims("input"),
    "output": _dims("output"),
    "cache_read": _dims("input", token_type="cache_read"),
    "cache_write": _dims("input", token_type="cache_write", cache_ttl="5m"),
    "cache_write_1h": _dims("input", token_type="cache_write", cache_ttl="1h"),
    "cache_audio_read": _dims("input", modality="audio", token_type="cache_read"),
    "input_audio": _dims("input", modality="audio"),
    "reasoning": _dims("output", token_type="reasoning"),
    "output_audio": _dims("output", modality="audio"),
    "input_image": _dims("input", modality="image"),
    "output_image": _dims("output", modality="image"),
    "input_video": _dims("input", modality="video"),
}

# The units a user's ModelPrice sets (so user prices compile without importing genai-prices,
# ~200 ms). A test checks these against genai-prices' registry.
_USER_UNITS = {
    "input_mtok": _KIND_DIMS["input"],
    "output_mtok": _KIND_DIMS["output"],
    "cache_read_mtok": _KIND_DIMS["cache_read"],
    "cache_write_mtok": _dims("input", token_type="cache_write"),
    "cache_write_1h_mtok": _KIND_DIMS["cache_write_1h"],
    "input_audio_mtok": _KIND_DIMS["input_audio"],
    "output_audio_mtok": _KIND_DIMS["output_audio"],
    "input_image_mtok": _KIND_DIMS["input_image"],
    "output_image_mtok": _KIND_DIMS["output_image"],
    "input_video_mtok": _KIND_DIMS["input_video"],
}

_PriceValue = Any  # Decimal | genai_prices.types.TieredPrices
_Units = Mapping[str, frozenset[tuple[str, str]]]


def _compile(prices: Mapping[str, _PriceValue], units: _Units = _USER_UNITS) -> CompiledPrice:
    """Compile ``{price_key: Decimal | TieredPrices}`` (dollars per MTok) into integers.

    ``units`` maps each per-MTok token price key to its dimensions; keys it lacks (per
    image, per search, per second ...) are not token prices and are left out.
    """
    priced = [
        (dims, prices[price_key])
        for price_key, dims in units.items()
        if prices.get(price_key) is not None
    ]
    starts = sorted(
        {tier.start for value in prices.values() if _is_tiered(value) for tier in value.tiers},
        reverse=True,
    )

    def rates_at(input_tokens: int) -> dict[str, int]:
        rates: dict[str, int] = {}
        for kind, dims in _KIND_DIMS.items():
            candidates = [
                (len(unit_dims), _nanos_per_mtok(_price_at(value, input_tokens)))
                for unit_dims, value in priced
                if unit_dims <= dims
            ]
            # genai-prices rejects records whose most specific unit is ambiguous; for user
            # prices (audio cache read: cache-read rate or audio rate?) take the higher.
            rates[kind] = max(candidates, default=(0, 0))[1]
        return rates

    searches = {
        kind: _nanos_per_search(prices[key])
        for kind, key in (
            ("web_search", "web_searches_kcount"),
            ("file_search", "storage_searches_kcount"),
        )
        if prices.get(key) is not None
    }
    if prices.get("input_mchars") is not None:
        searches["input_character"] = _nanos_per_mtok(_price_at(prices["input_mchars"], 0))
    audio = prices.get("input_audio_hours", prices.get("audio_hours"))
    if audio is not None:  # per hour, kept per million seconds as tokens are per million
        per_hour = Decimal(_price_at(audio, 0)) * _NANOS_PER_DOLLAR * _TOKENS_PER_MTOK / 3600
        searches["audio_second"] = int(per_hour.to_integral_value(rounding=ROUND_CEILING))
    tiers = tuple((start, _price_of(rates_at(start + 1), (), searches)) for start in starts)
    return _price_of(rates_at(0), tiers, searches)


def _nanos_per_search(dollars_per_thousand: _PriceValue) -> int:
    per_search = Decimal(dollars_per_thousand) * _NANOS_PER_DOLLAR / 1000
    return int(per_search.to_integral_value(rounding=ROUND_CEILING))


def _price_of(
    rates: Mapping[str, int],
    tiers: tuple[tuple[int, CompiledPrice], ...] = (),
    searches: Mapping[str, int] | None = None,
) -> CompiledPrice:
    extras = searches or {}
    return CompiledPrice(
        web_search=extras.get("web_search", 0),
        file_search=extras.get("file_search", 0),
        input_character=extras.get("input_character", 0),
        audio_second=extras.get("audio_second", 0),
        input=rates["input"],
        output=rates["output"],
        cache_read=rates["cache_read"],
        cache_write=rates["cache_write"],
        cache_write_1h=rates["cache_write_1h"],
        cache_audio_read=rates["cache_audio_read"],
        input_audio=rates["input_audio"],
        reasoning=rates["reasoning"],
        output_audio=rates["output_audio"],
        input_image=rates["input_image"],
        output_image=rates["output_image"],
        input_video=rates["input_video"],
        tiers=tiers,
    )


@functools.cache
def _genai_token_units() -> _Units:
    from genai_prices.data_units import unit_data

    return {
        raw["price_key"]: frozenset(raw["dimensions"].items())
        for raw in unit_data.values()
        if raw["dimensions"].get("family") == "tokens" and raw["per"] == _TOKENS_PER_MTOK
    }


def _is_tiered(value: _PriceValue) -> bool:
    return hasattr(value, "tiers") and hasattr(value, "base")


def _price_at(value: _PriceValue, input_tokens: int) -> Decimal:
    # genai-prices' calc_unit_price: the highest tier whose start the input count exceeds.
    if not _is_tiered(value):
        return Decimal(value)
    for tier in sorted(value.tiers, key=lambda t: t.start, reverse=True):
        if input_tokens > tier.start:
            return Decimal(tier.price)
    return Decimal(value.base)


def _nanos_per_mtok(dollars_per_mtok: Decimal) -> int:
    return int((dollars_per_mtok * _NANOS_PER_DOLLAR).to_integral_value(rounding=ROUND_CEILING))


# Our provider names -> genai-prices provider ids. Other names pass through unchanged
# (genai-prices matches aliases such as "gemini", "vertex", "bedrock" itself).
_PROVIDER_IDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "google-genai": "google",
    "vertexai": "google",
    "mistral": "mistral",
    "mistralai": "mistral",
}


def _provider_id(provider: str) -> str:
    return _PROVIDER_IDS.get(provider.lower(), provider)


_Entry = tuple[CompiledPrice | None, float, float, str]
"""A cached price, the window ``[valid_from, valid_until)`` (POSIX seconds) it is in force,
and, when the price is ``None`` (unknown model), why."""

_FOREVER: tuple[float, float] = (-math.inf, math.inf)


class Pricing:
    """Prices calls: user overrides first, then genai-prices; cached per (provider, model).

    Overrides are keyed by model name (``"gpt-4o"``) or ``"provider/model"``
    (``"openai/gpt-4o"``, which wins for that provider). An unknown model raises
    :class:`~kavach.errors.UnknownModelPriceError` (enforcement fails closed) unless
    ``unknown_model_price`` is given.

    >>> pricing = Pricing({"my-model": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)})
    >>> pricing.cost("openai", "my-model", Usage(input_tokens=1000, output_tokens=1000))
    3000000
    """

    __slots__ = ("_cache", "_overrides", "_unknown")

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        unknown_model_price: ModelPrice | None = None,
    ) -> None:
        self._overrides = {name: price.compile() for name, price in (overrides or {}).items()}
        self._unknown = unknown_model_price.compile() if unknown_model_price else None
        self._cache: dict[tuple[str | None, str, PriceVariant], _Entry] = {}

    def resolve(
        self,
        provider: str | None,
        model: str,
        at: datetime | None = None,
        variant: PriceVariant = (),
    ) -> CompiledPrice:
        """The compiled price of ``model`` in force at ``at`` (default: now), at the price
        ``variant`` (a tier such as ``(("service_tier", "priority"),)``; standard by default).

        >>> Pricing().resolve("openai", "gpt-4o-2024-08-06").input  # $2.50 per MTok
        2500000000
        """
        return self.resolve_at(provider, model, time.time() if at is None else _posix(at), variant)

    def resolve_at(
        self, provider: str | None, model: str, timestamp: float, variant: PriceVariant = ()
    ) -> CompiledPrice:
        """``resolve`` at a time in seconds since the epoch (the guard's hot path)."""
        t = timestamp
        key = (provider, model, variant)
        entry = self._cache.get(key)
        if entry is None or not entry[1] <= t < entry[2]:
            entry = self._cache[key] = self._lookup(provider, model, t, variant)
        price = entry[0]
        if price is None:
            raise UnknownModelPriceError(model, provider, entry[3])
        return price

    def cost(
        self, provider: str | None, model: str, usage: Usage, at: datetime | None = None
    ) -> int:
        """Nano-dollars ``usage`` of ``model`` costs at ``at`` (default: now), rounded up."""
        return self.resolve(provider, model, at).cost(usage)

    def _lookup(self, provider: str | None, model: str, t: float, variant: PriceVariant) -> _Entry:
        bare = model.removeprefix("models/")  # the Gemini API's resource names
        names = [model] if bare == model else [model, bare]
        if provider:
            names = [f"{provider}/{name}" for name in names] + names
        for name in names:
            if (price := self._overrides.get(name)) is not None:
                return (price, *_FOREVER, "")
        found = _from_genai_prices(provider, bare, t, variant)
        if found[0] is None and self._unknown is not None:
            return (self._unknown, *_FOREVER, "")
        return found


def _from_genai_prices(
    provider: str | None, model: str, t: float, variant: PriceVariant = ()
) -> _Entry:
    import genai_prices
    from genai_prices import data_snapshot

    # Never fall back from the provider given to another one: a model name served by an
    # OpenAI-compatible proxy is not priced like the same name elsewhere.
    provider_id = _provider_id(provider) if provider else None
    prefix, slash, rest = model.partition("/")
    candidates: list[tuple[str | None, str]] = [(provider_id, model)]
    if slash and (provider_id is None or _provider_id(prefix) == provider_id):
        # "openai/gpt-4o", as routers spell models
        candidates.insert(0, (_provider_id(prefix), rest))

    snapshot = data_snapshot.get_snapshot()
    for provider_id, model_ref in candidates:
        try:
            _, info = snapshot.find_provider_model(model_ref, None, provider_id, None)
        except LookupError:
            continue
        moment = datetime.fromtimestamp(t, _UTC)
        # A tier genai-prices does not list for the model is priced at the standard rates.
        record = info.get_prices(moment, dict(variant) if variant else None)
        prices = {key: value for key, value in vars(record).items() if value is not None}
        if not any(prices.get(key) is not None for key in _PRICED_KEYS):
            detail = f"genai-prices prices {info.id!r} only per {', '.join(sorted(prices))}"
            return (None, *_FOREVER, detail)
        window = _window(info, moment, bool(variant))
        return (_compile(prices, _genai_token_units()), *window, "")
    return (None, *_FOREVER, f"genai-prices {genai_prices.__version__} does not list it")


_PRICED_KEYS = ("input_mtok", "output_mtok", "input_mchars", "input_audio_hours", "audio_hours")
"""What genai-prices may price a model by for the guard to price it: tokens, characters of
input (OpenAI's tts-1), hours of input audio (whisper-1)."""


def _window(
    info: gp_types.ModelInfo, moment: datetime, variants: bool = False
) -> tuple[float, float]:
    """The POSIX-seconds interval around ``moment`` in which no price constraint changes
    state (with ``variants``, the constraints of the model's price variants too)."""
    constraints = [c.constraint for c in info.prices] if isinstance(info.prices, list) else []
    if variants:
        constraints += [v.constraint for v in info.price_variants or ()]
    changes: list[datetime] = []
    day = moment.date()
    for constraint in constraints:
        if constraint is None:
            continue
        start_date = getattr(constraint, "start_date", None)
        if isinstance(start_date, date):
            changes.append(datetime(start_date.year, start_date.month, start_date.day, tzinfo=_UTC))
            continue
        for boundary in (constraint.start_time, constraint.end_time):  # type: ignore[union-attr]
            if boundary.tzinfo is None:
                boundary = boundary.replace(tzinfo=_UTC)
            for offset in (-1, 0, 1):
                changes.append(datetime.combine(day + timedelta(days=offset), boundary))
    valid_from = max((c for c in changes if c <= moment), default=None)
    valid_until = min((c for c in changes if c > moment), default=None)
    return (
        valid_from.timestamp() if valid_from else -math.inf,
        valid_until.timestamp() if valid_until else math.inf,
    )


def _posix(at: datetime) -> float:
    # genai-prices reads naive timestamps as UTC; datetime.timestamp() would read local time.
    return (at if at.tzinfo is not None else at.replace(tzinfo=_UTC)).timestamp()
