"""Redis key layout and the server-side (Lua) scripts of the shared state store.

Every key starts with ``state.prefix``: routers with the same Redis and prefix share
state, others do not see each other. An *account* is a user (``u`` + name) or a client
key (``k`` + user + key name), joined with the unit separator, which config names do not
contain. Keys::

    {P}:w:{acct}:rpm:{minute}      int    requests in that wall-clock minute (TTL WINDOW_TTL_S)
    {P}:w:{acct}:tpm:{minute}      int    tokens in that minute (estimates, corrected)
    {P}:day:{acct}:{YYYY-MM-DD}    int    requests admitted that UTC day (TTL DAY_TTL_S)
    {P}:slots:{acct}               zset   in-flight requests, scored by lease expiry (ms)
    {P}:spend:{acct}:{period}:{id} hash   requests, prompt, completion, cost, and per model
                                          r|m, p|m, c|m, $|m (at most MAX_MODELS, then other)
    {P}:accounts                   set    every account that ever recorded usage
    {P}:tokens                     hash   provider<US>key<US>model -> selection tokens
    {P}:keyreq:{YYYY-MM-DD}        hash   provider<US>key -> requests that day (key quotas)
    {P}:cooldowns                  hash   provider<US>key -> Unix time the cooldown ends
    {P}:epoch                      string set once per Redis lifetime: gone = Redis lost data
    {P}:kv:{name}                  string the generic get/put hook, with its TTL

The scripts make a decision and its counting one atomic step on the server, so two
replicas can never both take the last request of a limit.
"""

from __future__ import annotations

import hashlib
from typing import Final

from ..ledger.limits import MAX_MODELS

__all__ = [
    "ADMIT",
    "APPLY",
    "COOLDOWN",
    "COUNTER_KINDS",
    "DAY_TTL_S",
    "SEP",
    "WINDOW_TTL_S",
    "Script",
    "account_id",
    "expected_type",
    "key_of",
]

SEP: Final = "\x1f"
# A minute's rpm/tpm count is read during that minute and the next (the sliding window's
# previous bucket); half a minute more covers replicas' clock skew.
WINDOW_TTL_S: Final = 150
# A UTC day's request count (per account, per provider key) outlives its day by a whole
# day, so a write queued across midnight or a skewed clock still lands on a live key.
DAY_TTL_S: Final = 2 * 86_400


def account_id(user: str, key: str | None = None) -> str:
    """The account of a user (``key`` None) or of one of its client keys."""
    return f"u{SEP}{user}" if key is None else f"k{SEP}{user}{SEP}{key}"


def key_of(prefix: str, *parts: str | int) -> str:
    return ":".join((prefix, *map(str, parts)))


# The Redis type of each kind of key above (the part after the prefix); ``applied`` marks
# a batch APPLY has run. A key of another type under the prefix was written by something
# else, and every script touching it fails until it is deleted.
_KEY_TYPES: Final[dict[str, str]] = {
    "w": "string", "day": "string", "slots": "zset", "spend": "hash", "accounts": "set",
    "tokens": "hash", "keyreq": "hash", "cooldowns": "hash", "epoch": "string",
    "kv": "string", "applied": "string"}
# Kinds whose value (string) or every field (hash) is a number the scripts add to.
COUNTER_KINDS: Final = frozenset({"w", "day", "spend", "tokens", "keyreq", "cooldowns"})


def expected_type(prefix: str, key: str) -> tuple[str, str] | None:
    """(kind, Redis type) the router keeps at ``key``, or None if it is not one of ours."""
    if not key.startswith(prefix + ":"):
        return None
    kind = key[len(prefix) + 1:].partition(":")[0]
    found = _KEY_TYPES.get(kind)
    return None if found is None else (kind, found)


