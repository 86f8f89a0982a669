"""kavach.pricing against genai-prices' own calc_price, on its real data."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot
from genai_prices import types as gp
from genai_prices.data_units import unit_data
from hypothesis import given, settings
from hypothesis import strategies as st

from kavach import pricing as pricing_module
from kavach.errors import KavachConfigError, KavachError, UnknownModelPriceError
from kavach.pricing import CompiledPrice, ModelPrice, Pricing
from kavach.usage import Usage

UTC = UTC
AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GP_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "mistral": "mistral",
}


def gp_usage(usage: Usage) -> genai_prices.Usage:
    """Our Usage in genai-prices' keys (5-minute and 1-hour writes are both cache writes)."""
    return genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens + usage.cache_write_1h_tokens,
        cache_write_5m_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        input_audio_tokens=usage.input_audio_tokens,
        cache_audio_read_tokens=usage.cache_audio_read_tokens,
        output_audio_tokens=usage.output_audio_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
        input_image_tokens=usage.input_image_tokens,
        output_image_tokens=usage.output_image_tokens,
        input_video_tokens=usage.input_video_tokens,
        # Cached image tokens are not told apart: a cache read is priced as text's.
        cache_image_read_tokens=0,
        web_searches=usage.web_searches,
        storage_searches=usage.file_searches,
    )


def gp_nanos(provider: str, model: str, usage: Usage, at: datetime = AT) -> int:
    # genai-prices does not match every Gemini API resource name ("models/..."); we do.
    bare = model.removeprefix("models/")
    calc = genai_prices.calc_price(
        gp_usage(usage), bare, provider_id=provider, genai_request_timestamp=at
    )
    return math.ceil(calc.total_price * 1_000_000_000)


MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-2024-08-06"),
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o-realtime-preview"),  # audio in and out, cached audio
    ("openai", "o3"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-sonnet-4-5"),  # long-context tier over 200k input tokens
    ("google", "gemini-2.0-flash"),
    ("google", "models/gemini-2.5-flash"),
    ("google", "gemini-2.5-pro"),  # tiered
    ("google", "gemini-1.5-flash"),  # $0.01875/MTok cache reads
    ("mistral", "mistral-large-latest"),
    ("google", "gemini-2.5-flash-image"),  # images it makes at $30/MTok, text at $2.50
    ("google", "gemini-3-pro-image-preview"),
    ("google", "gemini-embedding-2"),  # input images, audio and video at their own rates
    ("openai", "gpt-image-1.5"),  # input and output images at their own rates
    ("openai", "gpt-image-1"),
]

USAGES = {
    "plain": Usage(input_tokens=1_234, output_tokens=567),
    "cached": Usage(input_tokens=10_000, output_tokens=100, cache_read_tokens=8_000),
    "cache-writes": Usage(
        input_tokens=20_000,
        output_tokens=800,
        cache_read_tokens=5_000,
        cache_write_tokens=6_000,
        cache_write_1h_tokens=4_000,
    ),
    "reasoning": Usage(input_tokens=3_000, output_tokens=9_000, reasoning_tokens=7_777),
    "audio": Usage(
        input_tokens=9_000,
        output_tokens=3_000,
        cache_read_tokens=2_000,
        input_audio_tokens=4_000,
        cache_audio_read_tokens=1_500,
        output_audio_tokens=2_000,
        reasoning_tokens=100,
    ),
    "image": Usage(
        input_tokens=2_000,
        output_tokens=2_700,
        input_image_tokens=1_290,
        output_image_tokens=2_580,
    ),
    "video": Usage(input_tokens=30_000, input_video_tokens=25_000, input_image_tokens=1_000),
    "long-context": Usage(
        input_tokens=300_001, output_tokens=4_096, cache_read_tokens=100_000, cache_write_tokens=1
    ),
    "one-token": Usage(input_tokens=1),
    "empty": Usage(),
}


@pytest.fixture(autouse=True)
def _bundled_prices() -> Iterator[None]:
    yield
    data_snapshot.set_custom_snapshot(None)


