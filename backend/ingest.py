"""Ingest: validate a batch of SDK events and store it with its rollups, exactly once.

One transaction per batch: agents and runs are created on first sight, events are
inserted with ``ON CONFLICT (org, idempotency_key) DO NOTHING ... RETURNING`` and
only the rows that were really inserted are added to the hourly and daily rollups,
so a replayed batch changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import itertools
import re
import weakref
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from backend import db
from backend.agent_state import control_entries
from backend.billing import Plan

__all__ = [
    "IngestBatch",
    "IngestEvent",
    "decode_batch",
    "store_batch",
    "BatchError",
    "StoredBatch",
    "PlanLimitExceeded",
    "MAX_COUNT",
    "agent_name_problem",
    "counts_as_call",
    "nests_deeper",
]

# Cost (nano-dollars) and token counts of one event are capped at 2**40: about $1,100 or
# 1.1 trillion tokens, far above any single call. The cap is what keeps the BIGINT sums
# (hourly and daily rollups, runs, the dashboard's monthly totals) from overflowing, which
# PostgreSQL refuses (the batch, and every later one adding to the same row, would fail
# with a 500) and SQLite silently turns into a float. At the cap, one agent and model would
# need 2**63 / 2**41 = 4 million events in a day (input and output tokens are added
# together) to overflow a rollup: more than the Pro plan's events for a month, and
# $9 billion of reported spend. Values this size also stay exact as JavaScript numbers.
MAX_COUNT = 2**40
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Short = Annotated[str, msgspec.Meta(max_length=200)]


class IngestUsage(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    cache_write_1h_tokens: Count = 0
    reasoning_tokens: Count = 0
    input_audio_tokens: Count = 0
    output_audio_tokens: Count = 0
    cache_audio_read_tokens: Count = 0
    input_image_tokens: Count = 0
    output_image_tokens: Count = 0
    input_video_tokens: Count = 0
    web_searches: Count = 0
    file_searches: Count = 0
    input_characters: Count = 0
    audio_seconds: Count = 0


class IngestEvent(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    agent: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    provider: Annotated[str, msgspec.Meta(max_length=64)]
    model: Short
    status: Literal["ok", "error", "refused", "cut", "cancelled"]
    started_at: Annotated[datetime.datetime, msgspec.Meta(tz=True)]
    cost_nanos: Count
    run_id: Short | None = None
    operation: Annotated[str, msgspec.Meta(max_length=32)] = "chat"
    refusal_reason: Short | None = None
    error: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None
    duration_ms: Annotated[float, msgspec.Meta(ge=0, le=1e12)] = 0.0
    reserved_nanos: Count = 0
    usage: IngestUsage = msgspec.field(default_factory=IngestUsage)
    prompt: Annotated[str, msgspec.Meta(max_length=1_000_000)] | None = None
    response_model: Short | None = None
    finish_reasons: tuple[Short, ...] = ()
    max_output_tokens: Count | None = None
    tool_calls: tuple[Any, ...] = ()
    tags: dict[Short, Any] = msgspec.field(default_factory=dict)
    price_tier: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class IngestSdk(msgspec.Struct, forbid_unknown_fields=False):
    version: Short = ""
    instance_id: Short = ""


class IngestBatch(msgspec.Struct, forbid_unknown_fields=False):
    events: list[IngestEvent]
    sdk: IngestSdk | None = None


class BatchError(ValueError):
    """The batch is malformed; the message names the field. ``status`` is 400 or 413."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_batch(
    body: bytes, *, content_encoding: str, max_decoded_bytes: int, max_events: int
) -> IngestBatch:
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, max_decoded_bytes + 1)
        except zlib.error as exc:
            raise BatchError(f"the gzip body is corrupt: {exc}") from None
        if len(body) > max_decoded_bytes or inflater.unconsumed_tail:
            raise BatchError(
                f"the decompressed body is larger than {max_decoded_bytes} bytes", status=413
            )
        if not inflater.eof:
            raise BatchError("the gzip body is truncated")
    elif encoding not in ("", "identity"):
        raise BatchError(f"unsupported Content-Encoding {content_encoding!r}; use gzip", 415)
    try:
        batch = msgspec.json.decode(body, type=IngestBatch)
    except msgspec.ValidationError as exc:
        raise BatchError(f"invalid batch: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BatchError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BatchError(f"invalid batch: {_TOO_DEEP}") from None
    if len(batch.events) > max_events:
        raise BatchError(
            f"too many events in one batch: {len(batch.events)} (at most {max_events})", 413
        )
    _check_events(batch, body)
    return batch


# Events are stored by their UTC start: one outside these bounds is a broken clock or a
# value whose conversion to UTC fails (0001-01-01T00:30+01:00).
_EARLIEST = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_LATEST = datetime.datetime(2200, 1, 1, tzinfo=datetime.UTC)
# An event that starts later than this after the server's clock comes from a host whose
# clock is wrong: filed in a later day or month, it would count as this month's spend on
# the overview, head the event list and outlive the plan's retention. A day leaves room
# for skew and for local time sent as UTC.
_AHEAD = datetime.timedelta(days=1)
# tags and tool_calls are free-form JSON. Deeper than this, decoding them again (the reads,
# the dashboard) could exhaust the stack.
_MAX_NESTING = 32
_TOO_DEEP = f"the JSON nests too deeply (tags and tool_calls may nest {_MAX_NESTING} levels)"


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels in ``value``."""
    if not isinstance(value, (dict, list, tuple)):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _check_events(batch: IngestBatch, body: bytes) -> None:
    """What the schema cannot say; the message names the field, as msgspec's do."""
    for i, e in enumerate(batch.events):
        for name, value in (("tags", e.tags), ("tool_calls", e.tool_calls)):
            if value and nests_deeper(value, _MAX_NESTING):
                raise BatchError(
                    f"invalid batch: {name} nests more than {_MAX_NESTING} levels of lists and "
                    f"objects - at `$.events[{i}].{name}`"
                )
    # A NUL can only arrive escaped; the walk that finds where runs only when one may be there.
    if b"\\u0000" in body and (path := _nul_path(msgspec.json.decode(body), "$")):
        raise BatchError(
            f"invalid batch: text must not contain the NUL character (\\u0000), which "
            f"PostgreSQL cannot store - at `{path}`"
        )
    checked: set[str] = set()
    first_of: dict[str, int] = {}
    latest = min(_LATEST, datetime.datetime.now(datetime.UTC) + _AHEAD)
    for i, e in enumerate(batch.events):
        first = first_of.setdefault(e.id, i)
        if first != i and batch.events[first] != e:
            # The same event sent twice is one event; two events under one id would lose one.
            raise BatchError(
                f"invalid batch: events[{first}] and events[{i}] have the same id {e.id!r} but "
                f"differ; give each event its own id - at `$.events[{i}].id`"
            )
        if e.agent not in checked:
            if problem := agent_name_problem(e.agent):
                raise BatchError(f"invalid batch: {problem} - at `$.events[{i}].agent`")
            checked.add(e.agent)
        try:
            started: datetime.datetime | None = e.started_at.astimezone(datetime.UTC)
        except OverflowError:
            started = None
        if started is None or not _EARLIEST <= started < _LATEST:
            raise BatchError(
                "invalid batch: started_at must be a time from 1970 to 2200 "
                f"(got {e.started_at.isoformat()}) - at `$.events[{i}].started_at`"
            )
        if started >= latest:
            raise BatchError(
                f"invalid batch: started_at {e.started_at.isoformat()} is more than a day "
                f"ahead of the server's clock ({(latest - _AHEAD).isoformat(timespec='seconds')})"
                f": the sending host's clock is wrong; set it (NTP) - at `$.events[{i}].started_at`"
            )


def _nul_path(value: Any, path: str) -> str | None:
    """The JSON path of the first string (or key) under ``value`` that holds a NUL."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, list):
        items: Any = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        for key in value:
            if "\x00" in key:
                return f"{path}.{key!r}"
        items = ((f"{path}.{k}", v) for k, v in value.items())
    else:
        return None
    for item_path, item in items:
        if found := _nul_path(item, item_path):
            return found
    return None


# Agent names are URL path segments (/v1/agents/<name>/kill), items of the control
# stream's comma-separated ``agents`` query and parts of the SDK's ledger keys.
_NAME_FORBIDDEN = ",/?#%:"


def agent_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an agent's name, or None. The SDK checks the same rule."""
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN or c < " " or "\x7f" <= c <= "\x9f"})
    if bad:
        return (
            f"agent name {name!r} contains {', '.join(map(repr, bad))}: an agent name must not "
            "contain any of , / ? # % : or control characters (it is used in URLs, in the "
            "control stream's comma-separated agent list and in ledger keys)"
        )
    if name != name.strip() or name in (".", ".."):
        return (
            f"agent name {name!r} must not start or end with whitespace and must not be "
            "'.' or '..' (it is used in URLs)"
        )
    return None


