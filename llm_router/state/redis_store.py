"""The Redis state store: limits, spend, quotas, cooldowns and counters, fleet-wide.

Every replica (and every ``--workers`` process) that shares a Redis and a prefix answers
as one process would (docs/scaling.md has the operator's view):

* **Admission** of a caller with limits or a budget is one ``EVALSHA`` of
  :data:`~.redis_keys.ADMIT`: decide and count atomically on the server. A caller with
  neither costs no round trip: it is admitted locally.
* **Settling** (usage, spend, slot release) never waits for Redis: it is queued and a
  flusher writes the queue in one pipeline as soon as it can, so under load many
  requests share one write.
* **Selection counters, key quotas and cooldowns** are exchanged in the background
  every ``sync_interval_ms``: this replica pushes what it added since the last sync and
  reads the fleet's totals back (``tokens = fleet total + what is not pushed yet``).
* **Concurrency slots** are leased: a replica renews the leases of its own in-flight
  requests; a replica that dies stops renewing, so its slots free within
  :data:`LEASE_S`.

The local ledger, counters and health are always kept too, as this replica's own view.
When Redis is unreachable or stalls (every call is bounded by :data:`TIMEOUT_S`), the
store turns *degraded*: limits are enforced by the local ledger, per replica, with the
same numbers; writes stay queued (bounded by :data:`MAX_PENDING`) and are flushed when
Redis answers again; ``llm_router_state_backend_up`` reads 0 and a log line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..config import Config, Limits, StateSettings
from ..hub.usage import bounded_count
from ..ledger.accounting import Caller
from ..ledger.limits import PERIODS, Admission, Ledger, budget_exhausted, period_end, period_id
from ..ledger.limits import rate_limited as limit_error
from ..ledger.usage import CounterKey, UsageCounters
from ..observe.metrics import Metrics
from .health import KeyHealth
from .redis_faults import Fault, FaultLog, ForeignData, classify, counts, probe
from .redis_keys import ADMIT, APPLY, COOLDOWN, SEP, Script, account_id, key_of
from .store import StateStore, TTLMap, claim_locally

__all__ = ["LEASE_S", "MAX_PENDING", "TIMEOUT_S", "RedisStore"]

log = logging.getLogger("llm_router.state")

TIMEOUT_S: Final = 0.5  # any one Redis call; then this replica enforces alone
LEASE_S: Final = 10.0  # a dead replica's concurrency slots free within this
_RENEW_S: Final = LEASE_S / 4
MAX_PENDING: Final = 100_000  # queued writes kept while Redis is away; older ones drop
_BACKOFF_MIN_S: Final = 0.25  # first reconnect after a failure; doubles per failed try
_BACKOFF_MAX_S: Final = 5.0
_PERIOD_TTL: Final = {"daily": 3 * 86400, "weekly": 15 * 86400, "monthly": 63 * 86400}
_UNSET: Final = -1

Op = tuple[Any, ...]  # one write of redis_keys.APPLY, queued until the flusher sends it
_COALESCE_S: Final = 0.005
# get/put values up to this size are also kept in this process, for while Redis is away
# (affinity pins are tiny; stored responses can be megabytes and stay in Redis only).
_LOCAL_COPY_MAX: Final = 64 * 1024
_BATCH_OPS: Final = 500  # ops per APPLY call: Redis runs a script without interruption


class _Shared:
    """What Redis holds for one admission: its accounts, its in-flight slot, and whether
    its counts are (or will be) in Redis at all."""

    __slots__ = ("accounts", "counted", "slot", "zsets")

    def __init__(self, accounts: tuple[str, str], counted: bool, slot: str = "",
                 zsets: tuple[str, ...] = ()) -> None:
        self.accounts = accounts
        self.counted = counted  # rpm/tpm/day counted in Redis: tpm gets corrected there
        # Member of both accounts' in-flight sets: "replica:seq|reserved USD" (the budget
        # reservation travels in the name, so a dead replica's expires with its lease).
        self.slot = slot
        self.zsets = zsets


class RedisStore(StateStore):
    """Shared state in Redis; see the module docstring."""

    backend = "redis"

    def __init__(self, settings: StateSettings, ledger: Ledger, counters: UsageCounters,
                 health: KeyHealth, metrics: Metrics) -> None:
        super().__init__(ledger, counters, health, metrics)
        assert settings.redis_url
        self.settings = settings
        self.p = settings.prefix
        self._redis = Redis.from_url(
            settings.redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._up = False
        self._replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._seq = itertools.count()
        self._pending: deque[Op] = deque()
        # Batches sent but not confirmed, with their ids: re-sent as they are, so Redis
        # can skip one it already applied (its answer lost in a stall).
        self._unconfirmed: list[tuple[str, list[Op]]] = []
        self._batch_seq = itertools.count()
        self._flushing = asyncio.Lock()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._slots: dict[str, tuple[str, ...]] = {}  # live slot -> its sets (lease renewal)
        self._renewed = 0.0
        self._epoch: bytes | None = None
        # Selection counters and key quotas as last read from Redis; the local value
        # minus this is what this replica has not pushed yet.
        self._tokens_base: dict[CounterKey, int] = {}
        self._quota_base: dict[tuple[str, str], int] = {}
        self._quota_day = ""
        self._cooldowns_pushed: dict[tuple[str, str], float] = {}
        self._kv = TTLMap()
        self._closing = False
        self._synced = False
        self._keys_minute = -1
        self._keys_cache: dict[tuple[str, str], list[str]] = {}
        self._was_down = False  # "back" rather than "connected" in the log
        # Why it is down (redis_faults), since when (Unix time), how often it went up or
        # down and how many reconnects failed since: /admin/status shows them.
        self._fault: Fault | None = None
        self._fault_since = 0.0
        self._changes = 0
        self._retries = 0
        self._fault_log = FaultLog(log)
        self._password = urlsplit(settings.redis_url).password

    # -- lifecycle
    @property
    def up(self) -> bool:
        return self._up

    def status(self, detail: bool = False) -> dict[str, Any]:
        # No URL and no reason unless asked (/admin/status): readiness is public, and the
        # Redis host is nobody's business there. The kind says what ends it.
        doc: dict[str, Any] = {"backend": "redis", "up": self._up, "degraded": not self._up,
                               "pending_writes": self._pending_count}
        fault = self._fault if not self._up else None
        if fault is not None:
            doc["fault"] = fault.kind
        if detail:
            doc.update(redis=self.settings.redis_display, prefix=self.p, changes=self._changes,
                       reason=fault.reason if fault else None,
                       down_since=self._fault_since if fault else None,
                       failed_retries=self._retries)
        return doc

    async def start(self) -> None:
        if await self._connect():
            await self._sync()
        else:
            self._fault_since = time.time()
            log.error("state backend %s not usable at start (%s): limits are enforced by "
                      "this replica alone until it is", self.settings.redis_display,
                      self._fault.reason if self._fault else "no answer")
        self.metrics.state_backend_up.set(1.0 if self._up else 0.0)
        self._tasks = [asyncio.create_task(self._sync_loop(), name="state-sync"),
                       asyncio.create_task(self._flush_loop(), name="state-flush")]

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._up:
            # What the last requests settled, and the last counters, reach the fleet.
            await self._flush()
            await self._sync()
        if self._pending_count:
            log.warning("state backend: %d write(s) could not be flushed before exit",
                        self._pending_count)
        await self._redis.aclose()

    async def _connect(self) -> bool:
        """Ping, load scripts, learn the epoch, probe the keys a data fault involved (and
        those every sync reads). True, and up, if all is well; else the fault says why."""
        fault = self._fault
        suspects = fault.keys if fault is not None and fault.kind == "data" else ()
        try:
            async with asyncio.timeout(TIMEOUT_S * 2):
                await self._redis.ping()
                for script in (ADMIT, APPLY, COOLDOWN):
                    await self._redis.script_load(script.source)
                problem = await probe(self._redis, self.p, (*suspects, *self._synced_keys()))
                if problem is None:
                    await self._redis.set(key_of(self.p, "epoch"), secrets.token_hex(8),
                                          nx=True)
                    epoch = await self._redis.get(key_of(self.p, "epoch"))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return False
        if problem is not None:
            # Up only once the key is fixed: coming up to fail again would flap.
            self._fault = Fault("data", problem, suspects)
            return False
        if self._epoch is not None and epoch != self._epoch:
            self._lost_data()
        self._epoch = epoch if isinstance(epoch, bytes) else None
        self._set_up(True)
        return True

    def _lost_data(self) -> None:
        log.error("state backend %s lost its data (restarted without persistence?): fleet "
                  "spend, limits and counters start again from what replicas report from now "
                  "on; run Redis with --appendonly yes to keep them (docs/scaling.md)",
                  self.settings.redis_display)
        self._cooldowns_pushed.clear()  # pushed again
        self._epoch = None

    def _set_up(self, up: bool, why: str = "") -> None:
        if up == self._up:
            return
        self._up = up
        self._changes += 1
        if up:
            self._fault, self._retries = None, 0
        else:
            self._fault_since = time.time()
        self.metrics.state_backend_up.set(1.0 if up else 0.0)
        if up:
            self._wake.set()  # flush what was queued meanwhile
        if up and self._was_down:
            log.warning("state backend %s is back: limits are fleet-wide again; flushing %d "
                        "queued write(s)", self.settings.redis_display, self._pending_count)
            self._wake.set()
        elif up:
            log.info("state backend %s: limits, spend and counters are shared by every router "
                     "with prefix '%s'", self.settings.redis_display, self.p)
        else:
            self._was_down = True
            log.error("state backend %s failed (%s): limits fall back to this replica alone; "
                      "usage is queued and flushed when it answers", self.settings.redis_display,
                      why)

    def _failed(self, exc: BaseException, keys: Iterable[str] = ()) -> None:
        """A call failed: note why (its keys, for a data fault's probe), and go down."""
        self._fault = classify(exc, self.p, self._password, tuple(keys))
        self._set_up(False, self._fault.reason)

    def _synced_keys(self) -> tuple[str, ...]:
        """The keys every sync reads back."""
        return (key_of(self.p, "tokens"), key_of(self.p, "keyreq", self.counters.key_requests()[0]),
                key_of(self.p, "cooldowns"))

    def _keys_of(self, batches: list[tuple[str, list[Op]]]) -> list[str]:
        """The keys queued writes touch (a failed batch's suspects)."""
        mine = self.p + ":"
        return [x for _, ops in batches for op in ops for x in op[1:]
                if isinstance(x, str) and x.startswith(mine)]

    async def _evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """One EVALSHA on a pooled connection, packed here: redis-py's generic command
        path (retry wrapper, per-argument encoder) cost more CPU than the rest of the
        admission (bench/README.md)."""
        command = _pack("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self._call(command)
        except NoScriptError:  # Redis restarted and lost its scripts
            await self._redis.script_load(script.source)
            return await self._call(command)

    async def _call(self, command: bytes) -> Any:
        pool = self._redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(command)
            return await conn.read_response()
        except BaseException:
            # A timeout or cancellation mid-answer leaves the connection out of step.
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    # -- limits and spend
    async def admit(self, caller: Caller, estimate_tokens: int,
                    estimate_cost: float = 0.0) -> Admission:
        limited = (caller.limits is not None or caller.key_limits is not None
                   or caller.budget is not None or caller.key_budget is not None)
        accounts = (account_id(caller.user), account_id(caller.user, caller.key))
        if not limited:
            # Nothing to decide: no round trip. Its usage still reaches the fleet's reports.
            adm = self.ledger.admit(caller, estimate_tokens, estimate_cost, enforce=False)
            adm.shared = _Shared(accounts, counted=False)
            return adm
        if self._up:
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    return await self._admit_shared(caller, accounts, estimate_tokens,
                                                    estimate_cost)
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
        # Degraded: this replica alone enforces the same numbers; the counts are queued.
        adm = self.ledger.admit(caller, estimate_tokens, estimate_cost)
        adm.shared = _Shared(accounts, counted=True)
        self._queue(self._count_offline(accounts, estimate_tokens, self.ledger.clock()))
        return adm

    async def _admit_shared(self, caller: Caller, accounts: tuple[str, str], estimate: int,
                            cost: float) -> Admission:
        now = self.ledger.clock()
        minute = int(now // 60)
        slot = f"{self._replica}:{next(self._seq)}|{cost!r}"
        keys: list[str] = []
        args: list[Any] = [2, now - minute * 60, estimate, int(now * 1000),
                           int(LEASE_S * 1000), (period_end("daily", now) or now) - now, slot]
        for acct, limits, budget in ((accounts[0], caller.limits, caller.budget),
                                     (accounts[1], caller.key_limits, caller.key_budget)):
            keys += self._account_keys(acct, now,
                                       budget.period if budget is not None else "total")
            args += [*_limit_args(limits), budget.usd if budget is not None else _UNSET]
        try:
            res = await self._evalsha(ADMIT, keys, args)
        except ResponseError as exc:
            raise ForeignData(str(exc), tuple(keys)) if classify(
                exc, self.p, None).kind == "data" else exc from exc
        verdict = _text(res[0])
        if verdict == "budget":
            is_key = int(res[1]) == 2
            budget = caller.key_budget if is_key else caller.budget
            assert budget is not None
            raise budget_exhausted(caller, is_key, budget, float(_text(res[2])), now)
        if verdict == "limit":
            raise limit_error(caller, int(res[1]) == 2, _text(res[2]), int(res[4]),
                              float(_text(res[3])))
        zsets = tuple(key_of(self.p, "slots", acct) for acct in accounts)
        self._slots[slot] = zsets
        adm = self.ledger.admit(caller, estimate, cost, enforce=False)
        adm.shared = _Shared(accounts, counted=True, slot=slot, zsets=zsets)
        return adm

    def _account_keys(self, acct: str, now: float, budget_period: str) -> list[str]:
        # Every period boundary is a minute boundary: the keys hold for the minute.
        minute = int(now // 60)
        if minute != self._keys_minute:
            self._keys_minute, self._keys_cache = minute, {}
        hit = self._keys_cache.get((acct, budget_period))
        if hit is None:
            if len(self._keys_cache) >= 10_000:
                self._keys_cache.clear()
            hit = self._keys_cache[(acct, budget_period)] = self._build_keys(acct, now,
                                                                             budget_period)
        return hit

    def _build_keys(self, acct: str, now: float, budget_period: str) -> list[str]:
        minute = int(now // 60)
        return [key_of(self.p, "w", acct, "rpm", minute),
                key_of(self.p, "w", acct, "rpm", minute - 1),
                key_of(self.p, "w", acct, "tpm", minute),
                key_of(self.p, "w", acct, "tpm", minute - 1),
                key_of(self.p, "day", acct, period_id("daily", now)),
                key_of(self.p, "slots", acct),
                self._spend_key(acct, budget_period, now)]

    def _spend_key(self, acct: str, period: str, now: float) -> str:
        return key_of(self.p, "spend", acct, period, period_id(period, now))

    def _count_offline(self, accounts: tuple[str, str], estimate: int,
                       now: float) -> list[Op]:
        """What ADMIT would have counted, for an admission made while Redis was away."""
        minute = int(now // 60)
        out: list[Op] = []
        for acct in accounts:
            out += [("A", key_of(self.p, "w", acct, "rpm", minute), 1, 150),
                    ("A", key_of(self.p, "w", acct, "tpm", minute), estimate, 150),
                    ("A", key_of(self.p, "day", acct, period_id("daily", now)), 1, 172800)]
        return out

    def record(self, adm: Admission, provider: str, model: str, prompt_tokens: int,
               completion_tokens: int, cost: float | None) -> None:
        if adm.recorded:
            return
        self.ledger.record(adm, provider, model, prompt_tokens, completion_tokens, cost)
        if self.on_record is not None:
            self.on_record(adm)
        shared = adm.shared
        if not isinstance(shared, _Shared):
            return
        now = self.ledger.clock()
        prompt_tokens, completion_tokens = bounded_count(prompt_tokens), bounded_count(
            completion_tokens)  # Redis counters are 64-bit: nothing out of range goes there
        used = prompt_tokens + completion_tokens
        delta = used - adm.estimate if shared.counted else 0
        old_slot = shared.slot
        if old_slot:
            # Recorded: the spend is real now, so the slot no longer reserves any.
            shared.slot = old_slot.rpartition("|")[0] + "|0"
            self._slots.pop(old_slot, None)
            self._slots[shared.slot] = shared.zsets
        name = f"{provider}/{model}"
        expiry = int((now + LEASE_S) * 1000)
        ops: list[Op] = []
        for acct in shared.accounts:
            # Spend ops of one account and model are summed within a batch (_merge_spend).
            ops.append(("P", *(self._spend_key(acct, period, now) for period in PERIODS),
                        key_of(self.p, "accounts"), acct, name, 1, prompt_tokens,
                        completion_tokens, cost or 0.0,
                        *(_PERIOD_TTL[p] for p in ("daily", "weekly", "monthly"))))
            if delta:
                ops.append(("A", key_of(self.p, "w", acct, "tpm", int(now // 60)), delta, 150))
            if old_slot:
                ops.append(("W", key_of(self.p, "slots", acct), old_slot, shared.slot, expiry))
        self._queue(ops)

    def release(self, adm: Admission) -> None:
        if adm.released:
            return
        recorded = adm.recorded
        self.ledger.release(adm)
        shared = adm.shared
        if not isinstance(shared, _Shared):
            return
        self._slots.pop(shared.slot, None)
        refund = shared.counted and not recorded and adm.estimate
        if not shared.slot and not refund:
            return
        minute = int(self.ledger.clock() // 60)
        ops: list[Op] = [("Z", zset, shared.slot) for zset in shared.zsets]
        if refund:
            ops += [("A", key_of(self.p, "w", acct, "tpm", minute), -adm.estimate, 150)
                    for acct in shared.accounts]
        self._queue(ops)

    @property
    def _pending_count(self) -> int:
        return len(self._pending) + sum(len(ops) for _, ops in self._unconfirmed)

    def _queue(self, ops: list[Op]) -> None:
        over = len(self._pending) + len(ops) - MAX_PENDING
        if over > 0:
            for _ in range(min(over, len(self._pending))):
                self._pending.popleft()
            self._dropped += over
            log.error("state backend away too long: %d queued write(s) dropped so far; "
                      "fleet usage will miss them", self._dropped)
        self._pending.extend(ops)
        if self._up:
            self._wake.set()

    # -- background: flush queued writes; exchange counters, quotas, cooldowns, leases
    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            # A few ms for other requests' writes to join this batch: the writes of many
            # requests cost Redis and this process one call (nobody waits for them).
            await asyncio.sleep(_COALESCE_S)
            self._wake.clear()
            if self._up:
                await self._flush()

    async def _flush(self) -> bool:
        """Send every queued write, in batches applied at most once; False if Redis
        failed (the batches stay, with their ids, for the next attempt)."""
        async with self._flushing:  # the flusher and the sync loop both flush
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        while (self._pending or self._unconfirmed) and self._up:
            while self._pending and len(self._unconfirmed) < 64:
                ops = _merge_spend([self._pending.popleft()
                                    for _ in range(min(_BATCH_OPS, len(self._pending)))])
                self._unconfirmed.append(
                    (key_of(self.p, "applied", self._replica, next(self._batch_seq)), ops))
            try:
                async with asyncio.timeout(TIMEOUT_S * 2):
                    results = await self._send_batches(self._unconfirmed)
                    if any(isinstance(r, NoScriptError) for r in results):
                        # Redis restarted and lost its scripts: load it, send those again.
                        await self._redis.script_load(APPLY.source)
                        again = [b for b, r in zip(self._unconfirmed, results, strict=True)
                                 if isinstance(r, NoScriptError)]
                        results = await self._send_batches(again)
                    failed = next((r for r in results if isinstance(r, Exception)), None)
                    if failed is not None:
                        raise failed
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, self._keys_of(self._unconfirmed))
                return False
            self._unconfirmed.clear()
        return self._up

    async def _send_batches(self, batches: list[tuple[str, list[Op]]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for batch_id, ops in batches:
            pipe.evalsha(APPLY.sha, 1, batch_id, *(x for op in ops for x in op))
        return list(await pipe.execute(raise_on_error=False))

    async def _sync_loop(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._closing:
            await asyncio.sleep(self.settings.sync_interval_ms / 1000 if self._up else backoff)
            if not self._up and not await self._connect():
                self._retries += 1
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
                self._fault_log.still(self.settings.redis_display,
                                      self._fault.reason if self._fault else "no answer",
                                      backoff)
                continue
            if await self._sync():
                # Reset only once a whole sync worked: a fault the probe cannot see comes
                # back at most every _BACKOFF_MAX_S, not at every sync.
                backoff = _BACKOFF_MIN_S

    async def _sync(self) -> bool:
        """One exchange: queue this replica's counter and quota news and flush it (at most
        once, like every write), push cooldowns, renew slot leases, read the fleet's
        totals back."""
        tokens = self.counters.tokens
        seed = "S" if not self._synced else "H"  # from a snapshot: offered once, not added
        tokens_key, cool_key = key_of(self.p, "tokens"), key_of(self.p, "cooldowns")
        ops: list[Op] = []
        for ck, n in tokens.items():
            delta = n - self._tokens_base.get(ck, 0)
            if delta:
                ops.append((seed, tokens_key, SEP.join(ck), delta if seed == "H" else n, 0))
                self._tokens_base[ck] = n
        day, quotas = self.counters.key_requests()
        if day != self._quota_day:
            self._quota_day, self._quota_base = day, {}
        quota_key = key_of(self.p, "keyreq", day)
        for pk, n in quotas.items():
            delta = n - self._quota_base.get(pk, 0)
            if delta:
                ops.append((seed, quota_key, SEP.join(pk), delta if seed == "H" else n, 172800))
                self._quota_base[pk] = n
        if ops:
            self._queue(ops)
        if not await self._flush():
            return False
        mono, wall = time.monotonic(), time.time()
        cooled = {k: until for k, until in self.health.cooldowns().items()
                  if until > mono and until > self._cooldowns_pushed.get(k, 0.0)}
        pipe = self._redis.pipeline(transaction=False)
        for (prov, key), until in cooled.items():
            # Idempotent (a cooldown only lengthens), so a lost answer costs nothing.
            pipe.evalsha(COOLDOWN.sha, 1, cool_key, f"{prov}{SEP}{key}",
                         repr(wall + until - mono))
        renew = self._slots and mono - self._renewed >= _RENEW_S
        if renew:
            expiry = int((wall + LEASE_S) * 1000)
            for member, zsets in self._slots.items():
                for zset in zsets:
                    pipe.zadd(zset, {member: expiry}, xx=True)
        pipe.hgetall(tokens_key)
        pipe.hgetall(quota_key)
        pipe.hgetall(cool_key)
        pipe.get(key_of(self.p, "epoch"))
        try:
            async with asyncio.timeout(TIMEOUT_S * 2):
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return False
        fleet_tokens, fleet_quotas, fleet_cool, epoch = results[-4:]
        read_back = (tokens_key, quota_key, cool_key)
        try:
            failed = next((r for r in results if isinstance(r, Exception)), None)
            if failed is not None:
                raise failed
            fleet = counts(fleet_tokens, tokens_key)
            fleet_q = counts(fleet_quotas, quota_key)
            fleet_ends = counts(fleet_cool, cool_key, float)
        except RedisError as exc:
            self._failed(exc, read_back)
            return False
        if renew:
            self._renewed = mono
        self._synced = True
        self._check_epoch(epoch)
        # local = fleet total (our flushed news included) + what was added here since.
        # A counter the fleet lacks (Redis lost its data) drops to that remainder.
        for ck in list(tokens):
            total = fleet.pop(SEP.join(ck), 0)
            tokens[ck] += total - self._tokens_base.get(ck, 0)
            self._tokens_base[ck] = total
        for f, total in fleet.items():  # counters only other replicas have served
            parts = f.split(SEP)
            if len(parts) == 3:
                tokens[(parts[0], parts[1], parts[2])] = self._tokens_base[
                    (parts[0], parts[1], parts[2])] = total
        if self.counters.key_requests()[0] == day:
            for pk in list(quotas):
                total = fleet_q.pop(SEP.join(pk), 0)
                quotas[pk] += total - self._quota_base.get(pk, 0)
                self._quota_base[pk] = total
            for f, total in fleet_q.items():
                parts = f.split(SEP)
                if len(parts) == 2:
                    quotas[(parts[0], parts[1])] = self._quota_base[(parts[0], parts[1])] = total
        self._cooldowns_pushed.update(cooled)
        mono, wall = time.monotonic(), time.time()
        for field, end in fleet_ends.items():
            parts = field.split(SEP)
            if end > wall and len(parts) == 2:
                prov, key = parts
                until = mono + (end - wall)
                self._cooldowns_pushed[(prov, key)] = max(
                    self._cooldowns_pushed.get((prov, key), 0.0), until)
                self.health.extend_cooldown(prov, key, until)
        return self._up

    def _check_epoch(self, epoch: Any) -> None:
        if isinstance(epoch, bytes) and epoch == self._epoch:
            return
        self._lost_data()
        # Reconnects at once: scripts and epoch set up again.
        self._fault = Fault("connection", "Redis lost its data")
        self._set_up(False, self._fault.reason)

    # -- reports: a ledger restored from what Redis holds
    async def usage(self, caller: Caller) -> dict[str, Any]:
        view = await self._fleet_view([(caller.user, None), (caller.user, caller.key)])
        return (view or self.ledger).usage(caller)

    async def admin_usage(self, cfg: Config) -> dict[str, Any]:
        wanted: list[tuple[str, str | None]] = []
        for u in cfg.users:
            wanted.append((u.name, None))
            wanted += [(u.name, k.name) for k in u.keys]
        try:
            async with asyncio.timeout(TIMEOUT_S):
                known = await self._redis.smembers(key_of(self.p, "accounts")) \
                    if self._up else set()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, (key_of(self.p, "accounts"),))
            known = set()
        for raw in known:
            parts = _text(raw).split(SEP)
            acct = (parts[1], None) if parts[0] == "u" else (parts[1], parts[2])
            if acct not in wanted:
                wanted.append(acct)
        view = await self._fleet_view(wanted)
        return (view or self.ledger).admin_usage(cfg)

    async def spent(self, accounts: list[tuple[str, str | None, str]]) -> list[float]:
        if not self._up or not accounts:
            return await super().spent(accounts)
        now = self.ledger.clock()
        keys = [self._spend_key(account_id(user, key), period, now)
                for user, key, period in accounts]
        pipe = self._redis.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, "cost")
        try:
            async with asyncio.timeout(TIMEOUT_S):
                res = await pipe.execute()
            return [float(v or 0.0) for v in res]
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, keys)
        except (ValueError, TypeError) as exc:  # a value this router did not write
            self._failed(ForeignData(str(exc)), keys)
        return await super().spent(accounts)

    async def _fleet_view(self, accounts: list[tuple[str, str | None]]) -> Ledger | None:
        """A ledger holding what Redis has for ``accounts``; None when Redis is away."""
        if not self._up:
            return None
        now = self.ledger.clock()
        minute = int(now // 60)
        pipe = self._redis.pipeline(transaction=False)
        keys: list[str] = []  # a data fault's suspects
        for user, key in accounts:
            acct = account_id(user, key)
            keys += [*(self._spend_key(acct, period, now) for period in PERIODS),
                     *(key_of(self.p, "w", acct, name, m) for name in ("rpm", "tpm")
                       for m in (minute, minute - 1)),
                     key_of(self.p, "day", acct, period_id("daily", now))]
            for k in keys[-9:-5]:
                pipe.hgetall(k)
            for k in keys[-5:]:
                pipe.get(k)
            keys.append(key_of(self.p, "slots", acct))
            pipe.zrangebyscore(keys[-1], int(now * 1000), "+inf")
        try:
            async with asyncio.timeout(TIMEOUT_S * 2):
                res = await pipe.execute()
            doc = _report(accounts, res, now)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, keys)
            return None
        except (ValueError, TypeError) as exc:  # a value this router did not write
            self._failed(ForeignData(str(exc)), keys)
            return None
        view = Ledger(self.ledger.clock)
        view.restore(doc)
        return view

    # -- the generic shared map
    async def get(self, name: str) -> bytes | None:
        if self._up:
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    value = await self._redis.get(key_of(self.p, "kv", name))
                return value if isinstance(value, bytes) else None
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, (key_of(self.p, "kv", name),))
        return self._kv.get(name)

    async def put(self, name: str, value: bytes, ttl_s: float) -> None:
        if len(value) <= _LOCAL_COPY_MAX:
            self._kv.put(name, value, ttl_s)  # also here: it answers while Redis is away
        else:
            self._kv.discard(name)  # an older, smaller value must not answer for it
        if self._up:
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    await self._redis.set(key_of(self.p, "kv", name), value,
                                          px=max(1, int(ttl_s * 1000)))
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, (key_of(self.p, "kv", name),))

    async def claim(self, name: str, ttl_s: float) -> bool:
        if self._up:
            key = key_of(self.p, "kv", name)
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    won = await self._redis.set(key, b"1", nx=True, px=max(1, int(ttl_s * 1000)))
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, (key,))
            else:
                self._kv.put(name, b"1", ttl_s)  # remembered for while Redis is away
                return bool(won)
        return claim_locally(self._kv, name, ttl_s)

    async def settle(self) -> None:
        if self._up:
            await self._flush()


def _report(accounts: list[tuple[str, str | None]], res: list[Any],
            now: float) -> dict[str, Any]:
    """What a fleet-view pipeline read (ten results per account), as a ledger dump."""
    minute = int(now // 60)
    doc: dict[str, Any] = {"version": 1, "users": [], "keys": []}
    for i, (user, key) in enumerate(accounts):
        r = res[i * 10:(i + 1) * 10]
        row: dict[str, Any] = {
            "user": user, "day": period_id("daily", now), "day_requests": int(r[8] or 0),
            "periods": {p: _period_row(period_id(p, now), h) for p, h in zip(PERIODS, r[:4],
                                                                             strict=True)},
            "rpm": (minute, _float(r[4]), _float(r[5])),
            "tpm": (minute, _float(r[6]), _float(r[7])),
            "concurrent": len(r[9]),
            "reserved_usd": sum(float(_text(m).rpartition("|")[2] or 0) for m in r[9])}
        if key is None:
            doc["users"].append(row)
        else:
            doc["keys"].append({**row, "key": key})
    return doc


def _merge_spend(ops: list[Op]) -> list[Op]:
    """``ops`` with the spend ('P') of each account and model summed into one op: under
    load many requests of one caller settle within a batch, and Redis does the work once."""
    spend: dict[tuple[Any, ...], list[Any]] = {}
    out: list[Op] = []
    for op in ops:
        if op[0] != "P":
            out.append(op)
            continue
        ident = op[:8]  # P, four period hashes, accounts set, account, model
        acc = spend.get(ident)
        if acc is None:
            spend[ident] = list(op)
        else:
            for i in range(8, 12):  # requests, prompt, completion, cost
                acc[i] += op[i]
    out += [(*op[:11], repr(float(op[11])), *op[12:]) for op in spend.values()]
    return out


def _pack(*args: Any) -> bytes:
    """A command in RESP: ``*N``, then ``$len`` and the bytes of each argument."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _limit_args(limits: Limits | None) -> list[int]:
    if limits is None:
        return [_UNSET] * 4
    return [_UNSET if v is None else v for v in (limits.rpm, limits.tpm, limits.daily_requests,
                                                 limits.max_concurrent)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float:
    return max(0.0, float(value)) if value is not None else 0.0


def _period_row(pid: str, h: dict[bytes, bytes]) -> dict[str, Any]:
    """A spend hash as the ledger's dump row of one period."""
    def totals(suffix: str = "") -> list[Any]:
        if suffix:
            return [int(h.get(f"r|{suffix}".encode(), 0)), int(h.get(f"p|{suffix}".encode(), 0)),
                    int(h.get(f"c|{suffix}".encode(), 0)),
                    float(h.get(f"$|{suffix}".encode(), 0.0))]
        return [int(h.get(b"requests", 0)), int(h.get(b"prompt", 0)),
                int(h.get(b"completion", 0)), float(h.get(b"cost", 0.0))]

    models = [f.decode()[2:] for f in h if f.startswith(b"r|")]
    return {"id": pid, "totals": totals(), "models": {m: totals(m) for m in models}}
