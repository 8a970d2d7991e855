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


# KEYS, 7 per account: rpm now, rpm previous minute, tpm now, tpm previous, day, in-flight
# slots, budget period hash.  ARGV: accounts, seconds into the minute, token estimate, now
# (ms), slot lease (ms), seconds to UTC midnight, slot member ("replica:seq|USD reserved");
# then 5 per account: rpm, tpm, daily_requests, max_concurrent, budget USD (-1 if unset).
# Returns {'ok'} | {'budget', account, spent} | {'limit', account, name, wait, value}.
# The window arithmetic is limits._Window's, and a budget counts what is spent plus what
# requests in flight reserve, as the Ledger does; so both answer alike.
ADMIT: Final = Script("""
local n = tonumber(ARGV[1])
local elapsed = tonumber(ARGV[2])
local est = tonumber(ARGV[3])
local now_ms = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
local day_left = tonumber(ARGV[6])
local slot = ARGV[7]
local function num(k)
  local v = tonumber(redis.call('GET', k) or '0')
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
for i = 1, n do
  local a, k = 7 + (i - 1) * 5, (i - 1) * 7
  local usd = tonumber(ARGV[a + 5])
  if usd >= 0 then
    local spent = tonumber(redis.call('HGET', KEYS[k + 7], 'cost') or '0')
    local reserved = 0
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 6], '-inf', now_ms)
    for _, m in ipairs(redis.call('ZRANGE', KEYS[k + 6], 0, -1)) do
      reserved = reserved + (tonumber(string.match(m, '|(.*)$')) or 0)
    end
    if spent + reserved >= usd then return {'budget', i, tostring(spent)} end
  end
end
local worst = nil
local function consider(w, i, name, value)
  if worst == nil or w > worst[1] then worst = {w, i, name, value} end
end
for i = 1, n do
  local a, k = 7 + (i - 1) * 5, (i - 1) * 7
  local rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local daily, conc = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 6], '-inf', now_ms)
    if redis.call('ZCARD', KEYS[k + 6]) >= conc then consider(1.0, i, 'max_concurrent', conc) end
  end
  if daily >= 0 and num(KEYS[k + 5]) >= daily then
    consider(day_left, i, 'daily_requests', daily)
  end
  if rpm >= 0 then
    local w = wait(num(KEYS[k + 1]), num(KEYS[k + 2]), 1, rpm)
    if w > 0 then consider(w, i, 'rpm', rpm) end
  end
  if tpm >= 0 then
    local w = wait(num(KEYS[k + 3]), num(KEYS[k + 4]), est, tpm)
    if w > 0 then consider(w, i, 'tpm', tpm) end
  end
end
if worst ~= nil then
  return {'limit', worst[2], worst[3], tostring(worst[1]), worst[4]}
end
for i = 1, n do
  local a, k = 7 + (i - 1) * 5, (i - 1) * 7
  -- An EXPIRE only when the key is new: the first count of its minute or day.
  if redis.call('INCRBY', KEYS[k + 1], 1) == 1 then
    redis.call('EXPIRE', KEYS[k + 1], 150)
  end
  if est ~= 0 and redis.call('INCRBY', KEYS[k + 3], est) == est then
    redis.call('EXPIRE', KEYS[k + 3], 150)
  end
  if redis.call('INCR', KEYS[k + 5]) == 1 then redis.call('EXPIRE', KEYS[k + 5], 172800) end
  redis.call('ZADD', KEYS[k + 6], now_ms + lease_ms, slot)
  redis.call('PEXPIRE', KEYS[k + 6], lease_ms * 2)
end
return {'ok'}
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