class PlanLimitExceeded(Exception):
    """The batch would take the organization past its plan; none of it was stored.

    ``used`` is what the organization had before the batch (agents, or events received
    this month) and ``adding`` what the batch would have added."""

    def __init__(self, plan: Plan, limit: Literal["agents", "events"], used: int, adding: int):
        super().__init__(f"the {plan.title} plan's {limit} limit: {used} + {adding}")
        self.plan = plan
        self.limit = limit
        self.used = used
        self.adding = adding


@dataclass(frozen=True)
class StoredBatch:
    accepted: int
    duplicates: int
    agents: list[str]
    control: dict[str, dict[str, Any]]


_EVENT_COLUMNS = (
    "org",
    "agent",
    "run",
    "idempotency_key",
    "provider",
    "model",
    "operation",
    "status",
    "refusal_reason",
    "error",
    "started_at",
    "duration_ms",
    "cost_nanos",
    "reserved_nanos",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "prompt",
    "details",
    "received_at",
)
# Keeps each statement under SQLite's and PostgreSQL's bound-parameter limits.
_ROWS_PER_STATEMENT = 500
_ROLLUP_METRICS = (
    "cost_nanos",
    "calls",
    "tokens",
    "input_tokens",
    "output_tokens",
    "refusals",
    "errors",
)


