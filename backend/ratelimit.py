"""Rate limits: token buckets (bursts) and fixed windows (daily caps), checked all at once.

``Limiter.acquire(limits)`` either consumes from every limit or from none, and answers
with the first limit that refused and how long to wait. On Redis it is one Lua script
(Redis's own clock, so every replica sees the same buckets); without Redis it is the
same arithmetic in process memory.

A :class:`Bucket` refills ``rate`` units per second up to ``capacity``; a
:class:`Window` allows ``cap`` units until ``resets_in`` seconds from now (the UTC day).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Bucket", "Window", "Refusal", "Limiter", "MemoryLimiter", "RedisLimiter"]


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    rate: float  # units per second
    capacity: float
    cost: float
    reason: str


@dataclass(frozen=True, slots=True)
class Window:
    key: str
    cap: int
    cost: int
    resets_in: float  # seconds until the window ends
    reason: str


Limit = Bucket | Window


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    retry_after: float  # seconds


class Limiter:
    async def acquire(self, limits: list[Limit]) -> Refusal | None:  # pragma: no cover
        raise NotImplementedError

    async def close(self) -> None:
        return None


class MemoryLimiter(Limiter):
    """One process's limits (no await inside ``acquire``, so it is atomic on the loop)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._windows: dict[str, tuple[int, float]] = {}

    async def acquire(self, limits: list[Limit]) -> Refusal | None:
        now = self._clock()
        plan: list[tuple[Limit, float]] = []
        for limit in limits:
            if isinstance(limit, Bucket):
                tokens, at = self._buckets.get(limit.key, (limit.capacity, now))
                tokens = min(limit.capacity, tokens + (now - at) * limit.rate)
                if tokens < limit.cost:
                    wait = (limit.cost - tokens) / limit.rate if limit.rate > 0 else 86400.0
                    return Refusal(limit.reason, wait)
                plan.append((limit, tokens))
            else:
                used, ends = self._windows.get(limit.key, (0, now + limit.resets_in))
                if now >= ends:
                    used, ends = 0, now + limit.resets_in
                if used + limit.cost > limit.cap:
                    return Refusal(limit.reason, max(1.0, ends - now))
                plan.append((limit, float(used)))
        for limit, value in plan:
            if isinstance(limit, Bucket):
                self._buckets[limit.key] = (value - limit.cost, now)
            else:
                _, ends = self._windows.get(limit.key, (0, now + limit.resets_in))
                if now >= ends:
                    ends = now + limit.resets_in
                self._windows[limit.key] = (int(value) + limit.cost, ends)
        return None


# KEYS: one per limit. ARGV: n, then per limit: type (b|w), a, b, cost.
# Bucket: a = rate per second, b = capacity. Window: a = cap, b = ttl in seconds.
# Answers {0} when every limit took its cost, or {index (1-based), wait in ms}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = tonumber(ARGV[1])
local state = {}
for i = 1, n do
  local kind = ARGV[2 + (i - 1) * 4]
  local a = tonumber(ARGV[3 + (i - 1) * 4])
  local b = tonumber(ARGV[4 + (i - 1) * 4])
  local cost = tonumber(ARGV[5 + (i - 1) * 4])
  if kind == 'b' then
    local v = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    local tokens = tonumber(v[1]) or b
    local ts = tonumber(v[2]) or now
    tokens = math.min(b, tokens + math.max(0, now - ts) * a)
    if tokens < cost then
      local wait = 86400
      if a > 0 then wait = (cost - tokens) / a end
      return {i, math.ceil(wait * 1000)}
    end
    state[i] = tokens
  else
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    if used + cost > a then
      local ttl = redis.call('PTTL', KEYS[i])
      if ttl < 0 then ttl = b * 1000 end
      return {i, ttl}
    end
  end
end
for i = 1, n do
  local kind = ARGV[2 + (i - 1) * 4]
  local a = tonumber(ARGV[3 + (i - 1) * 4])
  local b = tonumber(ARGV[4 + (i - 1) * 4])
  local cost = tonumber(ARGV[5 + (i - 1) * 4])
  if kind == 'b' then
    redis.call('HSET', KEYS[i], 'tokens', tostring(state[i] - cost), 'ts', tostring(now))
    local full = 60
    if a > 0 then full = math.ceil(b / a) + 1 end
    redis.call('EXPIRE', KEYS[i], full)
  else
    local used = redis.call('INCRBY', KEYS[i], cost)
    if used == cost then redis.call('EXPIRE', KEYS[i], math.ceil(b)) end
  end
end
return {0, 0}
"""


class RedisLimiter(Limiter):
    """Limits shared by every replica through one Redis (one script call per check)."""

    def __init__(self, url: str, prefix: str = "agentkavach:rl:") -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._script = self._redis.register_script(_SCRIPT)

    async def acquire(self, limits: list[Limit]) -> Refusal | None:
        if not limits:
            return None
        keys: list[str] = []
        args: list[Any] = [len(limits)]
        for limit in limits:
            keys.append(self._prefix + limit.key)
            if isinstance(limit, Bucket):
                args += ["b", repr(float(limit.rate)), repr(float(limit.capacity)), limit.cost]
            else:
                args += ["w", limit.cap, max(1, math.ceil(limit.resets_in)), limit.cost]
        index, wait_ms = await self._script(keys=keys, args=args)
        if int(index) == 0:
            return None
        return Refusal(limits[int(index) - 1].reason, max(0.001, int(wait_ms) / 1000))

    async def close(self) -> None:
        await self._redis.aclose()