@pytest.mark.parametrize("usage_name", USAGES)
@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_cost_equals_genai_prices(provider: str, model: str, usage_name: str) -> None:
    usage = USAGES[usage_name]
    assert Pricing().cost(provider, model, usage, at=AT) == gp_nanos(provider, model, usage)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    """Consistent usages: every part within its total, as providers report them."""
    n = st.integers(0, 400_000)
    text_read, audio_read, audio_in = draw(n), draw(n), draw(n)
    write_5m, write_1h, plain_in = draw(n), draw(n), draw(n)
    reasoning, audio_out, plain_out = draw(n), draw(n), draw(n)
    image_in, video_in, image_out = draw(n), draw(n), draw(n)
    return Usage(
        input_tokens=plain_in
        + text_read
        + audio_read
        + audio_in
        + write_5m
        + write_1h
        + image_in
        + video_in,
        output_tokens=plain_out + reasoning + audio_out + image_out,
        cache_read_tokens=text_read + audio_read,
        cache_write_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        reasoning_tokens=reasoning,
        input_audio_tokens=audio_in + audio_read,
        cache_audio_read_tokens=audio_read,
        output_audio_tokens=audio_out,
        input_image_tokens=image_in,
        input_video_tokens=video_in,
        output_image_tokens=image_out,
    )


PROPERTY_MODELS = [
    ("google", "gemini-3.1-flash-image-preview"),
    ("openai", "chatgpt-image-latest"),
    ("openai", "gpt-4o-realtime-preview"),
    ("anthropic", "claude-sonnet-4-5"),
    ("google", "gemini-2.5-flash"),
    ("google", "gemini-2.5-pro"),
    ("openai", "gpt-5.4"),
    ("mistral", "mistral-large-latest"),
]
PROPERTY_PRICING = Pricing()


@settings(max_examples=300, deadline=None)
@given(usage=usages(), which=st.sampled_from(PROPERTY_MODELS))
def test_cost_matches_genai_prices_for_any_usage(usage: Usage, which: tuple[str, str]) -> None:
    provider, model = which
    ours = PROPERTY_PRICING.cost(provider, model, usage, at=AT)
    assert 0 <= ours - gp_nanos(provider, model, usage) <= 1


@pytest.mark.parametrize("input_tokens", [0, 1, 199_999, 200_000, 200_001, 1_000_000])
def test_tier_boundary_and_planning_helpers(input_tokens: int) -> None:
    price = Pricing().resolve("anthropic", "claude-sonnet-4-5", at=AT)
    worst_in, per_token = price.reservation_rates(input_tokens, text_output=True)
    assert worst_in == gp_nanos("anthropic", "claude-sonnet-4-5", Usage(input_tokens=input_tokens))
    # The tier is chosen by the input count alone, so output priced with it is the
    # genai-prices cost of the whole call minus its input.
    both = Usage(input_tokens=input_tokens, output_tokens=1_000)
    output = price.output_cost(1_000, input_tokens)
    assert worst_in + output == gp_nanos("anthropic", "claude-sonnet-4-5", both)
    assert per_token == (22_500 if input_tokens > 200_000 else 15_000)  # $22.50 / $15 per MTok


def test_output_helpers_round_up() -> None:
    # $0.00015 and $0.0006 per MTok: fractions of a nano-dollar per token.
    price = ModelPrice(input_per_mtok=0.00015, output_per_mtok=0.0006).compile()
    assert price.output_cost(1) == 1  # 0.6 nano
    assert price.reservation_rates(1) == (1, 1)  # 0.15 nano of input, 0.6 a token of output
    assert price.cost(Usage(input_tokens=1, output_tokens=1)) == 1  # 0.75 nano, one ceil


def test_user_prices_fall_back_like_genai_prices() -> None:
    price = ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0, cache_write_per_mtok=3.75)
    compiled = price.compile()
    assert compiled == CompiledPrice(
        input=3_000_000_000,
        output=15_000_000_000,
        cache_read=3_000_000_000,
        cache_write=3_750_000_000,
        cache_write_1h=3_750_000_000,  # a 1-hour write is a cache write
        cache_audio_read=3_000_000_000,
        input_audio=3_000_000_000,
        reasoning=15_000_000_000,
        output_audio=15_000_000_000,
        input_image=3_000_000_000,
        output_image=15_000_000_000,
        input_video=3_000_000_000,
    )
    exact = ModelPrice(input_per_mtok=0.0375, output_per_mtok=0.15).compile()
    assert (exact.input, exact.output) == (37_500_000, 150_000_000)


