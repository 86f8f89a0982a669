"""Provider usage objects -> kavach Usage, as genai-prices prices it."""

from __future__ import annotations

from anthropic.types import CacheCreation
from anthropic.types import Usage as AnthropicUsage
from google.genai import types as gtypes
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from kavach import Usage
from kavach.pricing import Pricing
from kavach_integrations.anthropic import message_usage
from kavach_integrations.google import gemini_usage
from kavach_integrations.openai import chat_usage, responses_usage


def test_openai_chat_cached_reasoning_and_audio() -> None:
    usage = CompletionUsage(
        prompt_tokens=2000,
        completion_tokens=500,
        total_tokens=2500,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=1000, cache_write_tokens=500, audio_tokens=100
        ),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=300, audio_tokens=50),
    )
    assert chat_usage(usage) == Usage(
        input_tokens=2000,
        output_tokens=500,
        cache_read_tokens=1000,
        cache_write_tokens=500,
        reasoning_tokens=300,
        input_audio_tokens=100,
        output_audio_tokens=50,
    )


def test_openai_chat_without_details_and_mistral_dicts() -> None:
    bare = CompletionUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
    assert chat_usage(bare) == Usage(input_tokens=10, output_tokens=5)
    mistral_like = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert chat_usage(mistral_like) == Usage(input_tokens=10, output_tokens=5, cache_read_tokens=4)


def test_openai_responses_cached_and_reasoning() -> None:
    usage = ResponseUsage(
        input_tokens=900,
        input_tokens_details=InputTokensDetails(cached_tokens=600, cache_write_tokens=200),
        output_tokens=120,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=80),
        total_tokens=1020,
    )
    assert responses_usage(usage) == Usage(
        input_tokens=900,
        output_tokens=120,
        cache_read_tokens=600,
        cache_write_tokens=200,
        reasoning_tokens=80,
    )


def test_anthropic_cache_reads_and_writes_5m_and_1h_are_added_into_input() -> None:
    usage = AnthropicUsage(
        input_tokens=100,
        output_tokens=40,
        cache_read_input_tokens=5000,
        cache_creation_input_tokens=3000,
        cache_creation=CacheCreation(
            ephemeral_5m_input_tokens=1000, ephemeral_1h_input_tokens=2000
        ),
    )
    mapped = message_usage(usage)
    assert mapped == Usage(
        input_tokens=8100,
        output_tokens=40,
        cache_read_tokens=5000,
        cache_write_tokens=1000,
        cache_write_1h_tokens=2000,
    )
    # Priced by genai-prices' rates for each kind: 1h writes cost more than 5m writes.
    price = Pricing().resolve("anthropic", "claude-sonnet-4-0")
    assert price.cost(mapped) == 100 * 3000 + 5000 * 300 + 1000 * 3750 + 2000 * 6000 + 40 * 15000


def test_anthropic_cache_writes_without_a_breakdown_are_5_minute() -> None:
    usage = AnthropicUsage(input_tokens=10, output_tokens=1, cache_creation_input_tokens=700)
    assert message_usage(usage).cache_write_tokens == 700
    assert message_usage(usage).input_tokens == 710


def test_gemini_thoughts_cache_and_audio() -> None:
    meta = gtypes.GenerateContentResponseUsageMetadata(
        prompt_token_count=1200,
        cached_content_token_count=1000,
        candidates_token_count=60,
        thoughts_token_count=40,
        prompt_tokens_details=[
            gtypes.ModalityTokenCount(modality=gtypes.MediaModality.AUDIO, token_count=300),
            gtypes.ModalityTokenCount(modality=gtypes.MediaModality.TEXT, token_count=900),
        ],
    )
    assert gemini_usage(meta) == Usage(
        input_tokens=1200,
        output_tokens=100,
        cache_read_tokens=1000,
        reasoning_tokens=40,
        input_audio_tokens=300,
    )


def test_gemini_images_in_and_out_are_priced_at_their_rates() -> None:
    # Gemini 2.5 Flash Image: one 1024x1024 image out is 1290 tokens at $30/MTok; pricing it
    # as text ($2.50/MTok) under-counted the call twelve times.
    meta = gtypes.GenerateContentResponseUsageMetadata(
        prompt_token_count=1300,
        candidates_token_count=1300,
        prompt_tokens_details=[
            gtypes.ModalityTokenCount(modality=gtypes.MediaModality.IMAGE, token_count=1290),
            gtypes.ModalityTokenCount(modality=gtypes.MediaModality.TEXT, token_count=10),
        ],
        candidates_tokens_details=[
            gtypes.ModalityTokenCount(modality=gtypes.MediaModality.IMAGE, token_count=1290),
            gtypes.ModalityTokenCount(modality=gtypes.MediaModality.TEXT, token_count=10),
        ],
    )
    usage = gemini_usage(meta)
    assert usage == Usage(
        input_tokens=1300, output_tokens=1300, input_image_tokens=1290, output_image_tokens=1290
    )
    cost = Pricing().cost("google", "gemini-2.5-flash-image", usage)
    # 1300 input at $0.30, 1290 image tokens at $30 and 10 text tokens at $2.50 per MTok.
    assert cost == 390_000 + 38_700_000 + 25_000
    # The same reply as a dict (a REST response read without the SDK's types), with video in.
    as_dict = {
        "prompt_token_count": 5000,
        "candidates_token_count": 10,
        "prompt_tokens_details": [{"modality": "VIDEO", "token_count": 4990}],
    }
    assert gemini_usage(as_dict).input_video_tokens == 4990
