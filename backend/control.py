"""Change notification for the control channel (kill, resume, budget changes).

Within one process, every subscriber of an organization gets its own queue and a
change is put on each. With Redis configured, changes are also published on a
per-organization channel so every backend replica wakes its own subscribers; a
replica ignores the echo of its own messages. Channels carry the deployment's Redis prefix
(``AGENTKAVACH_REDIS_PREFIX``): two deployments sharing one Redis (staging and production,
say) number their organizations alike, and a stop in one must never reach the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["ControlHub", "KEY_REVOKED"]

# A message of this type (``{"type": KEY_REVOKED, "key": <id>}``) tells the control streams
# opened with that key to close. It is not an agent change, so no SDK is sent it.
KEY_REVOKED = "key_revoked"

logger = logging.getLogger("agentkavach.backend.control")


class ControlHub:
    """Fan-out of control messages to the SSE and long-poll waiters of an organization."""

    def __init__(self, redis_url: str | None = None, prefix: str = "agentkavach:") -> None:
        self._subscribers: dict[int, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._redis_url = redis_url
        self._channel = f"{prefix}control:"
        self._redis: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._origin = uuid.uuid4().hex

    async def start(self) -> None:
        if not self._redis_url:
            return
        import redis.asyncio as redis

        self._redis = redis.from_url(self._redis_url)
        pubsub = self._redis.pubsub()
        await pubsub.psubscribe(self._channel + "*")
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _listen(self, pubsub: Any) -> None:
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except Exception:  # noqa: BLE001 - a broken Redis must not kill the listener
                    logger.warning("control: Redis pub/sub failed; retrying", exc_info=True)
                    await asyncio.sleep(1.0)
                    continue
                if message is None:
                    continue
                try:
                    envelope = json.loads(message["data"])
                except (ValueError, TypeError):
                    continue
                if envelope.get("origin") == self._origin:
                    continue
                self._deliver(int(envelope["org"]), envelope["message"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _deliver(self, org_id: int, message: dict[str, Any]) -> None:
        for queue in list(self._subscribers.get(org_id, ())):
            queue.put_nowait(message)

    async def publish(self, org_id: int, message: dict[str, Any]) -> None:
        self._deliver(org_id, message)
        if self._redis is not None:
            envelope = json.dumps(
                {"origin": self._origin, "org": org_id, "message": message}, default=str
            )
            try:
                await self._redis.publish(f"{self._channel}{org_id}", envelope)
            except Exception:  # noqa: BLE001 - local subscribers already have it
                logger.warning("control: could not publish to Redis", exc_info=True)

    @contextlib.asynccontextmanager
    async def subscribe(self, org_id: int) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers[org_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[org_id].discard(queue)
            if not self._subscribers[org_id]:
                self._subscribers.pop(org_id, None)