def test_a_reservation_holds_media_at_the_rate_it_may_be_billed_at() -> None:
    # Gemini 2.5 Flash Image: text out at $2.50/MTok, the images it makes at $30/MTok.
    # Reserving at the text rate let an image agent spend twelve times its budget.
    price = Pricing().resolve("google", "gemini-2.5-flash-image", at=AT)
    made = Usage(input_tokens=100, output_tokens=1290, output_image_tokens=1290)
    billed = gp_nanos("google", "gemini-2.5-flash-image", made)
    input_cost, per_token = price.reservation_rates(100)
    assert input_cost + per_token * 1290 >= billed  # the worst case covers the image
    assert per_token == 30_000  # $30/MTok
    _, text_per_token = price.reservation_rates(100, text_output=True)
    assert text_per_token == 2_500  # a text-only request holds the text rate
    # Gemini embedding 2: video at $12/MTok against $0.20 for text.
    embed = Pricing().resolve("google", "gemini-embedding-2", at=AT)
    video = Usage(input_tokens=10_100, input_video_tokens=10_000)
    held, _ = embed.reservation_rates(10_100, media_tokens=10_000)
    assert held >= gp_nanos("google", "gemini-embedding-2", video)
    assert embed.reservation_rates(10_100)[0] < held  # text alone is held at the text rate


def test_user_media_rates() -> None:
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0, output_image_per_mtok=40.0)
    compiled = price.compile()
    assert compiled.cost(Usage(output_tokens=1_000_000, output_image_tokens=1_000_000)) == (
        40_000_000_000
    )
    assert compiled.reservation_rates(0) == (0, 40_000)
    assert "output_image_per_mtok=40.0" in repr(price)


def test_user_search_prices() -> None:
    price = ModelPrice(
        input_per_mtok=1.0, output_per_mtok=2.0, web_search_per_1k=10, file_search_per_1k=2.5
    ).compile()
    assert (price.web_search, price.file_search) == (10_000_000, 2_500_000)
    assert price.cost(Usage(input_tokens=1000, web_searches=3, file_searches=2)) == (
        1000 * 1000 + 3 * 10_000_000 + 2 * 2_500_000
    )
    # An override without them charges no searches, as before they were priced.
    assert ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0).compile().web_search == 0
    with pytest.raises(KavachConfigError, match="per thousand searches"):
        ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0, web_search_per_1k=-1)


def test_speech_and_whisper_are_priced_by_the_character_and_the_second() -> None:
    # genai-prices prices tts-1 per million characters and whisper-1 per hour of audio.
    pricing = Pricing()
    assert pricing.cost("openai", "tts-1-hd", Usage(input_characters=1_000)) == 30_000_000
    assert pricing.cost("openai", "tts-1", Usage(input_characters=1_000)) == 15_000_000  # $0.015
    assert pricing.cost("openai", "whisper-1", Usage(audio_seconds=60)) == 6_000_000  # $0.006
    assert pricing.resolve("openai", "whisper-1").unit_cost(0, 1) == 100_000
    # A price of one's own, and one that rounds: never below the bill.
    mine = ModelPrice(input_per_mtok=0, output_per_mtok=0, input_per_mchar=16, audio_per_hour=1)
    assert mine.compile().cost(Usage(input_characters=3, audio_seconds=1)) == 48_000 + 277_778
    with pytest.raises(KavachConfigError, match="per hour of audio"):
        ModelPrice(input_per_mtok=0, output_per_mtok=0, audio_per_hour=-0.36)
    with pytest.raises(KavachConfigError, match="per million characters"):
        ModelPrice(input_per_mtok=0, output_per_mtok=0, input_per_mchar=math.inf)


def test_model_price_rejects_bad_rates() -> None:
    with pytest.raises(KavachConfigError, match="input_per_mtok"):
        ModelPrice(input_per_mtok=-1.0, output_per_mtok=1.0)
    with pytest.raises(KavachConfigError, match="cache_read_per_mtok"):
        ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0, cache_read_per_mtok=math.nan)