class Script:
    """A Lua script and its SHA1, for EVALSHA (loaded again after a Redis restart)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names scripts by SHA1


# A batch of admissions, decided in order as if each were its own call: each sees what
# those before it counted, and a refused one counts nothing. The script builds every key
# itself (the layout above) from the prefix, the minute and the period ids it is given
# and each account's id, so a caller's part of the call is the same in every call of its
# day and the router packs it once (redis_admit.py). ARGV: prefix, groups, this minute,
# the previous minute, seconds into the minute, now (ms), slot lease (ms), seconds to UTC
# midnight, the ids of the daily, weekly, monthly and total periods; then 14 per group (a
# group: the admissions of one caller), 7 per account (user, then key): its id, rpm, tpm,
# daily_requests, max_concurrent, budget USD (-1 if unset), the budget's period (1 to 4,
# in that order); then 3 per admission: its group, its token estimate, its slot member
# ("replica:seq|USD reserved"). Returns one line per admission, joined by newlines (one
# reply to read): "ok" | "budget ACCOUNT SPENT" | "limit ACCOUNT NAME WAIT VALUE", the
# account 1 (user) or 2 (key). The window arithmetic is limits._Window's, and a budget
# counts what is spent plus what requests in flight reserve, as the Ledger does; so both
# answer alike. An account's counters are read once per call and its counts written
# once, at the end.
ADMIT: Final = Script(f"local WINDOW_TTL, DAY_TTL = {WINDOW_TTL_S}, {DAY_TTL_S}" + """
local P = ARGV[1]
local PERIODS = {'daily', 'weekly', 'monthly', 'total'}
local groups = tonumber(ARGV[2])
local minute, before = ARGV[3], ARGV[4]
local elapsed = tonumber(ARGV[5])
local now_ms = tonumber(ARGV[6])
local lease_ms = tonumber(ARGV[7])
local day_left = tonumber(ARGV[8])
local first = 13 + groups * 14
local function count(k)
  local v = tonumber(redis.call('GET', k) or '0')
  if v == nil then error('key ' .. k .. ' holds a value that is not a number') end
  return v
end
local function pos(v)
  if v < 0 then return 0 end
  return v
end
local function wait(cur, prev, need, limit)
  if need > limit then need = limit end
  if prev * (1 - elapsed / 60) + cur + need <= limit then return 0 end
  local room = limit - need - cur
  if room >= 0 then
    if prev > 0 then return math.max(0, 60 * (1 - room / prev) - elapsed) end
    return 0
  end
  return (60 - elapsed) + 60 * (1 - (limit - need) / cur)
