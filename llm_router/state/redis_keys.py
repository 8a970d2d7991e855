"""Redis key layout and the server-side (Lua) scripts of the shared state store.

Every key starts with ``state.prefix``: routers with the same Redis and prefix share
state, others do not see each other. An *account* is a user (``u`` + name) or a client
key (``k`` + user + key name), joined with the unit separator, which config names do not
contain. Keys::

    {P}:w:{acct}:rpm:{minute}      int    requests in that wall-clock minute (TTL 150 s)
    {P}:w:{acct}:tpm:{minute}      int    tokens in that minute (estimates, corrected)
    {P}:day:{acct}:{YYYY-MM-DD}    int    requests admitted that UTC day (TTL 2 days)
    {P}:slots:{acct}               zset   in-flight requests, scored by lease expiry (ms)
    {P}:spend:{acct}:{period}:{id} hash   requests, prompt, completion, cost, and per model
                                          r|m, p|m, c|m, $|m (at most 256 models, then other)
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

__all__ = [
    "ADMIT",
    "APPLY",
    "COOLDOWN",
    "COUNTER_KINDS",
    "SEP",
    "Script",
    "account_id",
    "expected_type",
    "key_of",
]

SEP: Final = "\x1f"


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
# those before it counted, and a refused one counts nothing. KEYS, 14 per group (a group:
# the admissions of one caller), 7 per account (user, then key): rpm now, rpm previous
# minute, tpm now, tpm previous, day, in-flight slots, budget period hash. ARGV: groups,
# seconds into the minute, now (ms), slot lease (ms), seconds to UTC midnight; then 10 per
# group, 5 per account: rpm, tpm, daily_requests, max_concurrent, budget USD (-1 if
# unset); then 3 per admission: its group, its token estimate, its slot member
# ("replica:seq|USD reserved"). Returns one answer per admission: {'ok'} |
# {'budget', account, spent} | {'limit', account, name, wait, value} (account 1 or 2).
# The window arithmetic is limits._Window's, and a budget counts what is spent plus what
# requests in flight reserve, as the Ledger does; so both answer alike. An account's
# counters are read once per call and its counts written once, at the end.
ADMIT: Final = Script("""
local groups = tonumber(ARGV[1])
local elapsed = tonumber(ARGV[2])
local now_ms = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local day_left = tonumber(ARGV[5])
local first = 6 + groups * 10
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
-- Per account (by its slots key): what Redis held before this call, read when first
-- needed, and what this call admitted so far (n requests, tokens, USD, slot members).
local accounts, order, spent = {}, {}, {}
local function account(k)
  local s = accounts[KEYS[k + 6]]
  if s == nil then
    s = {k = k, n = 0, tokens = 0, usd = 0, members = {}}
    accounts[KEYS[k + 6]] = s
    order[#order + 1] = s
  end
  return s
end
local function window(s, o)
  if s[o] == nil then s[o] = {count(KEYS[s.k + o + 1]), count(KEYS[s.k + o + 2])} end
  return s[o]
end
local function slots(s, reserved)
  if s.card ~= nil and (s.reserved ~= nil or not reserved) then return end
  if not s.trimmed then
    redis.call('ZREMRANGEBYSCORE', KEYS[s.k + 6], '-inf', now_ms)
    s.trimmed = true
  end
  if reserved then
    local members, r = redis.call('ZRANGE', KEYS[s.k + 6], 0, -1), 0
    for _, m in ipairs(members) do r = r + (tonumber(string.match(m, '|(.*)$')) or 0) end
    s.card, s.reserved = #members, r
  else
    s.card = redis.call('ZCARD', KEYS[s.k + 6])
  end
end
local function decide(g, est)
  for j = 1, 2 do
    local k, a = (g - 1) * 14 + (j - 1) * 7, 5 + (g - 1) * 10 + (j - 1) * 5
    local usd = tonumber(ARGV[a + 5])
    if usd >= 0 then
      local s = account(k)
      slots(s, true)
      local h = KEYS[k + 7]
      if spent[h] == nil then spent[h] = tonumber(redis.call('HGET', h, 'cost') or '0') end
      if spent[h] + s.reserved + s.usd >= usd then return {'budget', j, tostring(spent[h])} end
    end
  end
  local worst = nil
  local function consider(w, j, name, value)
    if worst == nil or w > worst[1] then worst = {w, j, name, value} end
  end
  for j = 1, 2 do
    local k, a = (g - 1) * 14 + (j - 1) * 7, 5 + (g - 1) * 10 + (j - 1) * 5
    local s = account(k)
    local rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local daily, conc = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    if conc >= 0 then
      slots(s, false)
      if s.card + s.n >= conc then consider(1.0, j, 'max_concurrent', conc) end
    end
    if daily >= 0 then
      if s.day == nil then s.day = count(KEYS[s.k + 5]) end
      if pos(s.day + s.n) >= daily then consider(day_left, j, 'daily_requests', daily) end
    end
    if rpm >= 0 then
      local r = window(s, 0)
      local w = wait(pos(r[1] + s.n), pos(r[2]), 1, rpm)
      if w > 0 then consider(w, j, 'rpm', rpm) end
    end
    if tpm >= 0 then
      local t = window(s, 2)
      local w = wait(pos(t[1] + s.tokens), pos(t[2]), est, tpm)
      if w > 0 then consider(w, j, 'tpm', tpm) end
    end
  end
  if worst ~= nil then return {'limit', worst[2], worst[3], tostring(worst[1]), worst[4]} end
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
    out[i] = {'ok'}
    local usd = tonumber(string.match(slot, '|(.*)$')) or 0
    for j = 1, 2 do
      local s = account((g - 1) * 14 + (j - 1) * 7)
      s.n, s.tokens, s.usd = s.n + 1, s.tokens + est, s.usd + usd
      s.members[#s.members + 1] = now_ms + lease_ms
      s.members[#s.members + 1] = slot
    end
  end
end
for _, s in ipairs(order) do
  if s.n > 0 then
    local k = s.k
    -- An EXPIRE only when the key is new: the first count of its minute or day.
    if redis.call('INCRBY', KEYS[k + 1], s.n) == s.n then redis.call('EXPIRE', KEYS[k + 1], 150) end
    if s.tokens ~= 0 and redis.call('INCRBY', KEYS[k + 3], s.tokens) == s.tokens then
      redis.call('EXPIRE', KEYS[k + 3], 150)
    end
    if redis.call('INCRBY', KEYS[k + 5], s.n) == s.n then
      redis.call('EXPIRE', KEYS[k + 5], 172800)
    end
    redis.call('ZADD', KEYS[k + 6], unpack(s.members))
    redis.call('PEXPIRE', KEYS[k + 6], lease_ms * 2)
  end
end
return out
""")

# A batch of queued writes, applied at most once: KEYS[1] is the batch's id, kept 10
# minutes. A batch whose answer was lost (Redis stalled after reading it) is sent again
# with the same id and skipped, so nothing is counted twice. ARGV is a flat list of ops:
#   A key amount ttl         INCRBY (+EXPIRE when ttl > 0)
#   H hash field n ttl       HINCRBY
#   S hash field n ttl       HSETNX (a first replica seeding the fleet's counters)
#   Z zset member            ZREM
#   P 4 hashes, accounts set, account, model, requests, prompt, completion, cost, 3 TTLs
#                            spend of one account and model: the hashes of its daily,
#                            weekly, monthly and total periods (at most 256 models each)
#   W zset old new expiry    a slot recorded: the same slot, reserving nothing now
# Keys travel in ARGV: the store targets one Redis (not a cluster), where that is allowed.
APPLY: Final = Script("""
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 600) then return 0 end
local function spend(a, i)
  local n, p, c, cost = tonumber(a[i + 8]), tonumber(a[i + 9]), tonumber(a[i + 10]), a[i + 11]
  for j = 1, 4 do
    local h, m = a[i + j], a[i + 7]
    if redis.call('HEXISTS', h, 'r|' .. m) == 0 then
      if tonumber(redis.call('HGET', h, '#models') or '0') >= 256 then m = 'other' end
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
    if j < 4 then redis.call('EXPIRE', h, tonumber(a[i + 11 + j])) end
  end
  redis.call('SADD', a[i + 5], a[i + 6])
end
local i = 1
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
  elseif op == 'P' then
    spend(ARGV, i)
    i = i + 15
  elseif op == 'W' then
    if redis.call('ZREM', ARGV[i + 1], ARGV[i + 2]) == 1 then
      redis.call('ZADD', ARGV[i + 1], tonumber(ARGV[i + 4]), ARGV[i + 3])
    end
    i = i + 5
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