def test_parts_larger_than_their_total_are_still_charged() -> None:
    # An adapter that forgot to add cache reads into input_tokens.
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0, cache_read_per_mtok=0.5).compile()
    assert price.cost(Usage(input_tokens=100, cache_read_tokens=1_000)) == 500_000


def test_override_wins_over_genai_prices() -> None:
    pricing = Pricing({"gpt-4o": ModelPrice(input_per_mtok=100.0, output_per_mtok=200.0)})
    usage = Usage(input_tokens=1_000, output_tokens=1_000)
    assert pricing.cost("openai", "gpt-4o", usage) == 300_000_000
    assert pricing.cost("openai", "gpt-4o-mini", usage) == gp_nanos("openai", "gpt-4o-mini", usage)


def test_provider_slash_model_override() -> None:
    pricing = Pricing(
        {
            "my-model": ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0),
            "azure/my-model": ModelPrice(input_per_mtok=2.0, output_per_mtok=2.0),
            "google/gemini-2.0-flash": ModelPrice(input_per_mtok=9.0, output_per_mtok=9.0),
        }
    )
    usage = Usage(input_tokens=1_000_000)
    assert pricing.cost("azure", "my-model", usage) == 2_000_000_000
    assert pricing.cost("openai", "my-model", usage) == 1_000_000_000
    assert pricing.cost(None, "my-model", usage) == 1_000_000_000
    # The name the Gemini API returns finds the override keyed by the bare name.
    assert pricing.cost("google", "models/gemini-2.0-flash", usage) == 9_000_000_000


@pytest.mark.parametrize(
    ("provider", "model", "same_as"),
    [
        (None, "openai/gpt-4o", "gpt-4o"),
        ("openai", "openai/gpt-4o", "gpt-4o"),
        (None, "gpt-4o", "gpt-4o"),
        ("gemini", "gemini-2.0-flash-001", "gemini-2.0-flash"),
    ],
)
def test_model_name_forms(provider: str | None, model: str, same_as: str) -> None:
    pricing = Pricing()
    expected = pricing.resolve("google" if "gemini" in model else "openai", same_as)
    assert pricing.resolve(provider, model) == expected


def test_unknown_model_fails_closed_with_a_fix() -> None:
    with pytest.raises(UnknownModelPriceError) as caught:
        Pricing().resolve("openai", "gpt-does-not-exist")
    error = caught.value
    assert isinstance(error, KavachError)
    assert (error.model, error.provider, error.reason) == (
        "gpt-does-not-exist",
        "openai",
        "unknown_model_price",
    )
    message = str(error)
    assert "'gpt-does-not-exist'" in message
    assert "ModelPrice(input_per_mtok=" in message
    assert "unknown_model_price=" in message


def test_no_fallback_to_another_provider() -> None:
    # The same name under an unknown provider (a proxy) must not borrow OpenAI's price.
    with pytest.raises(UnknownModelPriceError):
        Pricing().resolve("my-proxy", "gpt-4o")


def test_model_priced_only_per_page_is_unknown() -> None:
    with pytest.raises(UnknownModelPriceError, match="only per"):
        Pricing().resolve("mistral", "mistral-ocr-latest", at=AT)


def test_unknown_model_price_fallback() -> None:
    fallback = ModelPrice(input_per_mtok=50.0, output_per_mtok=100.0)
    pricing = Pricing(unknown_model_price=fallback)
    assert pricing.resolve("openai", "gpt-does-not-exist") == fallback.compile()
    usage = Usage(input_tokens=1_000)
    assert pricing.cost("openai", "gpt-4o", usage) == gp_nanos("openai", "gpt-4o", usage)


def fake_snapshot(*prices: gp.ConditionalPrice) -> data_snapshot.DataSnapshot:
    model = gp.ModelInfo(id="acme-1", match=gp.ClauseEquals(equals="acme-1"), prices=list(prices))
    provider = gp.Provider(id="acme", name="Acme", api_pattern="acme", models=[model])
    return data_snapshot.DataSnapshot(providers=[provider], from_auto_update=False)


def mtok(input_price: str, output_price: str) -> gp.ModelPrice:
    return gp.ModelPrice(input_mtok=Decimal(input_price), output_mtok=Decimal(output_price))