end
-- Per account (by its id): its keys, what Redis held before this call, read when first
-- needed, and what this call admitted so far (n requests, tokens, USD, slot members).
local accounts, order, spent = {}, {}, {}
local function account(a)
  local id = ARGV[a]
  local s = accounts[id]
  if s == nil then
    local w = P .. ':w:' .. id
    s = {n = 0, tokens = 0, usd = 0, members = {},
         rpm = w .. ':rpm:' .. minute, tpm = w .. ':tpm:' .. minute,
         rpm0 = w .. ':rpm:' .. before, tpm0 = w .. ':tpm:' .. before,
         day = P .. ':day:' .. id .. ':' .. ARGV[9], slots = P .. ':slots:' .. id}
    accounts[id] = s
    order[#order + 1] = s
  end
  return s
end
local function window(s, name)
  if s[name .. 'n'] == nil then
    s[name .. 'n'] = {count(s[name]), count(s[name .. '0'])}
  end
  return s[name .. 'n']
end
local function slots(s, reserved)
  if s.card ~= nil and (s.reserved ~= nil or not reserved) then return end
  if not s.trimmed then
    redis.call('ZREMRANGEBYSCORE', s.slots, '-inf', now_ms)
    s.trimmed = true
  end
  if reserved then
    local members, r = redis.call('ZRANGE', s.slots, 0, -1), 0
    for _, m in ipairs(members) do r = r + (tonumber(string.match(m, '|(.*)$')) or 0) end
    s.card, s.reserved = #members, r
  else
    s.card = redis.call('ZCARD', s.slots)
  end
end
local function decide(g, est)
  for j = 1, 2 do
    local a = 13 + (g - 1) * 14 + (j - 1) * 7
    local usd = tonumber(ARGV[a + 5])
    if usd >= 0 then
      local s = account(a)
      slots(s, true)
      local p = tonumber(ARGV[a + 6])
      local h = P .. ':spend:' .. ARGV[a] .. ':' .. PERIODS[p] .. ':' .. ARGV[8 + p]
      if spent[h] == nil then spent[h] = tonumber(redis.call('HGET', h, 'cost') or '0') end
      if spent[h] + s.reserved + s.usd >= usd then
        return 'budget ' .. j .. ' ' .. tostring(spent[h])
      end
    end
  end
  local worst = nil
  local function consider(w, j, name, value)
    if worst == nil or w > worst[1] then worst = {w, j, name, value} end
  end
  for j = 1, 2 do
    local a = 13 + (g - 1) * 14 + (j - 1) * 7
    local s = account(a)
    local rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local daily, conc = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    if conc >= 0 then
      slots(s, false)
      if s.card + s.n >= conc then consider(1.0, j, 'max_concurrent', conc) end
    end
    if daily >= 0 then
      if s.dayn == nil then s.dayn = count(s.day) end
      if pos(s.dayn + s.n) >= daily then consider(day_left, j, 'daily_requests', daily) end
    end
    if rpm >= 0 then
      local r = window(s, 'rpm')
      local w = wait(pos(r[1] + s.n), pos(r[2]), 1, rpm)
      if w > 0 then consider(w, j, 'rpm', rpm) end
    end
    if tpm >= 0 then
      local t = window(s, 'tpm')
      local w = wait(pos(t[1] + s.tokens), pos(t[2]), est, tpm)
      if w > 0 then consider(w, j, 'tpm', tpm) end
    end
  end
  if worst ~= nil then
    return 'limit ' .. worst[2] .. ' ' .. worst[3] .. ' ' .. tostring(worst[1]) .. ' '
      .. string.format('%d', worst[4])
  end
  return nil
end
local out = {}
for i = 1, (#ARGV - first + 1) / 3 do
  local a = first + (i - 1) * 3
  local g, est, slot = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  local refused = decide(g, est)
  if refused ~= nil then
    out[i] = refused
  else
    out[i] = 'ok'
    local usd = tonumber(string.match(slot, '|(.*)$')) or 0
    for j = 1, 2 do
      local s = account(13 + (g - 1) * 14 + (j - 1) * 7)
      s.n, s.tokens, s.usd = s.n + 1, s.tokens + est, s.usd + usd
      s.members[#s.members + 1] = now_ms + lease_ms
      s.members[#s.members + 1] = slot
    end
  end
end
for _, s in ipairs(order) do
  if s.n > 0 then
    -- An EXPIRE only when the key is new: the first count of its minute or day.
    if redis.call('INCRBY', s.rpm, s.n) == s.n then redis.call('EXPIRE', s.rpm, WINDOW_TTL) end
    if s.tokens ~= 0 and redis.call('INCRBY', s.tpm, s.tokens) == s.tokens then
      redis.call('EXPIRE', s.tpm, WINDOW_TTL)
    end
    if redis.call('INCRBY', s.day, s.n) == s.n then redis.call('EXPIRE', s.day, DAY_TTL) end
    redis.call('ZADD', s.slots, unpack(s.members))
    redis.call('PEXPIRE', s.slots, lease_ms * 2)
  end
end
return table.concat(out, '\\n')
""")

# A batch of queued writes, applied at most once: KEYS[1] is the batch's id, kept 10
# minutes. A batch whose answer was lost (Redis stalled after reading it) is sent again
# with the same id and skipped, so nothing is counted twice. ARGV[1] is the prefix, then
# a flat list of ops. U and K are a request's two accounts (user, client key): the ops
# that settle a request name them and the script builds their keys (the layout above).
#   A key amount ttl           INCRBY (+EXPIRE when ttl > 0)
#   H hash field n ttl         HINCRBY
#   S hash field n ttl         HSETNX (a first replica seeding the fleet's counters)
#   Z zset member              ZREM
#   Q ids U K model requests prompt completion cost
#                              spend of one model by both accounts, in the hashes of
#                              their daily, weekly and monthly periods (ids: those three
#                              ids, space-separated) and total (at most MAX_MODELS models each)
#   T minute U K amount        both accounts' tpm count of that minute, corrected
#   V U K old new expiry       a slot recorded: the same slot, reserving nothing now
#   Y U K member               a slot released, from both accounts' in-flight sets
# Keys travel in ARGV: the store targets one Redis (not a cluster), where that is allowed.
APPLY: Final = Script(f"local WINDOW_TTL, MAX_MODELS = {WINDOW_TTL_S}, {MAX_MODELS}" + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 600) then return 0 end
local P = ARGV[1]
local TTLS = {3 * 86400, 15 * 86400, 63 * 86400}
local PERIODS = {'daily', 'weekly', 'monthly', 'total'}
local function spend(a, i)
  local ids = {}
  for id in string.gmatch(a[i + 1], '%S+') do ids[#ids + 1] = id end
  ids[4] = 'total'
  local n, p, c, cost = tonumber(a[i + 5]), tonumber(a[i + 6]), tonumber(a[i + 7]), a[i + 8]
  for u = 2, 3 do
    local acct = a[i + u]
    for j = 1, 4 do
      local h, m = P .. ':spend:' .. acct .. ':' .. PERIODS[j] .. ':' .. ids[j], a[i + 4]
      if redis.call('HEXISTS', h, 'r|' .. m) == 0 then
        if tonumber(redis.call('HGET', h, '#models') or '0') >= MAX_MODELS then m = 'other' end
        if redis.call('HEXISTS', h, 'r|' .. m) == 0 then redis.call('HINCRBY', h, '#models', 1) end
      end
      redis.call('HINCRBY', h, 'requests', n)
      redis.call('HINCRBY', h, 'prompt', p)
      redis.call('HINCRBY', h, 'completion', c)
      redis.call('HINCRBYFLOAT', h, 'cost', cost)
      redis.call('HINCRBY', h, 'r|' .. m, n)
      redis.call('HINCRBY', h, 'p|' .. m, p)
      redis.call('HINCRBY', h, 'c|' .. m, c)
      redis.call('HINCRBYFLOAT', h, '$|' .. m, cost)
      if j < 4 then redis.call('EXPIRE', h, TTLS[j]) end
    end
    redis.call('SADD', P .. ':accounts', acct)
  end
end
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'A' then
    redis.call('INCRBY', ARGV[i + 1], ARGV[i + 2])
    if tonumber(ARGV[i + 3]) > 0 then redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 3]) end
    i = i + 4
  elseif op == 'H' or op == 'S' then
    if op == 'H' then
      redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    else
      redis.call('HSETNX', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    end
    if tonumber(ARGV[i + 4]) > 0 then redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 4]) end
    i = i + 5
  elseif op == 'Z' then
    redis.call('ZREM', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'Q' then
    spend(ARGV, i)
    i = i + 9
  elseif op == 'T' then
    for u = 2, 3 do
      local k = P .. ':w:' .. ARGV[i + u] .. ':tpm:' .. ARGV[i + 1]
      redis.call('INCRBY', k, ARGV[i + 4])
      redis.call('EXPIRE', k, WINDOW_TTL)
    end
    i = i + 5
  elseif op == 'V' then
    for u = 1, 2 do
      local k = P .. ':slots:' .. ARGV[i + u]
      if redis.call('ZREM', k, ARGV[i + 3]) == 1 then
        redis.call('ZADD', k, tonumber(ARGV[i + 5]), ARGV[i + 4])
      end
    end
    i = i + 6
  elseif op == 'Y' then
    for u = 1, 2 do redis.call('ZREM', P .. ':slots:' .. ARGV[i + u], ARGV[i + 3]) end
    i = i + 4
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return 1
""")

# A cooldown only ever lengthens: KEYS: cooldowns hash; ARGV: field, Unix end time.
COOLDOWN: Final = Script("""
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
""")
