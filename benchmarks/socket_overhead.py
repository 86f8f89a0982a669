"""What the guard adds to each event of a WebSocket session, beside what the SDK spends on it.

    python benchmarks/socket_overhead.py [--events 20000]

The guard reads every message the socket receives (``SocketCalls.answer``: parse it, meter
it) before the SDK parses it again into its own event type (``connection.parse_event``).
Both are timed here on the same messages, in process, alternating: a Responses text delta
(one token), a Realtime speech delta (0.1 s of 24 kHz speech, 6.4 KB of base64), and the
request side (``SocketCalls.request`` on a ``response.create``; the hold itself is the same
as an HTTP call's, see ``provider_overhead.py``). Figures are medians of per-batch means.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kavach import AgentKavach, Budget
from kavach_integrations._openai_realtime import REALTIME
from kavach_integrations._sockets import SocketCalls, SocketProtocol
from kavach_integrations.openai import RESPONSES_SOCKET

BATCH = 200


def per_event_us(fn: Callable[[], object], events: int) -> float:
    batches = []
    for _ in range(max(1, events // BATCH)):
        t = time.perf_counter()
        for _ in range(BATCH):
            fn()
        batches.append((time.perf_counter() - t) / BATCH * 1e6)
    return statistics.median(batches)


def calls(protocol: SocketProtocol, create: dict[str, Any]) -> SocketCalls:
    """A socket's calls with one response held and started, as mid-answer."""
    guard = AgentKavach("bench", Budget.daily(1_000_000), default_max_output_tokens=10**9)
    state = protocol.state({"model": create.get("model", "gpt-realtime")})
    socket = SocketCalls(guard, protocol, None, deque(), state)
    body = socket.body(create)
    socket.held(create, body, guard.reserve(socket.spec(body)), json.dumps(create))
    socket.answer(json.dumps({"type": "response.created", "response": {"id": "r"}}))
    return socket


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    n = parser.parse_args().events

    text_delta = json.dumps(
        {
            "type": "response.output_text.delta",
            "delta": "tok",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "sequence_number": 1,
        }
    )
    speech = base64.b64encode(b"\0" * 4_800).decode()
    audio_delta = json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "e",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": speech,
        }
    )
    create = {"type": "response.create", "model": "gpt-4o", "input": "Summarise the report."}
    create_message = json.dumps(create)

    responses = calls(RESPONSES_SOCKET, create)
    realtime = calls(REALTIME, {"type": "response.create", "response": {}})

    from openai._models import construct_type_unchecked
    from openai.types.realtime import RealtimeServerEvent
    from openai.types.responses import ResponsesServerEvent

    def sdk_parse(message: str, kind: Any) -> Callable[[], object]:
        return lambda: construct_type_unchecked(value=json.loads(message), type_=kind)

    rows = [
        (
            "Responses text delta",
            sdk_parse(text_delta, ResponsesServerEvent),
            lambda: responses.answer(text_delta),
        ),
        (
            "Realtime speech delta (6.4 KB)",
            sdk_parse(audio_delta, RealtimeServerEvent),
            lambda: realtime.answer(audio_delta),
        ),
        (
            "response.create sent (read only)",
            lambda: json.dumps(create),
            lambda: responses.request(create_message),
        ),
    ]
    print(f"Per event, in process, median of {max(1, n // BATCH)} batches of {BATCH}")
    print(f"  {'event':34} {'SDK':>10} {'guard':>10} {'guard/SDK':>10}")
    for name, sdk, guarded in rows:
        sdk_us, guard_us = [], []
        for _ in range(3):  # alternate, so drift hits both
            sdk_us.append(per_event_us(sdk, n // 3))
            guard_us.append(per_event_us(guarded, n // 3))
        s, g = statistics.median(sdk_us), statistics.median(guard_us)
        print(f"  {name:34} {s:8.2f} us {g:8.2f} us {g / s:9.2f}x")
    print("SDK: what the SDK spends on the same message (parse_event; json.dumps for a send).")


if __name__ == "__main__":
    main()