def test_time_conditional_price_follows_the_call_time() -> None:
    data_snapshot.set_custom_snapshot(
        fake_snapshot(
            gp.ConditionalPrice(prices=mtok("1", "2")),
            gp.ConditionalPrice(
                constraint=gp.StartDateConstraint(start_date=date(2027, 1, 1)),
                prices=mtok("3", "6"),
            ),
        )
    )
    pricing = Pricing()
    usage = Usage(input_tokens=1_000_000)
    before = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    after = datetime(2027, 1, 1, tzinfo=UTC)
    assert pricing.cost("acme", "acme-1", usage, at=before) == 1_000_000_000
    assert pricing.cost("acme", "acme-1", usage, at=after) == 3_000_000_000
    # Back before the change (a replayed call): the cache window is checked both ways.
    assert pricing.cost("acme", "acme-1", usage, at=before) == 1_000_000_000
    # A naive time is UTC, as in genai-prices; one hour east of UTC it is still 2026.
    assert pricing.cost("acme", "acme-1", usage, at=after.replace(tzinfo=None)) == 3_000_000_000
    east = timezone(timedelta(hours=1))
    assert pricing.cost("acme", "acme-1", usage, at=datetime(2027, 1, 1, tzinfo=east)) == (
        1_000_000_000
    )


def test_price_change_takes_effect_when_its_date_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    data_snapshot.set_custom_snapshot(
        fake_snapshot(
            gp.ConditionalPrice(prices=mtok("1", "2")),
            gp.ConditionalPrice(
                constraint=gp.StartDateConstraint(start_date=date(2027, 1, 1)),
                prices=mtok("3", "6"),
            ),
        )
    )
    now = [datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()]
    monkeypatch.setattr("kavach.pricing.time.time", lambda: now[0])
    pricing = Pricing()
    assert pricing.resolve("acme", "acme-1").input == 1_000_000_000
    now[0] += 120  # past midnight UTC
    assert pricing.resolve("acme", "acme-1").input == 3_000_000_000


def test_time_of_day_price() -> None:
    peak = gp.TimeOfDateConstraint(start_time=time(0, 30), end_time=time(16, 30))
    data_snapshot.set_custom_snapshot(
        fake_snapshot(
            gp.ConditionalPrice(prices=mtok("1", "1")),
            gp.ConditionalPrice(constraint=peak, prices=mtok("2", "2")),
        )
    )
    pricing = Pricing()
    day = datetime(2026, 11, 28, tzinfo=UTC)
    rates = [
        pricing.resolve("acme", "acme-1", at=day + timedelta(hours=h, minutes=m)).input
        for h, m in [(0, 29), (0, 30), (16, 29), (16, 30), (24, 29), (24, 30)]
    ]
    assert rates == [10**9, 2 * 10**9, 2 * 10**9, 10**9, 10**9, 2 * 10**9]


def test_cache_hit_does_not_ask_genai_prices_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = data_snapshot.DataSnapshot.find_provider_model

    def counting(self: data_snapshot.DataSnapshot, model_ref: str, *args: object) -> object:
        calls.append(model_ref)
        return original(self, model_ref, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(data_snapshot.DataSnapshot, "find_provider_model", counting)
    pricing = Pricing()
    usage = Usage(input_tokens=100, output_tokens=10)
    first = pricing.cost("openai", "gpt-4o", usage)
    for _ in range(5):
        assert pricing.cost("openai", "gpt-4o", usage) == first
        pricing.resolve("openai", "gpt-4o")
    assert calls == ["gpt-4o"]
    # Refusals are cached too, so a runaway loop on an unknown model stays cheap.
    for _ in range(3):
        with pytest.raises(UnknownModelPriceError):
            pricing.resolve("openai", "gpt-nope")
    assert calls == ["gpt-4o", "gpt-nope"]


def test_user_units_match_genai_prices_registry() -> None:
    dims = {raw["price_key"]: frozenset(raw["dimensions"].items()) for raw in unit_data.values()}
    for price_key, unit_dims in pricing_module._USER_UNITS.items():
        assert dims[price_key] == unit_dims
    by_usage_key = {key: frozenset(raw["dimensions"].items()) for key, raw in unit_data.items()}
    assert set(pricing_module._KIND_DIMS.values()) <= set(by_usage_key.values())


def test_import_does_not_load_genai_prices() -> None:
    code = (
        "import sys, kavach.pricing as p\n"
        "p.Pricing({'m': p.ModelPrice(1.0, 2.0)}, unknown_model_price=p.ModelPrice(1.0, 2.0))\n"
        "assert 'genai_prices' not in sys.modules, 'genai_prices imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_repo_root())


def _repo_root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])


