"""A ledger in Redis, shared by every process and host that points at the same server.

>>> guard = AgentKavach("bot", Budget.daily(50), ledger="redis://localhost:6379/0")  # doctest: +SKIP

Each operation is one Lua script, atomic across all the budgets a call draws on, and one
round trip: ``reserve`` (after reclaiming expired holds on its keys), ``settle``,
``release``. Scripts are loaded once and run with EVALSHA; a server that lost them
(restart, SCRIPT FLUSH) gets them again on NOSCRIPT. Amounts are integer nano-dollars
(or tokens / calls), so Redis arithmetic is exact up to 2**53: a budget whose limit is
above that (about $9 million for a cost budget) is refused with ``KavachConfigError`` at its
first call.

Keys, for a budget key ``K`` such as ``agent:bot:daily:2026-11-28`` and the ``prefix``
(default ``kavach:``):

``{prefix}{K}``
    hash: ``spent`` and ``reserved``.
``{prefix}{K}:holds``
    sorted set: one member ``<hold id>:<line>:<amount>`` per open hold on ``K``, scored by
    its lease expiry (Redis server time, ms).
``{prefix}{K}:reclaimed``
    set: ids of holds a reserve reclaimed after their lease, so a late settle of such a
    hold still adds its spend, exactly once.
``{prefix}applied:{token}``
    marks a write of spend (``add_spent``, or spend recorded locally and added on
    reconciling) as done, so sending it again adds nothing; expires after a day.
``{prefix}dedup:{key}``
    alert de-duplication claims (``RedisDedupStore``), expiring after their TTL.

The keys of a budget expire ``ttl_seconds`` after their last reserve (the period
plus a day of slack), so a past day's keys disappear on their own. Because every key names
its period, a new day starts from zero without anyone resetting anything.

Leases: a hold lives ``lease_seconds`` (default 900). A process that dies mid-call cannot
wedge a budget: the next reserve touching its keys finds the expired hold, gives its
amount back and reports it (a warning in the ``kavach`` logger, ``on_reclaim`` listeners,
and the guard's observers' ``on_reclaim``). A call that outlives its lease still settles
its actual spend; only its hold was given back early, so choose a lease longer than your
slowest call.

Redis unreachable: by default the error propagates and the guard refuses the call
(``LedgerUnavailableError``: fail closed). With ``fallback="local"`` the ledger switches
to an in-process ``MemoryLedger`` seeded with the last spend it saw, logs a loud warning,
and when Redis answers again adds the spend recorded locally to Redis (reconciles).
A settle is never refused, since the provider has billed the call: in either mode one that
Redis does not answer is kept in the process and run on Redis before the next command
that reaches it (or on ``reconcile`` / ``close``); the settle script counts its spend once,
whether its hold is still open or a reserve reclaimed it after its lease meanwhile.
Redis Cluster is not supported: a call's keys must live on one server.

A command whose reply is lost (the connection dropped after Redis ran it) is sent once
more; reserve, settle and release are safe to run twice with the same hold id, and a write
of spend twice with the same token (one that Redis still does not answer is kept, with its
token, and sent again on reconciling).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from kavach.errors import KavachConfigError, MissingDependencyError
from kavach.ledger import _lua
from kavach.ledger.base import Balance, Hold, HoldReclaimed, LedgerLine, Refusal
from kavach.ledger.memory import MemoryLedger

try:
    import redis
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("redis", "redis") from exc

__all__ = ["HoldReclaimed", "RedisDedupStore", "RedisLedger"]

logger = logging.getLogger("kavach")

DEFAULT_PREFIX = "kavach:"
DEFAULT_LEASE_SECONDS = 900.0
_RETRY_SECONDS = 2.0
# How long Redis remembers that a write of spend was applied. A write whose reply was lost
# is sent again as soon as Redis answers this process (every _RETRY_SECONDS while it is
# used), so a day outlives any retry short of a day-long outage; a marker is a few bytes,
# and there is one per add_spent and per key each time a reconcile is tried.
_APPLIED_TTL_SECONDS = 86_400


Fallback = Literal["closed", "local"]


class RedisUnavailableError(ConnectionError):
    """Redis did not answer; the guard turns this into ``LedgerUnavailableError``."""


class _Script:
    """A Lua script, sent as EVALSHA. ``again`` is what to run instead when the reply to
    that EVALSHA was lost, so the script may already have run: a variant that is safe to
    run twice (default: the script itself), sent whole as EVAL so it needs no SCRIPT LOAD
    (a restarted Redis has forgotten its scripts, and a NOSCRIPT retry would send the
    EVALSHA once more)."""

    __slots__ = ("again", "sha", "sha_b", "text")

    def __init__(self, text: str, again: str | None = None) -> None:
        self.text = text
        self.sha = _lua.sha1(text)
        self.sha_b = self.sha.encode()
        body = (text if again is None else again).encode()
        self.again = b"$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (len(body), body)
        _BY_SHA[self.sha_b] = self

    def pack(self, keys: _PackedKeys, args: Sequence[Any]) -> bytes:
        """``EVALSHA sha numkeys keys... args...`` in RESP, without redis-py's encoder."""
        # Arguments are ints and hex hold ids: ASCII, so characters are bytes.
        items = [str(arg) for arg in args]
        return b"".join(
            (
                b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (3 + keys[0] + len(args), self.sha_b),
                keys[1],
                "".join([f"${len(item)}\r\n{item}\r\n" for item in items]).encode(),
            )
        )


