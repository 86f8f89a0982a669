"""Lua scripts of the Redis ledger. One script per operation, atomic across all its keys.

Each budget line uses three keys (see ``kavach.ledger.redis`` for their names):
``bal`` (hash: ``spent``, ``reserved``), ``holds`` (sorted set: one member
``<hold id>:<line>:<amount>`` per open hold, scored by its lease expiry in ms, server clock)
and ``reclaimed`` (set of hold ids a reserve reclaimed, so a late settle of such a hold
still counts its spend, exactly once). The amount lives in the member, so a reserve writes
one sorted-set entry per key and a settle removes it with one ZREM.

Numbers: Redis Lua numbers are doubles, exact for integers below 2**53 (9e15 nano-dollars
is $9 million; ``RedisLedger`` refuses a budget above that). Division is corrected to the
exact floor, so the reserve script grants the
same units as ``kavach.ledger.base.grantable_units``; integers go back to Redis formatted
with ``%d`` (Lua would print 1e+15).
"""

from __future__ import annotations

import hashlib

_PRELUDE = """
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x)
  return string.format('%d', x)
end

-- Below 2**53 the double quotient is off by at most one: one step each way corrects it.
-- No loop: past 2**53 (q + 1 == q) a loop would never end and hold Redis busy.
local function floordiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

-- Gives back the holds on lines 1..nlines whose lease ended before `now`; appends
-- {hold_id, line (1-based), amount} to `out`.
local function reclaim(nlines, now, out)
  for i = 1, nlines do
    local bal, holds, reclaimed = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
    local members = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
    if #members > 0 then
      local total = 0
      for _, member in ipairs(members) do
        local id, amount = string.match(member, '^(.+):%d+:(%d+)$')
        amount = tonumber(amount)
        total = total + amount
        redis.call('SADD', reclaimed, id)
        out[#out+1] = id
        out[#out+1] = i
        out[#out+1] = amount
      end
      redis.call('HINCRBY', bal, 'reserved', int(-total))
      redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
      local ttl = redis.call('TTL', bal)
      if ttl > 0 then redis.call('EXPIRE', reclaimed, ttl) end
    end
  end
end

-- Ends hold_id on every line: removes its sorted-set members and gives back what they
-- held. SETTLE passes ARGV[2i] (line i's actual amount, added to spent) and ARGV[2i+1]
-- (what it held); RELEASE passes only what each line held, at ARGV[1+i].
-- A hold that a reserve reclaimed still adds its spend once; a hold already ended adds
-- nothing (a second settlement is a no-op).
local function end_hold(hold_id, nlines, add)
  local after = {}
  local state = {}
  for i = 1, nlines do
    local bal, holds, reclaimed = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
    local held
    if add then held = ARGV[2 * i + 1] else held = ARGV[1 + i] end
    local live = redis.call('ZREM', holds, hold_id .. ':' .. i .. ':' .. held) == 1
    if live then
      if held ~= '0' then redis.call('HINCRBY', bal, 'reserved', '-' .. held) end
    elseif state[bal] == nil then
      state[bal] = redis.call('SREM', reclaimed, hold_id) == 1
    end
    if add then
      if live or state[bal] then
        after[i] = redis.call('HINCRBY', bal, 'spent', ARGV[2 * i])
      else
        after[i] = tonumber(redis.call('HGET', bal, 'spent') or '0')
      end
    end
  end
  return after
end
"""

# KEYS: bal, holds, reclaimed per line.
# ARGV: hold_id, lease_ms, min_units, max_units, then per line: limit, fixed, per_unit, ttl (-1: none)
# Returns {1, units, reclaimed} or {0, line index (0-based), spent, reserved, needed, reclaimed}.
RESERVE = (
    _PRELUDE
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
  local fixed = tonumber(ARGV[base + 2])
  local per_unit = tonumber(ARGV[base + 3])
  local free = tonumber(ARGV[base + 1]) - spent - reserved - fixed
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

local expiry = int(now + lease_ms)
for i = 1, nlines do
  local bal, holds = KEYS[3*i-2], KEYS[3*i-1]
  local base = 4 + 4 * (i - 1)
  local amount = int(tonumber(ARGV[base + 2]) + tonumber(ARGV[base + 3]) * units)
  redis.call('HINCRBY', bal, 'reserved', amount)
  redis.call('ZADD', holds, expiry, hold_id .. ':' .. i .. ':' .. amount)
  local ttl = ARGV[base + 4]
  if ttl ~= '-1' then
    redis.call('EXPIRE', bal, ttl)
    redis.call('EXPIRE', holds, ttl)
  end
end
return {1, units, reclaimed}
"""
)

# RESERVE for a retry whose first attempt may have run (its reply was lost): if the hold's
# member is already on its first key, that attempt held the amount, so return its grant
# (the units follow from the amount held on a line paid per unit) instead of holding it a
# second time. It scans the key's open holds, a cost paid only on such a retry. A hold that
# a reserve reclaimed in between is gone, and a fresh grant under the same id is then the
# only one.
RESERVE_AGAIN = (
    """
local function held(i)
  local head = ARGV[1] .. ':' .. i .. ':'
  for _, member in ipairs(redis.call('ZRANGE', KEYS[3*i-1], 0, -1)) do
    if string.sub(member, 1, #head) == head then
      return tonumber(string.sub(member, #head + 1))
    end
  end
  return nil
end
local function granted()
  local amount = held(1)
  if amount == nil then return nil end
  for i = 1, #KEYS / 3 do
    local base = 4 + 4 * (i - 1)
    local per_unit = tonumber(ARGV[base + 3])
    if per_unit > 0 then
      if i > 1 then amount = held(i) end
      if amount == nil then return nil end
      return (amount - tonumber(ARGV[base + 2])) / per_unit
    end
  end
  return tonumber(ARGV[4])
end
local granted_units = granted()
if granted_units ~= nil then return {1, granted_units, {}} end
"""
    + RESERVE
)

# KEYS: bal, holds, reclaimed per line. ARGV: hold_id, then per line: actual, held.
# Returns each line's spent after.
SETTLE = (
    _PRELUDE
    + """
return end_hold(ARGV[1], #KEYS / 3, true)
"""
)

# KEYS: bal, holds, reclaimed per line. ARGV: hold_id, then per line: held.
RELEASE = (
    _PRELUDE
    + """
end_hold(ARGV[1], #KEYS / 3, false)
return 1
"""
)

# KEYS: bal, holds, reclaimed of one line. Reclaims expired holds, then returns
# {spent, reserved, reclaimed}.
READ = (
    _PRELUDE
    + """
local reclaimed = {}
reclaim(1, server_ms(), reclaimed)
local b = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
return {tonumber(b[1] or '0'), tonumber(b[2] or '0'), reclaimed}
"""
)

# KEYS: bal, the write's marker (``applied:<token>``). ARGV: amount, ttl (-1: keep the
# key's expiry), the marker's ttl. Adds the amount only if no write with this token did
# before (the first attempt ran, its reply was lost), so a retry never counts it twice.
# Returns spent after either way.
ADD_SPENT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
end
local after = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl >= 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return after
"""


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()
