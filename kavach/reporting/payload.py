"""The wire form of a CallEvent, as ``POST /v1/ingest`` accepts it."""

from __future__ import annotations

from typing import Any

from kavach.events import CallEvent


def event_json(event: CallEvent) -> dict[str, Any]:
    u = event.usage
    return {
        "id": event.id,
        "agent": event.agent,
        "run_id": event.run_id,
        "provider": event.provider,
        "model": event.model,
        "operation": event.operation,
        "status": event.status,
        "refusal_reason": event.refusal_reason,
        "error": event.error,
        "started_at": event.started_at.isoformat(),
        "duration_ms": round(event.duration_ms, 3),
        "cost_nanos": event.cost_nanos,
        "reserved_nanos": event.reserved_nanos,
        "usage": {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cache_read_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
            "cache_write_1h_tokens": u.cache_write_1h_tokens,
            "reasoning_tokens": u.reasoning_tokens,
            "input_audio_tokens": u.input_audio_tokens,
            "output_audio_tokens": u.output_audio_tokens,
            "cache_audio_read_tokens": u.cache_audio_read_tokens,
            "input_image_tokens": u.input_image_tokens,
            "output_image_tokens": u.output_image_tokens,
            "input_video_tokens": u.input_video_tokens,
            "web_searches": u.web_searches,
            "file_searches": u.file_searches,
            "input_characters": u.input_characters,
            "audio_seconds": u.audio_seconds,
        },
        "price_tier": event.price_tier,
        "prompt": event.prompt,
        "response_model": event.response_model,
        "finish_reasons": list(event.finish_reasons),
        "max_output_tokens": event.max_output_tokens,
        "tool_calls": list(event.tool_calls),
        "tags": dict(event.tags),
    }