_BY_SHA: dict[bytes, _Script] = {}
_EVALSHA = len(b"$7\r\nEVALSHA\r\n$40\r\n")


def _again(packed: bytes) -> bytes:
    """A packed EVALSHA turned into its script's ``again`` EVAL, with the same keys and args."""
    start = packed.index(b"\r\n") + 2  # past the element count, which does not change
    sha = packed[start + _EVALSHA : start + _EVALSHA + 40]
    return packed[:start] + _BY_SHA[sha].again + packed[start + _EVALSHA + 42 :]


_PackedKeys = tuple[int, bytes]
"""How many keys, and ``numkeys key...`` in RESP."""


def _pack_keys(keys: Sequence[str]) -> _PackedKeys:
    parts = [b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys))]
    for key in keys:
        data = key.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return len(keys), b"".join(parts)


_RESERVE = _Script(_lua.RESERVE, again=_lua.RESERVE_AGAIN)
_SETTLE = _Script(_lua.SETTLE)
_RELEASE = _Script(_lua.RELEASE)
_READ = _Script(_lua.READ)
_ADD_SPENT = _Script(_lua.ADD_SPENT)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisLedger:
    """Budgets in Redis, shared across processes and hosts. See the module docstring.

    Parameters:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``); or pass ``client`` /
            ``async_client`` yourself.
        prefix: put in front of every key, to share one Redis between environments
            (default ``AGENTKAVACH_REDIS_PREFIX`` or ``kavach:``).
        lease_seconds: how long a hold lives before another reserve may reclaim it.
        fallback: ``"closed"`` (default, or ``AGENTKAVACH_REDIS_FALLBACK``) refuses calls
            while Redis is unreachable;
            ``"local"`` falls back to an in-process ledger and reconciles later.
        on_reclaim: called with each ``HoldReclaimed`` (also see ``add_reclaim_listener``).
        socket_timeout: seconds before a Redis operation counts as failed.
        max_connections: size of each connection pool (sync and async).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        fallback: Fallback | None = None,
        on_reclaim: Callable[[HoldReclaimed], Any] | None = None,
        socket_timeout: float = 2.0,
        max_connections: int = 64,
        client: redis.Redis | None = None,
        async_client: aredis.Redis | None = None,
    ) -> None:
        if prefix is None:
            prefix = os.environ.get("AGENTKAVACH_REDIS_PREFIX", DEFAULT_PREFIX)
        if fallback is None:
            env = os.environ.get("AGENTKAVACH_REDIS_FALLBACK", "closed").strip().lower()
            fallback = "local" if env == "local" else "closed"
        if fallback not in ("closed", "local"):
            raise ValueError(f"fallback must be 'closed' or 'local', got {fallback!r}")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.url = _redact(url)
        self.prefix = prefix
        self.lease_ms = int(lease_seconds * 1000)
        self.fallback: Fallback = fallback
        self._url = url
        self._conn_kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "max_connections": max_connections,
            # One retry on a dropped pooled connection; never a backoff on the call path.
            "retry": Retry(NoBackoff(), 1),
        }
        self._client = client
        self._given_async = async_client
        self._async: dict[asyncio.AbstractEventLoop, _Batcher] = {}
        self._listeners: list[Callable[[HoldReclaimed], Any]] = []
        if on_reclaim is not None:
            self._listeners.append(on_reclaim)
        self._token = os.urandom(6).hex()
        self._ids = itertools.count(1)
        # Fallback state: guarded by _fb_lock; the hot path reads `_local` without it.
        self._fb_lock = threading.Lock()
        self._local: MemoryLedger | None = None
        self._local_holds: set[str] = set()
        # Spend Redis has not seen, by write token: key, amount, ttl. Once a write has been
        # sent, Redis may have applied it (its reply lost), so its amount never grows:
        # `_open_writes` names each key's write that has not been sent yet.
        self._unreconciled: dict[str, tuple[str, int, int | None]] = {}
        self._open_writes: dict[str, str] = {}
        # Settles Redis did not answer, by hold id: run on Redis before the next command.
        self._unsettled: dict[str, tuple[Hold, tuple[int, ...]]] = {}
        self._last_spent: dict[str, tuple[int, int | None]] = {}
        self._ttls: dict[str, int | None] = {}
        self._retry_at = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._key_cache: dict[tuple[str, ...], _PackedKeys] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisLedger:
        return cls(url, **kwargs)

    # -- clients --------------------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self._url, **self._conn_kwargs)
        return self._client

    def _aclient(self) -> aredis.Redis:
        return self._abatcher().client

    def _abatcher(self) -> _Batcher:
        # A redis.asyncio pool belongs to the loop that opened its connections.
        loop = asyncio.get_running_loop()
        batcher = self._async.get(loop)
        if batcher is None:
            for old in [lp for lp in self._async if lp.is_closed()]:
                del self._async[old]
            client = self._given_async
            if client is None:
                kwargs = {**self._conn_kwargs, "retry": AsyncRetry(NoBackoff(), 1)}
                client = aredis.Redis.from_url(self._url, **kwargs)
            batcher = _Batcher(client, owned=self._given_async is None)
            self._async[loop] = batcher
        return batcher

    def _run(self, script: _Script, keys: _PackedKeys, args: Sequence[Any]) -> Any:
        if self._unsettled:  # the settles Redis missed go first: this call sees their spend
            self._apply_unsettled()
        return self._eval(script, keys, args)

    def _eval(self, script: _Script, keys: _PackedKeys, args: Sequence[Any]) -> Any:
        packed = script.pack(keys, args)
        for _ in range(2):
            try:
                return self._send(packed)
            except NoScriptError:
                self.client.script_load(script.text)
        return self._send(packed)

    def _send(self, packed: bytes) -> Any:
        # One command on a pooled connection, skipping redis-py's command machinery (it
        # costs more than the round trip). A pooled connection the server dropped (Redis
        # restarted) is retried once on a fresh one. The first attempt may have run with
        # only its reply lost, so the retry sends the script's `again` variant: a settle
        # or release that already ran is a no-op the second time, and a reserve that
        # already ran returns the grant it made (see _lua.RESERVE_AGAIN).
        pool = self.client.connection_pool
        command = packed
        for attempt in (0, 1):
            conn: Any = pool.get_connection()
            try:
                conn.send_packed_command([command])
                return conn.read_response()
            except redis.ResponseError:
                raise
            except redis.ConnectionError:
                conn.disconnect()
                if attempt:
                    raise
                command = _again(packed)
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
        raise AssertionError("unreachable")

    async def _arun(
        self,
        script: _Script,
        keys: _PackedKeys,
        args: Sequence[Any],
        orphan: _Orphan | None = None,
    ) -> Any:
        if self._unsettled:
            await self._aapply_unsettled()
        return await self._aeval(script, keys, args, orphan)

    async def _aeval(
        self,
        script: _Script,
        keys: _PackedKeys,
        args: Sequence[Any],
        orphan: _Orphan | None = None,
    ) -> Any:
        batcher = self._abatcher()
        packed = script.pack(keys, args)
        for _ in range(2):
            try:
                return await batcher.call(packed, orphan)
            except NoScriptError:
                await batcher.client.script_load(script.text)
        return await batcher.call(packed, orphan)

    def close(self) -> None:
        """Run on Redis the settles it missed, if it answers now, and close the sync pool
        (async pools close with their event loop)."""
        if self._unsettled:
            try:
                self._apply_unsettled()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._lost_unsettled()
        self._close_pool()

    def _close_pool(self) -> None:
        if self._client is not None:
            self._client.close()

    def dedup_store(self) -> RedisDedupStore:
        """Alert de-duplication on this ledger's Redis (the guard uses it for its alerts)."""
        return RedisDedupStore(self.client, prefix=self.prefix)

    async def aclose(self) -> None:
        """Close the running event loop's async pool (after its in-flight commands) and the
        sync pool. Pools of other, closed event loops are dropped. Settles Redis missed are
        run on it first, if it answers now."""
        loop = asyncio.get_running_loop()
        batcher = self._async.get(loop)
        # In-flight batches can still hand a cancelled reserve's hold back (a new
        # background release), and a release is itself a batch: wait until neither is left.
        # Only unfinished tasks: a finished one leaves its set in a done callback that has
        # not run yet, and on Python 3.12+ gathering finished tasks returns without letting
        # it run, so waiting for the sets to empty would spin forever.
        while mine := [
            t
            for t in [*self._background, *(batcher._tasks if batcher is not None else ())]
            if t.get_loop() is loop and not t.done()
        ]:
            await asyncio.gather(*mine, return_exceptions=True)
        if self._unsettled:
            try:
                await self._aapply_unsettled()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._lost_unsettled()
        self._close_pool()
        batcher = self._async.pop(loop, None)
        self._async = {lp: b for lp, b in self._async.items() if not lp.is_closed()}
        if batcher is not None:
            await batcher.aclose()

    # -- keys -----------------------------------------------------------------------------

    def _keys(self, keys: tuple[str, ...]) -> _PackedKeys:
        """The Redis keys of these budget keys (three each), packed; cached per combination."""
        packed = self._key_cache.get(keys)
        if packed is None:
            if len(self._key_cache) > 4096:  # past periods' combinations
                self._key_cache.clear()
            names: list[str] = []
            for key in keys:
                base = self.prefix + key
                names += (base, base + ":holds", base + ":reclaimed")
            packed = self._key_cache[keys] = _pack_keys(names)
        return packed

    # -- reclaim reporting ----------------------------------------------------------------

    def add_reclaim_listener(self, listener: Callable[[HoldReclaimed], Any]) -> None:
        """Call ``listener`` with each hold a reserve reclaims (the guard uses this)."""
        self._listeners.append(listener)

    def _reclaimed(self, keys: Sequence[str], flat: Sequence[Any]) -> None:
        for i in range(0, len(flat), 3):
            hold_id = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            event = HoldReclaimed(hold_id, keys[int(flat[i + 1]) - 1], int(flat[i + 2]))
            logger.warning(
                "kavach: reclaimed expired hold %s on %s (%d held): the process that made it "
                "stopped before settling, or the call outlived its lease",
                event.hold_id,
                event.key,
                event.amount,
            )
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:
                    logger.exception("kavach: on_reclaim listener %r failed", listener)

    # -- decode ---------------------------------------------------------------------------

    def _reserve_args(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> tuple[str, _PackedKeys, list[Any]]:
        hold_id = f"{self._token}-{next(self._ids)}"
        args: list[Any] = [hold_id, self.lease_ms, min_units, max_units]
        for line in lines:
            if line.limit > MAX_LIMIT:
                raise _too_large(line)
            ttl = line.ttl_seconds
            args += (line.limit, line.fixed, line.per_unit, -1 if ttl is None else ttl)
            self._ttls[line.key] = ttl
        return hold_id, self._keys(tuple([line.key for line in lines])), args

    def _reserve_result(
        self, hold_id: str, lines: Sequence[LedgerLine], reply: list[Any]
    ) -> Hold | Refusal:
        keys = [line.key for line in lines]
        if reply[0] == 1:
            if reply[2]:
                self._reclaimed(keys, reply[2])
            units = int(reply[1])
            return Hold(
                id=hold_id,
                keys=tuple(keys),
                amounts=tuple(line.fixed + line.per_unit * units for line in lines),
                units=units,
            )
        if reply[5]:
            self._reclaimed(keys, reply[5])
        return Refusal(
            index=int(reply[1]), spent=int(reply[2]), reserved=int(reply[3]), needed=int(reply[4])
        )

    def _settled(self, hold: Hold, after: list[Any]) -> tuple[int, ...]:
        out = tuple(int(x) for x in after)
        last = self._last_spent
        for key, spent in zip(hold.keys, out, strict=True):
            last[key] = (spent, self._ttls.get(key))
        return out

    def _read_result(self, key: str, reply: list[Any]) -> Balance:
        if reply[2]:
            self._reclaimed([key], reply[2])
        spent = int(reply[0])
        self._last_spent[key] = (spent, self._ttls.get(key))  # where a fallback starts
        return Balance(spent, int(reply[1]))

    # -- the Ledger protocol (sync) -------------------------------------------------------

    def reserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal:
        if not lines:  # no budget applies: nothing to hold, no round trip
            return Hold(f"{self._token}-0", (), (), max_units)
        local = self._local_ledger()
        if local is not None:
            return self._local_reserve(local, lines, min_units, max_units)
        hold_id, keys, args = self._reserve_args(lines, min_units, max_units)
        try:
            reply = self._run(_RESERVE, keys, args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            local = self._down(exc)
            return self._local_reserve(local, lines, min_units, max_units)
        return self._reserve_result(hold_id, lines, reply)

    def settle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        if not hold.keys:
            return ()
        if hold.id in self._local_holds:
            return self._local_settle(hold, actual)
        try:
            after = self._run(_SETTLE, self._keys(hold.keys), _settle_args(hold, actual))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return self._defer_settle(hold, actual, exc)
        return self._settled(hold, after)

    def release(self, hold: Hold) -> None:
        if not hold.keys:
            return None
        if hold.id in self._local_holds:
            self._local_holds.discard(hold.id)
            if self._local is not None:
                self._local.release(_memory_hold(hold))
            return
        try:
            self._run(_RELEASE, self._keys(hold.keys), [hold.id, *hold.amounts])
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            # The hold expires with its lease; nothing was spent.
            self._down(exc)

    def read(self, key: str) -> Balance:
        local = self._local_ledger()
        if local is not None:
            return local.read(key)
        try:
            return self._read_result(key, self._run(_READ, self._keys((key,)), []))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return self._down(exc).read(key)

    def add_spent(self, key: str, amount: int, ttl_seconds: int | None = None) -> int:
        local = self._local_ledger()
        if local is not None:
            return self._local_add(local, key, amount, ttl_seconds)
        token = self._write_token()
        keys, args = self._add_args(key, amount, ttl_seconds, token)
        try:
            spent = int(self._run(_ADD_SPENT, _pack_keys(keys), args))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            # Redis may have run it with only the reply lost: reconciling sends the same token.
            return self._local_add(self._down(exc), key, amount, ttl_seconds, token)
        self._last_spent[key] = (spent, ttl_seconds)
        return spent

    async def _aadd_spent(self, key: str, amount: int, ttl_seconds: int | None) -> int:
        local = await self._alocal_ledger()
        if local is not None:
            return self._local_add(local, key, amount, ttl_seconds)
        token = self._write_token()
        keys, args = self._add_args(key, amount, ttl_seconds, token)
        try:
            spent = int(await self._arun(_ADD_SPENT, _pack_keys(keys), args))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return self._local_add(self._down(exc), key, amount, ttl_seconds, token)
        self._last_spent[key] = (spent, ttl_seconds)
        return spent

    def _write_token(self) -> str:
        return f"{self._token}-{next(self._ids)}"

    def _add_args(
        self, key: str, amount: int, ttl_seconds: int | None, token: str
    ) -> tuple[list[str], list[Any]]:
        """ADD_SPENT's keys and args: the write ``token`` adds ``amount`` once, however often
        it is sent."""
        keys = [self.prefix + key, f"{self.prefix}applied:{token}"]
        ttl = -1 if ttl_seconds is None else ttl_seconds
        return keys, [amount, ttl, _APPLIED_TTL_SECONDS]

    # -- the Ledger protocol (async): the same scripts, awaited ---------------------------

    async def areserve(
        self, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal:
        if not lines:  # no budget applies: nothing to hold, no round trip
            return Hold(f"{self._token}-0", (), (), max_units)
        local = await self._alocal_ledger()
        if local is not None:
            return self._local_reserve(local, lines, min_units, max_units)
        hold_id, keys, args = self._reserve_args(lines, min_units, max_units)

        def orphan(reply: Any) -> None:
            # The caller was cancelled while its reserve was in flight: give the hold back.
            hold = self._reserve_result(hold_id, lines, reply)
            if isinstance(hold, Hold):
                task = asyncio.get_running_loop().create_task(self.arelease(hold))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        try:
            reply = await self._arun(_RESERVE, keys, args, orphan)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            local = self._down(exc)
            return self._local_reserve(local, lines, min_units, max_units)
        return self._reserve_result(hold_id, lines, reply)

    async def asettle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        if not hold.keys:
            return ()
        if hold.id in self._local_holds:
            return await self._alocal_settle(hold, actual)
        try:
            after = await self._arun(_SETTLE, self._keys(hold.keys), _settle_args(hold, actual))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return self._defer_settle(hold, actual, exc)
        return self._settled(hold, after)

    async def arelease(self, hold: Hold) -> None:
        if not hold.keys:
            return None
        if hold.id in self._local_holds:
            self.release(hold)
            return
        try:
            await self._arun(_RELEASE, self._keys(hold.keys), [hold.id, *hold.amounts])
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._down(exc)

    async def aread(self, key: str) -> Balance:
        local = await self._alocal_ledger()
        if local is not None:
            return local.read(key)
        try:
            return self._read_result(key, await self._arun(_READ, self._keys((key,)), []))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return self._down(exc).read(key)

    # -- settles Redis missed -------------------------------------------------------------

    def _defer_settle(
        self, hold: Hold, actual: Sequence[int], exc: BaseException
    ) -> tuple[int, ...]:
        """Redis did not answer a settle: keep it, whatever the fallback, and run it on
        Redis before the next command that reaches it (or on ``reconcile`` / ``close``).

        The provider billed the call, so its spend must not be lost, and the settle
        script counts it exactly once: on a live hold it gives the hold back and adds
        the spend; on a hold a reserve reclaimed after its lease it adds the spend only;
        on a hold already settled (the first attempt ran, its reply was lost) it does
        nothing. Returns each key's spent after on the local ledger with
        ``fallback="local"``, else ``()``: not known until Redis answers.
        """
        actual = tuple(actual)
        self._unsettled[hold.id] = (hold, actual)
        logger.warning(
            "kavach: Redis at %s did not answer the settle of hold %s (%s: %s): its spend %s "
            "on %s is kept in this process and will be added to Redis when it answers again; "
            "until then other processes do not see it, and it is lost if this process exits "
            "first",
            self.url,
            hold.id,
            type(exc).__name__,
            exc,
            list(actual),
            list(hold.keys),
        )
        if self.fallback != "local":
            return ()
        local = self._down(exc)
        return tuple(
            local.add_spent(key, amount, self._ttls.get(key))
            for key, amount in zip(hold.keys, actual, strict=True)
        )

    def _apply_unsettled(self) -> None:
        """Run the settles Redis missed; raises if it still does not answer (they stay)."""
        for hold, actual in list(self._unsettled.values()):
            after = self._eval(_SETTLE, self._keys(hold.keys), _settle_args(hold, actual))
            self._applied(hold, after)

    async def _aapply_unsettled(self) -> None:
        for hold, actual in list(self._unsettled.values()):
            after = await self._aeval(_SETTLE, self._keys(hold.keys), _settle_args(hold, actual))
            self._applied(hold, after)

    def _applied(self, hold: Hold, after: list[Any]) -> None:
        # Another thread may have run the same settle meanwhile: the script made it a no-op.
        if self._unsettled.pop(hold.id, None) is None:
            return
        spent = self._settled(hold, after)
        logger.warning(
            "kavach: Redis at %s answers again: added the spend of hold %s, which it had not "
            "seen, to %s (spent now %s)",
            self.url,
            hold.id,
            list(hold.keys),
            list(spent),
        )

    def _lost_unsettled(self) -> None:
        lost, self._unsettled = self._unsettled, {}
        logger.error(
            "kavach: closing while Redis at %s does not answer: the spend of %d settle(s) it "
            "never saw is lost to the shared budget: %s",
            self.url,
            len(lost),
            {hold_id: list(actual) for hold_id, (_, actual) in lost.items()},
        )

    # -- fallback to a local ledger -------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and ``fallback="local"`` is in use."""
        return self._local is not None

    def _down(self, exc: BaseException) -> MemoryLedger:
        """Redis failed: raise (fail closed) or switch to the local ledger."""
        if self.fallback != "local":
            raise RedisUnavailableError(
                f"Redis at {self.url} did not answer ({type(exc).__name__}: {exc}); start it or "
                "fix the URL, or pass fallback='local' to RedisLedger to keep going on a local "
                "ledger"
            ) from exc
        with self._fb_lock:
            if self._local is None:
                local = MemoryLedger()
                for key, (spent, ttl) in self._last_spent.items():
                    local.add_spent(key, spent, ttl)
                self._local = local
                logger.warning(
                    "kavach: REDIS UNREACHABLE at %s (%s: %s): budgets are now enforced by THIS "
                    "PROCESS ONLY, from the last spend it saw; other processes are not counted. "
                    "Local spend will be added to Redis when it answers again",
                    self.url,
                    type(exc).__name__,
                    exc,
                )
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            return self._local

    def _local_reserve(
        self, local: MemoryLedger, lines: Sequence[LedgerLine], min_units: int, max_units: int
    ) -> Hold | Refusal:
        result = local.reserve(lines, min_units, max_units)
        if isinstance(result, Hold):
            result = Hold(
                f"local-{self._token}-{result.id}", result.keys, result.amounts, result.units
            )
            self._local_holds.add(result.id)
            for line in lines:
                self._ttls[line.key] = line.ttl_seconds
        return result

    def _local_settle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        after = self._settle_locally(hold, actual)
        if after is not None:
            return after
        return tuple(
            self.add_spent(key, amount, self._ttls.get(key))
            for key, amount in zip(hold.keys, actual, strict=True)
        )

    async def _alocal_settle(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...]:
        after = self._settle_locally(hold, actual)
        if after is not None:
            return after
        return tuple(
            [
                await self._aadd_spent(key, amount, self._ttls.get(key))
                for key, amount in zip(hold.keys, actual, strict=True)
            ]
        )

    def _settle_locally(self, hold: Hold, actual: Sequence[int]) -> tuple[int, ...] | None:
        """Settle a hold taken on the local ledger: count the spend there and keep it to
        reconcile. None when Redis came back (and was reconciled) while the call ran, or
        since the caller looked: what is kept to reconcile would wait for the next outage,
        so the caller records the spend in Redis now."""
        self._local_holds.discard(hold.id)
        local = self._local
        if local is not None:
            # The memory ledger tracks its holds by its own id: give back by amounts.
            local.release(_memory_hold(hold))
        with self._fb_lock:
            local = self._local
            if local is None:
                return None
            after = []
            for key, amount in zip(hold.keys, actual, strict=True):
                ttl = self._ttls.get(key)
                self._pend(key, amount, ttl)
                after.append(local.add_spent(key, amount, ttl))
            return tuple(after)

    def _local_add(
        self,
        local: MemoryLedger,
        key: str,
        amount: int,
        ttl_seconds: int | None,
        token: str | None = None,
    ) -> int:
        with self._fb_lock:
            self._pend(key, amount, ttl_seconds, token)
        return local.add_spent(key, amount, ttl_seconds)

    def _pend(self, key: str, amount: int, ttl: int | None, token: str | None = None) -> None:
        """Keep spend for reconciling (the caller holds ``_fb_lock``). ``token``: a write
        already sent, which Redis may have applied; else the amount joins the key's open
        write."""
        if token is None:
            token = self._open_writes.get(key)
            if token is None:
                token = self._open_writes[key] = self._write_token()
        _, prev, _ = self._unreconciled.get(token, (key, 0, ttl))
        self._unreconciled[token] = (key, prev + amount, ttl)

    def _local_ledger(self) -> MemoryLedger | None:
        local = self._local
        if local is None or time.monotonic() < self._retry_at:
            return local
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            return local
        self._reconcile()
        return self._local

    async def _alocal_ledger(self) -> MemoryLedger | None:
        local = self._local
        if local is None or time.monotonic() < self._retry_at:
            return local
        try:
            await self._aclient().ping()  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            return local
        # Reconciling is a handful of writes once per outage; the sync client is fine here.
        await asyncio.to_thread(self._reconcile)
        return self._local

    def reconcile(self) -> bool:
        """Try Redis now; if it answers, add the spend it missed (settles it did not answer,
        and the spend recorded locally) and leave fallback."""
        if self._local is None:
            if self._unsettled:
                try:
                    self._apply_unsettled()
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    return False
            return True
        self._retry_at = 0.0
        return self._local_ledger() is None

    def _reconcile(self) -> None:
        try:
            self._apply_unsettled()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            return
        with self._fb_lock:
            pending = self._unreconciled
            # Once sent, a write may be applied though no reply comes back: it is sent again
            # unchanged, and spend recorded meanwhile goes to new writes.
            self._open_writes = {}
            try:
                pipe = self.client.pipeline(transaction=False)
                for token, (key, amount, ttl) in pending.items():
                    keys, args = self._add_args(key, amount, ttl, token)
                    pipe.evalsha(_ADD_SPENT.sha, len(keys), *keys, *args)
                if pending:
                    self.client.script_load(_ADD_SPENT.text)
                    pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._retry_at = time.monotonic() + _RETRY_SECONDS
                return
            total = sum(amount for _, amount, _ in pending.values())
            self._unreconciled = {}
            self._local = None
            logger.warning(
                "kavach: Redis at %s answers again: added %d locally recorded amount(s) "
                "(total %d) to Redis; budgets are shared again",
                self.url,
                len(pending),
                total,
            )

    def __repr__(self) -> str:
        state = " degraded" if self._local is not None else ""
        return f"<RedisLedger {self.url} prefix={self.prefix!r}{state}>"


MAX_LIMIT = 2**53 - 1
"""The largest budget limit the Redis ledger counts exactly (its scripts' numbers are
doubles): 9,007,199,254,740,991 in the budget's unit, about $9 million in nano-dollars."""


def _too_large(line: LedgerLine) -> KavachConfigError:
    return KavachConfigError(
        f"budget {line.key!r}: its limit ({line.limit:,} in its unit, nano-dollars for a cost "
        f"budget) is above the {MAX_LIMIT:,} the Redis ledger counts exactly (about "
        f"${MAX_LIMIT / 1e9:,.0f} for a cost budget); lower the limit, or leave the budget out "
        "if it is meant to be unlimited"
    )


def _settle_args(hold: Hold, actual: Sequence[int]) -> list[Any]:
    args: list[Any] = [hold.id]
    for amount, held in zip(actual, hold.amounts, strict=True):
        args += (amount, held)
    return args


def _memory_hold(hold: Hold) -> Hold:
    """The local ledger's own hold behind a fallback hold id ``local-<token>-<id>``."""
    return Hold(hold.id.rsplit("-", 1)[1], hold.keys, hold.amounts, hold.units)


_Orphan = Callable[[Any], None]
_Entry = tuple[bytes, "asyncio.Future[Any]", "_Orphan | None"]


class _Batcher:
    """Pipelines the commands of concurrent callers on one event loop.

    Callers queue a command and await its reply; up to ``max_inflight`` flush tasks each
    take everything queued, write it in one packet on a pooled connection and read the
    replies in order. Each command is still one round trip for its caller; with many
    callers, the per-command cost of redis.asyncio is paid once per batch instead.

    The I/O runs in the flush tasks, never in the caller's task, so a caller cancelled
    mid-flight (a timeout around the call) does not cut a command half-way: its reply is
    still read and handed to ``orphan`` (a reserve gives its hold back there).
    """

    def __init__(self, client: aredis.Redis, *, owned: bool, max_inflight: int = 4) -> None:
        self.client = client
        self.owned = owned
        self._conns: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[_Entry] = []
        self._inflight = 0
        self._max_inflight = max_inflight

    async def call(self, command: bytes, orphan: _Orphan | None = None) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, future, orphan))
        if self._inflight < self._max_inflight:
            self._inflight += 1
            task = loop.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled after the reply arrived but before this task woke: the flush task
            # saw a live future, so undoing the call is ours to do.
            if orphan is not None and future.done() and not future.cancelled():
                if future.exception() is None:
                    orphan(future.result())
            raise

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._inflight -= 1

    async def _send(self, batch: list[_Entry]) -> None:
        pool = self.client.connection_pool
        data = b"".join([cmd for cmd, _, _ in batch])
        for attempt in (0, 1):
            try:
                # Connections stay with the batcher between batches: the pool's checkout
                # costs more than a small batch. A dropped one reconnects on its next send.
                conn: Any = self._conns.pop() if self._conns else await pool.get_connection()  # type: ignore[no-untyped-call]
            except BaseException as exc:
                _fail(batch, exc)
                return
            done = 0
            try:
                await conn.send_packed_command(data)
                for _, future, orphan in batch:
                    try:
                        reply = await conn.read_response()
                    except redis.ResponseError as exc:
                        reply = exc
                    done += 1
                    if future.done():  # the caller was cancelled
                        if orphan is not None and not isinstance(reply, Exception):
                            try:
                                orphan(reply)
                            except Exception:
                                logger.exception("kavach: could not undo a cancelled call")
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                return
            except redis.ConnectionError as exc:
                await conn.disconnect()
                # A dropped pooled connection before any reply: retry the batch once, as
                # the commands' `again` variants (see RedisLedger._send).
                if attempt or done:
                    _fail(batch[done:], exc)
                    return
                data = b"".join([_again(cmd) for cmd, _, _ in batch])
            except BaseException as exc:
                await conn.disconnect()
                _fail(batch[done:], exc)
                if not isinstance(exc, Exception):
                    raise
                return
            finally:
                self._conns.append(conn)

    async def aclose(self) -> None:
        # Let in-flight batches finish and hand their connections back (unfinished ones
        # only: see RedisLedger.aclose).
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        pool = self.client.connection_pool
        conns, self._conns = self._conns, []
        for conn in conns:
            await pool.release(conn)
        if self.owned:
            await self.client.aclose()


def _fail(batch: Sequence[_Entry], exc: BaseException) -> None:
    if not isinstance(exc, Exception):
        exc = redis.ConnectionError(f"interrupted: {type(exc).__name__}")
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(exc)


_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDedupStore:
    """Alert de-duplication across processes: the first ``claim`` of a key in its TTL wins.

    >>> store = RedisDedupStore(redis.Redis())                     # doctest: +SKIP
    >>> store.claim("alert:bot:daily:2026-11-28:0.9", 86_400)       # doctest: +SKIP
    True
    """

    def __init__(self, client: redis.Redis | str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._owned = isinstance(client, str)
        self.client = redis.Redis.from_url(client) if isinstance(client, str) else client
        self.prefix = prefix
        # The token each claim this process holds was set with, for release: a claim that
        # expired and was taken by another process has another token, and is left alone.
        self._tokens: dict[str, bytes] = {}

    def close(self) -> None:
        """Close the client if this store opened it from a URL."""
        if self._owned:
            self.client.close()

    def claim(self, key: str, ttl_seconds: float) -> bool:
        """True for the one caller that claims ``key`` first within ``ttl_seconds``."""
        ttl_ms = max(1, int(ttl_seconds * 1000))
        token = os.urandom(8).hex().encode()
        claimed = bool(self.client.set(f"{self.prefix}dedup:{key}", token, nx=True, px=ttl_ms))
        if claimed:
            if len(self._tokens) > 10_000:  # claims whose deliveries never reported back
                self._tokens.clear()
            self._tokens[key] = token
        return claimed

    def release(self, key: str) -> None:
        """Give back this process's claim of ``key`` (its delivery failed for good), so the
        next event that claims it sends the alert; another process's claim is left alone."""
        token = self._tokens.pop(key, None)
        if token is not None:
            self.client.eval(_RELEASE_IF_OURS, 1, f"{self.prefix}dedup:{key}", token)
