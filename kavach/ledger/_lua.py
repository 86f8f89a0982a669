"""Lua scripts of the Redis ledger. One script per operation, atomic across all its keys.

Each budget line uses three keys (see ``kavach.ledger.redis`` for their names):
``bal`` (hash: ``spent``, ``reserved``), ``exp`` (zset: hold id -> lease expiry in ms,
server clock) and ``held`` (hash: hold id -> amount held on this key, or ``r`` once a
reserve reclaimed the hold, so a late settle still counts its spend exactly once).

Numbers: Redis Lua numbers are doubles, exact for integers below 2**53 (9e15 nano-dollars
is $9 million). Division is corrected to the exact floor, so the reserve script grants the
same units as ``kavach.ledger.base.grantable_units``.
"""

from __future__ import annotations

import hashlib

# Reclaims expired holds on the given lines (KEYS in triples) at server time `now` (ms).
# Appends {hold_id, line_index (1-based), amount} triples to `out`.
_RECLAIM = """
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Lua 5.1 prints numbers as %.14g (1e+15): integers go back to Redis through int().
local function int(x)
  return string.format('%d', x)
end

local function floordiv(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end

local function reclaim(nlines, now, out)
  for i = 1, nlines do
    local bal, exp, held = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
    local ids = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
    if #ids > 0 then
      for _, id in ipairs(ids) do
        local amount = tonumber(redis.call('HGET', held, id) or '0')
        if amount ~= 0 then
          redis.call('HINCRBY', bal, 'reserved', int(-amount))
        end
        -- A tombstone: a late settle of this hold still adds its spend, once.
        redis.call('HSET', held, id, 'r')
        out[#out+1] = id
        out[#out+1] = i
        out[#out+1] = amount
      end
      redis.call('ZREMRANGEBYSCORE', exp, '-inf', now)
    end
  end
end

"""

# KEYS: bal, exp, held per line.
# ARGV: hold_id, lease_ms, min_units, max_units, then per line: limit, fixed, per_unit, ttl (-1: none)
# Returns {1, units, reclaimed} or {0, line_index (0-based), spent, reserved, needed, reclaimed}.
RESERVE = (
    _RECLAIM
    + """
local hold_id = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local min_units = tonumber(ARGV[3])
local max_units = tonumber(ARGV[4])
local nlines = #KEYS / 3
local now = server_ms()
local reclaimed = {}
reclaim(nlines, now, reclaimed)

local units = max_units
for i = 1, nlines do
  local b = redis.call('HMGET', KEYS[3*i-2], 'spent', 'reserved')
  local spent = tonumber(b[1] or '0')
  local reserved = tonumber(b[2] or '0')
  local base = 4 + 4 * (i - 1)
  local limit = tonumber(ARGV[base + 1])
  local fixed = tonumber(ARGV[base + 2])
  local per_unit = tonumber(ARGV[base + 3])
  local free = limit - spent - reserved - fixed
  local fits
  if per_unit > 0 then
    if free >= 0 then fits = floordiv(free, per_unit) else fits = -1 end
  else
    if free >= 0 then fits = max_units else fits = -1 end
  end
  if fits < min_units then
    return {0, i - 1, spent, reserved, fixed + per_unit * min_units, reclaimed}
  end
  if fits < units then units = fits end
end

local expiry = now + lease_ms
for i = 1, nlines do
  local bal, exp, held = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local base = 4 + 4 * (i - 1)
  local amount = tonumber(ARGV[base + 2]) + tonumber(ARGV[base + 3]) * units
  redis.call('HINCRBY', bal, 'reserved', int(amount))
  redis.call('HSETNX', bal, 'spent', 0)
  redis.call('HINCRBY', held, hold_id, int(amount))
  redis.call('ZADD', exp, int(expiry), hold_id)
  local ttl = tonumber(ARGV[base + 4])
  if ttl >= 0 then
    redis.call('EXPIRE', bal, ttl)
    redis.call('EXPIRE', exp, ttl)
    redis.call('EXPIRE', held, ttl)
  end
end
return {1, units, reclaimed}
"""
)

# Ends hold_id on one key: gives back what it still holds. Returns 'held' (it was open),
# 'reclaimed' (a reserve reclaimed it: the call's spend still counts) or 'gone' (already
# settled or released: a second settlement is a no-op).
_END = """
local function end_hold(bal, exp, held, hold_id)
  local v = redis.call('HGET', held, hold_id)
  redis.call('ZREM', exp, hold_id)
  if not v then return 'gone' end
  redis.call('HDEL', held, hold_id)
  if v == 'r' then return 'reclaimed' end
  local amount = tonumber(v)
  if amount ~= 0 then redis.call('HINCRBY', bal, 'reserved', int(-amount)) end
  return 'held'
end
"""

# KEYS: bal, exp, held per line. ARGV: hold_id, then the actual amount per line.
# Gives back what is still held under hold_id and adds the actual amounts to spent, unless
# the hold was already settled. Returns each line's spent after.
SETTLE = (
    _RECLAIM
    + _END
    + """
local hold_id = ARGV[1]
local nlines = #KEYS / 3
local after = {}
local state = {}
for i = 1, nlines do
  local bal = KEYS[3*i-2]
  if state[bal] == nil then
    state[bal] = end_hold(bal, KEYS[3*i-1], KEYS[3*i], hold_id)
  end
  if state[bal] == 'gone' then
    after[i] = tonumber(redis.call('HGET', bal, 'spent') or '0')
  else
    after[i] = redis.call('HINCRBY', bal, 'spent', ARGV[i + 1])
  end
end
return after
"""
)

# KEYS: bal, exp, held per line. ARGV: hold_id.
RELEASE = (
    _RECLAIM
    + _END
    + """
local hold_id = ARGV[1]
local nlines = #KEYS / 3
for i = 1, nlines do
  end_hold(KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], hold_id)
end
return 1
"""
)

# KEYS: bal, exp, held of one line. Reclaims expired holds, then returns
# {spent, reserved, reclaimed}.
READ = (
    _RECLAIM
    + """
local reclaimed = {}
reclaim(1, server_ms(), reclaimed)
local b = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
return {tonumber(b[1] or '0'), tonumber(b[2] or '0'), reclaimed}
"""
)

# KEYS: bal. ARGV: amount, ttl (-1: keep the key's expiry). Returns spent after.
ADD_SPENT = """
local after = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
redis.call('HSETNX', KEYS[1], 'reserved', 0)
local ttl = tonumber(ARGV[2])
if ttl >= 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return after
"""


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()