# -- price variants (tiers) ---------------------------------------------------------------

TIERED = [
    ("openai", "gpt-4o", {"service_tier": "priority"}),
    ("openai", "gpt-5", {"service_tier": "flex"}),
    ("anthropic", "claude-opus-4-8", {"speed": "fast"}),
    ("google", "gemini-4-argon", {"service_tier": "priority"}),
    ("openai", "gpt-4o", {"service_tier": "scale"}),  # no such variant: the standard price
]


@pytest.mark.parametrize(("provider", "model", "context"), TIERED)
def test_a_tier_costs_what_genai_prices_says(
    provider: str, model: str, context: dict[str, str]
) -> None:
    usage = Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000)
    variant = tuple(context.items())
    calc = genai_prices.calc_price(
        gp_usage(usage),
        model,
        provider_id=provider,
        genai_request_timestamp=AT,
        price_context=context,
    )
    assert Pricing().cost(provider, model, usage, at=AT) == gp_nanos(provider, model, usage)
    tiered = Pricing().resolve(provider, model, at=AT, variant=variant).cost(usage)
    assert tiered == math.ceil(calc.total_price * 1_000_000_000)


def test_a_tier_that_starts_later_is_priced_from_its_start_date() -> None:
    model = gp.ModelInfo(
        id="acme-1",
        match=gp.ClauseEquals(equals="acme-1"),
        prices=mtok("1", "2"),
        price_variants=[
            gp.PriceVariant(
                when={"service_tier": "priority"},
                prices=mtok("3", "6"),
                constraint=gp.StartDateConstraint(start_date=date(2027, 1, 1)),
            )
        ],
    )
    provider = gp.Provider(id="acme", name="Acme", api_pattern="acme", models=[model])
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=[provider], from_auto_update=False)
    )
    pricing = Pricing()
    priority = (("service_tier", "priority"),)
    before = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    after = datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    # The same cached entry must not outlive the variant's start date.
    assert pricing.resolve("acme", "acme-1", at=before, variant=priority).input == 10**9
    assert pricing.resolve("acme", "acme-1", at=after, variant=priority).input == 3 * 10**9
    assert pricing.resolve("acme", "acme-1", at=after).input == 10**9


def test_usage_equality_ignores_the_tier_and_addition_keeps_the_latest() -> None:
    priority = (("service_tier", "priority"),)
    assert Usage(input_tokens=1, price_variant=priority) == Usage(input_tokens=1)
    total = Usage(input_tokens=1, price_variant=priority) + Usage(output_tokens=2)
    assert total.price_variant == priority
    assert (total + Usage(price_variant=())).price_variant == ()


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-sonnet-4-5"),
        ("openai", "gpt-4o"),
        ("openai", "gpt-5"),
        ("google", "gemini-2.5-flash"),
        ("google", "gemini-2.5-pro"),  # long-context tiers keep the search price
    ],
)
def test_searches_cost_what_genai_prices_says(provider: str, model: str) -> None:
    for input_tokens in (1000, 300_000):
        usage = Usage(input_tokens=input_tokens, output_tokens=50, web_searches=7, file_searches=3)
        assert Pricing().cost(provider, model, usage, at=AT) == gp_nanos(provider, model, usage)
    price = Pricing().resolve(provider, model, at=AT)
    assert price.web_search > 0


def test_searches_are_held_at_the_dearest_search_price() -> None:
    from kavach.engine import plan_call
    from kavach.guardrails import GuardrailConfig

    price = Pricing().resolve("openai", "gpt-4o", at=AT)
    plans = [
        plan_call(
            slots=(),
            guardrails=GuardrailConfig(),
            price=price,
            input_tokens=100,
            requested_max_output=10,
            mode="reserve",
            default_max_output=10,
            min_output=1,
            searches=n,
        )
        for n in (0, 4)
    ]
    assert plans[1].input_cost - plans[0].input_cost == 4 * price.web_search