_PLACEHOLDER = re.compile(r"\{\}")


async def _execute(sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` (``{}`` placeholders) on the current transaction's connection.

    The hot path skips Piccolo's query strings, whose argument handling cost more
    than the database work for a batch of a thousand rows.
    """
    connection = _connection()
    if db.is_sqlite():
        cursor = await connection.execute(sql.replace("{}", "?"), args)
        try:
            rows = await cursor.fetchall()
        finally:
            await cursor.close()
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]
    return [tuple(r) for r in await connection.fetch(_numbered(sql), *args)]


def _connection() -> Any:
    """The current transaction's connection (aiosqlite or asyncpg)."""
    transaction = db.current_engine().current_transaction.get()
    if transaction is None:
        raise RuntimeError("ingest statements run inside a transaction")
    return transaction.connection


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """``{}`` placeholders as PostgreSQL's ``$1, $2, ...`` (statements repeat per batch size)."""
    numbers = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql)


def _values(rows: int, columns: int) -> str:
    row = "(" + ", ".join(["{}"] * columns) + ")"
    return ", ".join([row] * rows)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _details(event: IngestEvent, sdk: IngestSdk | None) -> str:
    usage = event.usage
    return msgspec.json.encode(
        {
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
            "input_audio_tokens": usage.input_audio_tokens,
            "output_audio_tokens": usage.output_audio_tokens,
            "cache_audio_read_tokens": usage.cache_audio_read_tokens,
            "input_image_tokens": usage.input_image_tokens,
            "output_image_tokens": usage.output_image_tokens,
            "input_video_tokens": usage.input_video_tokens,
            "web_searches": usage.web_searches,
            "file_searches": usage.file_searches,
            "input_characters": usage.input_characters,
            "audio_seconds": usage.audio_seconds,
            "price_tier": event.price_tier,
            "response_model": event.response_model,
            "finish_reasons": event.finish_reasons,
            "max_output_tokens": event.max_output_tokens,
            "tool_calls": event.tool_calls,
            "tags": event.tags,
            "sdk": None if sdk is None else {"version": sdk.version, "instance": sdk.instance_id},
        },
    ).decode()


_INSERT_EVENTS = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) {{rows}} "
    "ON CONFLICT (org, idempotency_key) DO NOTHING RETURNING idempotency_key"
)
# PostgreSQL: the batch is copied (binary COPY) into a staging table of the session and
# inserted from there with the same ON CONFLICT clause. Binding a thousand rows as
# parameters, or as one array per column, cost the server more CPU in encoding them than
# the database spends storing them. ON COMMIT DELETE ROWS empties it with each batch.
_STAGING = "ingest_staging"
_CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WITH NO DATA"
)
_INSERT_STAGED = _INSERT_EVENTS.format(rows=f"SELECT {', '.join(_EVENT_COLUMNS)} FROM {_STAGING}")


async def _insert_events(rows: list[tuple[Any, ...]]) -> set[str]:
    """Insert the rows, skipping stored idempotency keys; the keys really inserted."""
    if not db.is_sqlite():
        connection = _connection()
        # IF NOT EXISTS: the pool hands out sessions that may not have it yet; a rolled
        # back first batch takes the table with it, and the next one creates it again.
        await connection.execute(_CREATE_STAGING)
        await connection.copy_records_to_table(_STAGING, records=rows, columns=_EVENT_COLUMNS)
        return {row[0] for row in await connection.fetch(_INSERT_STAGED)}
    inserted: set[str] = set()
    for chunk in _chunks(rows, _ROWS_PER_STATEMENT):
        args = [value for row in chunk for value in row]
        values = "VALUES " + _values(len(chunk), len(_EVENT_COLUMNS))
        result = await _execute(_INSERT_EVENTS.format(rows=values), args)
        inserted.update(row[0] for row in result)
    return inserted


async def _agent_ids(
    org_id: int, names: list[str], now: datetime.datetime, plan: Plan | None
) -> dict[str, int]:
    """The ids of the named agents, creating those seen for the first time.

    With a plan that limits agents, batches that create agents take turns on the
    organization's row (SQLite's write transaction already makes them) and count the
    agents after creating theirs: checked before, concurrent first batches of new
    agents would each see room for themselves."""
    ids = await _select_agents(org_id, names)
    missing = [name for name in names if name not in ids]
    if missing:
        cap = plan.agents if plan is not None else None
        if cap is not None and not db.is_sqlite():
            await _execute("SELECT id FROM organizations WHERE id = {} FOR UPDATE", [org_id])
        created = 0
        for chunk in _chunks(missing, _ROWS_PER_STATEMENT):
            args: list[Any] = []
            for name in chunk:
                args += [org_id, name, "running", 0, now, now]
            created += len(
                await _execute(
                    "INSERT INTO agents (org, name, status, control_version, created_at, "
                    f"last_seen_at) VALUES {_values(len(chunk), 6)} "
                    "ON CONFLICT (org, name) DO NOTHING RETURNING id",
                    args,
                )
            )
        if plan is not None and cap is not None and created:
            [(total,)] = await _execute("SELECT COUNT(*) FROM agents WHERE org = {}", [org_id])
            if total > cap:
                raise PlanLimitExceeded(plan, "agents", total - created, created)
        ids.update(await _select_agents(org_id, missing))
    return ids


async def _select_agents(org_id: int, names: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in _chunks(names, _ROWS_PER_STATEMENT):
        placeholders = ", ".join(["{}"] * len(chunk))
        rows = await _execute(
            f"SELECT id, name FROM agents WHERE org = {{}} AND name IN ({placeholders})",
            [org_id, *chunk],
        )
        ids.update({name: agent_id for agent_id, name in rows})
    return ids


_AGENT_STATE = ("id", "name", "status", "kill_reason", "control_version")
_BUDGET_COLUMNS = (
    "id",
    "org",
    "agent",
    "kind",
    "period",
    "limit_value",
    "created_at",
    "updated_at",
)


async def _touch_agents(
    org_id: int, names: list[str], now: datetime.datetime
) -> list[dict[str, Any]]:
    """Set the agents' last_seen_at; their control state as it is now.

    It locks their rows in name order, as every batch does before it adds to rollups and
    runs: batches that share agents take turns there instead of deadlocking."""
    agents: list[dict[str, Any]] = []
    for chunk in _chunks(names, _ROWS_PER_STATEMENT):
        args: list[Any] = []
        for name in chunk:
            args += [org_id, name, "running", 0, now, now]
        rows = await _execute(
            "INSERT INTO agents (org, name, status, control_version, created_at, last_seen_at) "
            f"VALUES {_values(len(chunk), 6)} "
            "ON CONFLICT (org, name) DO UPDATE SET last_seen_at = excluded.last_seen_at "
            f"RETURNING {', '.join(_AGENT_STATE)}",
            args,
        )
        agents += [dict(zip(_AGENT_STATE, row, strict=True)) for row in rows]
    return agents


async def _budgets(org_id: int) -> list[dict[str, Any]]:
    rows = await _execute(
        f"SELECT {', '.join(_BUDGET_COLUMNS)} FROM budgets WHERE org = {{}} ORDER BY id", [org_id]
    )
    return [dict(zip(_BUDGET_COLUMNS, row, strict=True)) for row in rows]


_RunKey = tuple[int, str]  # (agent id, the SDK's run id)


async def _run_ids(org_id: int, runs: dict[_RunKey, datetime.datetime]) -> dict[_RunKey, int]:
    """The ids of the runs, creating those seen for the first time (with no calls yet)."""
    keys = sorted(runs)
    ids = await _select_runs(org_id, keys)
    missing = [key for key in keys if key not in ids]
    if missing:
        for chunk in _chunks(missing, _ROWS_PER_STATEMENT):
            args: list[Any] = []
            for agent_id, run_key in chunk:
                started = runs[(agent_id, run_key)]
                args += [org_id, agent_id, run_key, started, started, 0, 0]
            await _execute(
                "INSERT INTO runs (org, agent, run_key, started_at, last_event_at, calls, "
                f"cost_nanos) VALUES {_values(len(chunk), 7)} "
                "ON CONFLICT (org, agent, run_key) DO NOTHING",
                args,
            )
        ids.update(await _select_runs(org_id, missing))
    return ids


async def _select_runs(org_id: int, keys: list[_RunKey]) -> dict[_RunKey, int]:
    ids: dict[_RunKey, int] = {}
    for chunk in _chunks(keys, _ROWS_PER_STATEMENT):
        condition = " OR ".join(["(agent = {} AND run_key = {})"] * len(chunk))
        flat = [value for key in chunk for value in key]
        rows = await _execute(
            f"SELECT id, agent, run_key FROM runs WHERE org = {{}} AND ({condition})",
            [org_id, *flat],
        )
        ids.update({(agent_id, run_key): run_id for run_id, agent_id, run_key in rows})
    return ids


async def _add_to_runs(org_id: int, totals: dict[_RunKey, list[Any]]) -> None:
    """Add calls and cost to the runs (which exist: :func:`_run_ids` made them).

    A run spans its earliest and latest event, in whatever order they arrive: an SDK
    sends a batch it spooled while the backend was down after later ones."""
    for chunk in _chunks(sorted(totals), _ROWS_PER_STATEMENT):
        args: list[Any] = []
        for agent_id, run_key in chunk:
            calls, cost, first, last = totals[(agent_id, run_key)]
            args += [org_id, agent_id, run_key, first, last, calls, cost]
        await _execute(
            "INSERT INTO runs (org, agent, run_key, started_at, last_event_at, calls, cost_nanos) "
            f"VALUES {_values(len(chunk), 7)} ON CONFLICT (org, agent, run_key) DO UPDATE SET "
            "calls = runs.calls + excluded.calls, "
            "cost_nanos = runs.cost_nanos + excluded.cost_nanos, "
            "started_at = CASE WHEN excluded.started_at < runs.started_at "
            "THEN excluded.started_at ELSE runs.started_at END, "
            "last_event_at = CASE WHEN runs.last_event_at < excluded.last_event_at "
            "THEN excluded.last_event_at ELSE runs.last_event_at END",
            args,
        )


async def _add_rollups(
    table: str, bucket_column: str, deltas: dict[tuple[Any, ...], list[int]]
) -> None:
    items = sorted(deltas.items())
    metric_list = ", ".join(_ROLLUP_METRICS)
    updates = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in _ROLLUP_METRICS)
    for chunk in _chunks(items, _ROWS_PER_STATEMENT):
        args: list[Any] = []
        for key, values in chunk:
            args += [*key, *values]
        await _execute(
            f"INSERT INTO {table} (org, agent, model, {bucket_column}, {metric_list}) "
            f"VALUES {_values(len(chunk), 4 + len(_ROLLUP_METRICS))} "
            f"ON CONFLICT (org, agent, model, {bucket_column}) DO UPDATE SET {updates}",
            args,
        )


def counts_as_call(event: IngestEvent) -> bool:
    """Whether the event counts in a calls budget, exactly as the SDK counted it.

    The SDK adds a call to a calls budget when it commits usage: a call that returned
    (``ok``), a stream it cut, or a stream that failed or was cancelled after it delivered
    something. A call that failed before anything was billed is released: it reports
    ``error`` or ``cancelled`` with no usage and no cost, and counts only as an error.
    Counting it here would make the dashboard, the server-side stop and the spend an SDK
    seeds from after a restart disagree with the SDK's own count."""
    if event.status in ("ok", "cut"):
        return True
    if event.status in ("error", "cancelled"):
        usage = event.usage
        return usage.input_tokens + usage.output_tokens > 0 or event.cost_nanos > 0
    return False


# SQLite has one writer. Queueing batches on a lock in the process is much faster than
# letting them collide on the file lock, whose busy handler sleeps with back-off.
_sqlite_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _writer_lock() -> asyncio.Lock | None:
    if not db.is_sqlite():
        return None
    loop = asyncio.get_running_loop()
    lock = _sqlite_writers.get(loop)
    if lock is None:
        lock = _sqlite_writers[loop] = asyncio.Lock()
    return lock


async def store_batch(org_id: int, batch: IngestBatch, plan: Plan | None = None) -> StoredBatch:
    """Write the batch; the answer counts what was new and what had been stored before.

    Raises :class:`PlanLimitExceeded`, having stored nothing, if the batch would take the
    organization past the plan's agents or events per month."""
    lock = _writer_lock()
    if lock is None:
        return await _store_batch(org_id, batch, plan)
    async with lock:
        return await _store_batch(org_id, batch, plan)


async def _store_batch(org_id: int, batch: IngestBatch, plan: Plan | None) -> StoredBatch:
    now = datetime.datetime.now(datetime.UTC)
    unique: dict[str, IngestEvent] = {}
    for event in batch.events:
        unique.setdefault(event.id, event)
    events = list(unique.values())
    in_batch_duplicates = len(batch.events) - len(events)
    agent_names = sorted({e.agent for e in events})
    if not events:
        return StoredBatch(accepted=0, duplicates=in_batch_duplicates, agents=[], control={})

    async with db.transaction():
        agent_ids = await _agent_ids(org_id, agent_names, now, plan)
        run_starts: dict[_RunKey, datetime.datetime] = {}
        for e in events:
            if e.run_id:
                key = (agent_ids[e.agent], e.run_id)
                if key not in run_starts or e.started_at < run_starts[key]:
                    run_starts[key] = e.started_at
        run_ids = await _run_ids(org_id, run_starts) if run_starts else {}

        rows: list[tuple[Any, ...]] = []
        for e in events:
            agent_id = agent_ids[e.agent]
            rows.append(
                (
                    org_id,
                    agent_id,
                    run_ids.get((agent_id, e.run_id)) if e.run_id else None,
                    e.id,
                    e.provider,
                    e.model,
                    e.operation,
                    e.status,
                    e.refusal_reason,
                    e.error,
                    e.started_at.astimezone(datetime.UTC),
                    e.duration_ms,
                    e.cost_nanos,
                    e.reserved_nanos,
                    e.usage.input_tokens,
                    e.usage.output_tokens,
                    e.usage.cache_read_tokens,
                    e.usage.cache_write_tokens,
                    e.usage.reasoning_tokens,
                    e.prompt,
                    _details(e, batch.sdk),
                    now,
                )
            )
        inserted = await _insert_events(rows)

        hourly: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 7)
        daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 7)
        run_totals: dict[_RunKey, list[Any]] = {}
        for e in events:
            if e.id not in inserted:
                continue
            agent_id = agent_ids[e.agent]
            started = e.started_at.astimezone(datetime.UTC)
            delta = (
                e.cost_nanos,
                1 if counts_as_call(e) else 0,
                e.usage.input_tokens + e.usage.output_tokens,
                e.usage.input_tokens,
                e.usage.output_tokens,
                1 if e.status == "refused" else 0,
                1 if e.status == "error" else 0,
            )
            hour = started.replace(minute=0, second=0, microsecond=0)
            rollup_keys: tuple[tuple[dict[tuple[Any, ...], list[int]], tuple[Any, ...]], ...] = (
                (hourly, (org_id, agent_id, e.model, hour)),
                (daily, (org_id, agent_id, e.model, started.date())),
            )
            for bucket, rollup_key in rollup_keys:
                totals = bucket[rollup_key]
                for i, value in enumerate(delta):
                    totals[i] += value
            if e.run_id:
                current = run_totals.setdefault((agent_id, e.run_id), [0, 0, started, started])
                current[0] += delta[1]
                current[1] += e.cost_nanos
                current[2] = min(current[2], started)
                current[3] = max(current[3], started)

        # The rows concurrent batches share (agents, rollups, runs) are written last, so
        # their locks are held only until the commit that follows; the events above are
        # inserted while other batches hold them.
        agents = await _touch_agents(org_id, agent_names, now)
        if hourly:
            await _add_rollups("spend_hourly", "bucket", hourly)
            await _add_rollups("spend_daily", "day", daily)
        if run_totals:
            await _add_to_runs(org_id, run_totals)
        if inserted:
            # The plan's monthly limit counts events by when they arrive: the rollups
            # file them by the time they claim, which a backdated event puts in a month
            # already over. One row per org, written last like the rollups.
            # Its row lock makes concurrent batches take turns at the plan's limit.
            [(received,)] = await _execute(
                "INSERT INTO usage_monthly (org, month, events) VALUES ({}, {}, {}) "
                "ON CONFLICT (org, month) DO UPDATE SET "
                "events = usage_monthly.events + excluded.events RETURNING events",
                [org_id, now.date().replace(day=1), len(inserted)],
            )
            cap = plan.events_per_month if plan is not None else None
            if plan is not None and cap is not None and received > cap:
                raise PlanLimitExceeded(plan, "events", received - len(inserted), len(inserted))
        # The agents' rows are locked until the commit: their state cannot change
        # between the update above and the answer. The budgets are read in the same
        # transaction, on its connection.
        control = control_entries(agents, await _budgets(org_id), agent_names)
    accepted = len(inserted)
    return StoredBatch(
        accepted=accepted,
        duplicates=in_batch_duplicates + len(events) - accepted,
        agents=agent_names,
        control=control,
    )
