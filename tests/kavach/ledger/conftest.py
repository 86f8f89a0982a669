"""The real Redis at 127.0.0.1:6379: skipped with a reason when it is down, failed under CI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

try:
    import redis
except ImportError:  # the memory-ledger tests here do not need it
    redis = None

REDIS_URL = os.environ.get("KAVACH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    if redis is None:
        message = "redis is not installed (pip install 'agentkavach[redis]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        message = f"Redis at {REDIS_URL} is unreachable ({exc}); these tests need it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to the test; its keys are deleted afterwards."""
    value = f"kavach-test:{uuid.uuid4().hex[:10]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=value + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_ledger(redis_url: str, prefix: str) -> Iterator[Any]:
    """RedisLedger(redis_url, prefix=<the test's prefix>, **kwargs); closed afterwards."""
    from kavach.ledger.redis import RedisLedger

    made: list[RedisLedger] = []

    def make(url: str | None = None, **kwargs: Any) -> RedisLedger:
        kwargs.setdefault("prefix", prefix)
        ledger = RedisLedger(url or redis_url, **kwargs)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    """A plain redis-py client on the test Redis (decoded strings), closed afterwards."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
