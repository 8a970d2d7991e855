"""The Redis state store: limits, spend, quotas, cooldowns and counters, fleet-wide.

Every replica (and every ``--workers`` process) that shares a Redis and a prefix answers
as one process would (docs/scaling.md has the operator's view):

* **Admission** of a caller with limits or a budget is decided and counted atomically on
  the server by :data:`~.redis_keys.ADMIT`; the admissions that arrive while one call is
  out go together in the next (``redis_admit.py``), each answered as if alone. A caller
  with neither costs no round trip: it is admitted locally.
* **Settling** (usage, spend, slot release) never waits for Redis: it is queued, and
  the next exchange carries it ahead of its admissions; when no admission comes, a
  flusher writes the queue in one pipeline. Under load many requests share one write.
* **Selection counters, key quotas and cooldowns** are exchanged in the background
  every ``sync_interval_ms``: this replica pushes what it added since the last sync and
  reads the fleet's totals back (``tokens = fleet total + what is not pushed yet``).
* **Concurrency slots** are leased: a replica renews the leases of its own in-flight
  requests; a replica that dies stops renewing, so its slots free within
  :data:`LEASE_S`.

The local ledger, counters and health are always kept too, as this replica's own view.
When Redis is unreachable or stalls (every call is bounded by ``state.timeout_ms``), the
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

from ..config import Config, StateSettings
from ..hub.usage import bounded_count
from ..ledger.accounting import Caller
from ..ledger.limits import Admission, Ledger, period_id, period_ids
from ..ledger.usage import CounterKey, UsageCounters
from ..observe.metrics import Metrics
from .health import KeyHealth
from .redis_admit import BATCH, Packer, Waiting, answers, refusal
from .redis_faults import Fault, FaultLog, ForeignData, classify, counts, probe
from .redis_keys import (
    ADMIT,
    APPLY,
    COOLDOWN,
    DAY_TTL_S,
    SEP,
    WINDOW_TTL_S,
    account_id,
    key_of,
)
from .redis_ops import Op, bulk, keys_of, merge
from .redis_ops import pack as pack_command
from .redis_report import queue_reads, report, text
from .store import StateStore, TTLMap, claim_locally

__all__ = ["LEASE_S", "MAX_PENDING", "RedisStore"]

log = logging.getLogger("llm_router.state")

LEASE_S: Final = 10.0  # a dead replica's concurrency slots free within this
_RENEW_S: Final = LEASE_S / 4
MAX_PENDING: Final = 100_000  # queued writes kept while Redis is away; older ones drop
# Dropping goes on for every request of an outage under load: said at most this often
# (with the running count), not once per request.
_DROP_LOG_EVERY_S: Final = 10.0
_BACKOFF_MIN_S: Final = 0.25  # first reconnect after a failure; doubles per failed try
_BACKOFF_MAX_S: Final = 5.0

_COALESCE_S: Final = 0.005
_CARRY_S: Final = 0.05  # queued writes wait this long at most for an exchange to carry them
_UNSENT: Final = object()  # a command's answer when Redis could not be asked
_COMMANDS_MAX: Final = 10_000  # background writes (put_soon) waiting at most; then skipped
# get/put values up to this size are also kept in this process, for while Redis is away
# (affinity pins are tiny; stored responses can be megabytes and stay in Redis only).
_LOCAL_COPY_MAX: Final = 64 * 1024
_BATCH_OPS: Final = 500  # ops per APPLY call: Redis runs a script without interruption


class _Shared:
    """What Redis holds for one admission: its accounts, its in-flight slot, and whether
    its counts are (or will be) in Redis at all."""

    __slots__ = ("accounts", "counted", "slot")

    def __init__(self, accounts: tuple[str, str], counted: bool, slot: str = "") -> None:
        self.accounts = accounts
        self.counted = counted  # rpm/tpm/day counted in Redis: tpm gets corrected there
        # Member of both accounts' in-flight sets: "replica:seq|reserved USD" (the budget
        # reservation travels in the name, so a dead replica's expires with its lease).
        self.slot = slot


class RedisStore(StateStore):
    """Shared state in Redis; see the module docstring."""

    backend = "redis"

    def __init__(self, settings: StateSettings, ledger: Ledger, counters: UsageCounters,
                 health: KeyHealth, metrics: Metrics) -> None:
        super().__init__(ledger, counters, health, metrics)
        assert settings.redis_url
        self.settings = settings
        self.prefix = settings.prefix
        # Any one Redis call (a batch: twice this); past it this replica enforces alone.
        self.timeout_s = timeout = settings.timeout_ms / 1000
        self._redis = Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        # The admitter's one connection. No socket timeout of its own: every call on it is
        # bounded by asyncio.timeout(self.timeout_s), and redis-py would spend a task and two
        # timers per call enforcing another.
        self._admit_redis = Redis.from_url(
            settings.redis_url, socket_timeout=None, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, max_connections=1)
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
        self._drop_said = -_DROP_LOG_EVERY_S  # monotonic time of the last line about it
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._slots: dict[str, tuple[str, str]] = {}  # live slot -> accounts (lease renewal)
        # What waits for the next exchange (admissions, kv commands with their futures),
        # the task sending them (None when idle), the connection it keeps (redis-py's
        # pool costs per checkout), and when the last exchange went (monotonic).
        self._admissions: list[Waiting] = []
        # A command's future is None when nobody waits for its reply (put_soon): the key
        # then says where a failure was.
        self._commands: list[tuple[bytes, asyncio.Future[Any] | None, str]] = []
        self._sender: asyncio.Task[None] | None = None
        self._held: Any = None
        self._sent_at = float("-inf")
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
        self._packer = Packer(self.prefix)
        self._prefix_arg = bulk((self.prefix,))  # APPLY's first argument
        self._ids: tuple[tuple[str, ...], str] = ((), "")  # period ids -> a Q op's ids
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
            doc.update(redis=self.settings.redis_display, prefix=self.prefix, changes=self._changes,
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
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
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
        await self._admit_redis.aclose()
        await self._redis.aclose()

    async def _connect(self) -> bool:
        """Ping, load scripts, learn the epoch, probe the keys a data fault involved (and
        those every sync reads). True, and up, if all is well; else the fault says why."""
        fault = self._fault
        suspects = fault.keys if fault is not None and fault.kind == "data" else ()
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await self._redis.ping()
                for script in (ADMIT, APPLY, COOLDOWN):
                    await self._redis.script_load(script.source)
                problem = await probe(self._redis, self.prefix, (*suspects, *self._synced_keys()))
                if problem is None:
                    await self._redis.set(key_of(self.prefix, "epoch"), secrets.token_hex(8),
                                          nx=True)
                    epoch = await self._redis.get(key_of(self.prefix, "epoch"))
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
                        "queued write(s); %d dropped since start", self.settings.redis_display,
                        self._pending_count, self._dropped)
            self._wake.set()
        elif up:
            log.info("state backend %s: limits, spend and counters are shared by every router "
                     "with prefix '%s'", self.settings.redis_display, self.prefix)
        else:
            self._was_down = True
            log.error("state backend %s failed (%s): limits fall back to this replica alone; "
                      "usage is queued and flushed when it answers", self.settings.redis_display,
                      why)

    def _failed(self, exc: BaseException, keys: Iterable[str] = ()) -> None:
        """A call failed: note why (its keys, for a data fault's probe), and go down."""
        self._fault = classify(exc, self.prefix, self._password, tuple(keys))
        self._set_up(False, self._fault.reason)

    def _synced_keys(self) -> tuple[str, ...]:
        """The keys every sync reads back."""
        return (key_of(self.prefix, "tokens"),
                key_of(self.prefix, "keyreq", self.counters.key_requests()[0]),
                key_of(self.prefix, "cooldowns"))

    def _keys_of(self, batches: list[tuple[str, list[Op]]]) -> list[str]:
        """The keys queued writes touch (a failed batch's suspects)."""
        return [k for _, ops in batches for op in ops for k in keys_of(self.prefix, op)]

    async def _exchange(self, commands: list[bytes]) -> list[Any]:
        """``commands`` (packed here, in one socket write) on the connection kept for the
        admitter, one exchange at a time; a reply per command, an error reply as its
        exception. redis-py's generic command path (retry wrapper, per-argument encoder)
        and its pool checkout cost more CPU than the rest of the admission
        (bench/README.md)."""
        pool = self._admit_redis.connection_pool
        conn = self._held
        if conn is None:
            conn = self._held = await pool.get_connection()  # type: ignore[no-untyped-call]
        replies: list[Any] = []
        try:
            await conn.send_packed_command(b"".join(commands), check_health=False)
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # an answer: the connection is in step
                    replies.append(exc)
        except BaseException:
            # A timeout or cancellation mid-answer leaves the connection out of step.
            self._held = None
            try:
                await conn.disconnect()
            finally:
                await pool.release(conn)
            raise
        return replies

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
            loop = asyncio.get_running_loop()
            waiting = Waiting(caller, accounts, estimate_tokens, estimate_cost,
                              f"{self._replica}:{next(self._seq)}|{estimate_cost!r}",
                              loop.create_future())
            self._admissions.append(waiting)
            self._send_soon()
            answer = await waiting.future
            if answer is not None:
                return self._admitted(waiting, answer)
        # Degraded: this replica alone enforces the same numbers; the counts are queued.
        adm = self.ledger.admit(caller, estimate_tokens, estimate_cost)
        adm.shared = _Shared(accounts, counted=True)
        self._queue(self._count_offline(accounts, estimate_tokens, self.ledger.clock()))
        return adm

    def _admitted(self, w: Waiting, answer: Any) -> Admission:
        """The admission the script's ``answer`` grants ``w``; its 402 or 429 raised."""
        refused = refusal(w.caller, answer, self.ledger.clock())
        if refused is not None:
            raise refused
        self._slots[w.slot] = w.accounts
        adm = self.ledger.admit(w.caller, w.estimate, w.cost, enforce=False)
        adm.shared = _Shared(w.accounts, counted=True, slot=w.slot)
        return adm

    # -- the exchange: one connection, everything waiting goes in one write
    def _send_soon(self) -> None:
        if self._sender is None:  # no exchange out: what waits now goes next tick
            self._sender = asyncio.get_running_loop().create_task(self._exchanges())

    async def _command(self, *args: Any) -> Any:
        """One command's reply (an error reply as its exception) through the next
        exchange; :data:`_UNSENT` if Redis could not be asked."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._commands.append((pack_command(*args), future, ""))
        self._send_soon()
        return await future

    async def _exchanges(self) -> None:
        """Send what waits, one exchange at a time, until nothing does: each waiter gets
        its answer, or None / :data:`_UNSENT` when Redis could not be asked."""
        batch: list[Waiting] = []
        commands: list[tuple[bytes, asyncio.Future[Any] | None, str]] = []
        try:
            while self._admissions or self._commands:
                batch, commands = self._admissions[:BATCH], self._commands[:BATCH]
                del self._admissions[:BATCH], self._commands[:BATCH]
                now = self.ledger.clock()
                answers, replies = await self._exchange_all(batch, commands, now) \
                    if self._up else (None, None)
                for i, (_, future, key) in enumerate(commands):
                    reply = replies[i] if replies is not None else _UNSENT
                    if future is None:
                        if isinstance(reply, Exception):
                            self._failed(reply, (key,))
                    elif not future.done():
                        future.set_result(reply)
                for i, w in enumerate(batch):
                    answer = answers[i] if answers is not None else None
                    if not w.future.done():
                        w.future.set_result(answer)
                    elif answer is not None and answer[0] == b"ok":
                        self._abandoned(w, now)
                batch, commands = [], []
        finally:
            # Cancelled (shutdown): nobody is left waiting.
            for w in (*batch, *self._admissions):
                if not w.future.done():
                    w.future.set_result(None)
            for _, future, _ in (*commands, *self._commands):
                if future is not None and not future.done():
                    future.set_result(_UNSENT)
            self._admissions.clear()
            self._commands.clear()
            self._sender = None

    async def _exchange_all(self, batch: list[Waiting],
                            commands: list[tuple[bytes, asyncio.Future[Any] | None, str]],
                            now: float) -> tuple[list[Any] | None, list[Any] | None]:
        """One exchange: the ADMIT call for ``batch`` (an answer per admission) and
        ``commands`` (a reply each); None for both when Redis failed (then down: every
        admission is decided here until it is back).

        Writes queued since the last flush ride along, first in the same socket write:
        under load the flusher has nothing left to send, and a slot released or a spend
        recorded just before counts for these admissions."""
        admit = self._packer.pack(batch, now, int(LEASE_S * 1000)) if batch else b""
        riders: list[tuple[str, list[Op]]] = []
        lock = self._flushing
        # With admissions, a flush in flight is waited out (a slot it releases must count
        # for them); else writes are carried only if no flush holds them.
        hold = bool(batch) or (bool(self._pending) and not lock.locked())
        if hold:
            await lock.acquire()
            if not self._up:  # the flush waited out failed
                lock.release()
                return None, None
            if self._pending and not self._unconfirmed and len(self._pending) <= _BATCH_OPS:
                self._stage()
                riders = list(self._unconfirmed)
        self._sent_at = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                applies = [self._apply_call(batch_id, ops) for batch_id, ops in riders]
                replies = await self._exchange(
                    [*applies, *(c for c, _, _ in commands), *((admit,) if batch else ())])
                reply = replies[-1] if batch else None
                if isinstance(reply, NoScriptError):  # Redis restarted and lost them
                    await self._redis.script_load(ADMIT.source)
                    await self._redis.script_load(APPLY.source)
                    reply = (await self._exchange([admit]))[0]
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None, None
        finally:
            if hold:
                lock.release()
        if riders:
            # Those that failed stay unconfirmed, with their ids: the flusher sends them
            # again (and says why if they fail again).
            done = {batch_id for (batch_id, _), r in zip(riders, replies, strict=False)
                    if not isinstance(r, Exception)}
            self._unconfirmed = [b for b in self._unconfirmed if b[0] not in done]
            if self._unconfirmed:
                self._wake.set()
        command_replies = replies[len(riders):len(riders) + len(commands)]
        if isinstance(reply, ResponseError):
            if classify(reply, self.prefix, None).kind == "data":
                # The key the script named first, for the probe.
                text, keys = str(reply), self._packer.keys(batch, now)
                named = [k for k in keys if k in text]
                self._failed(ForeignData(text, tuple(dict.fromkeys([*named, *keys]))))
            else:
                self._failed(reply)
            return None, command_replies
        decided = answers(reply, len(batch)) if batch else []
        if decided is None:
            self._failed(ForeignData(f"ADMIT answered {reply!r:.80}",
                                     tuple(self._packer.keys(batch, now))))
            return None, command_replies
        return decided, command_replies

    def _apply_call(self, batch_id: str, ops: list[Op]) -> bytes:
        """The APPLY call (EVALSHA, in RESP) of one batch of queued writes."""
        args = [x for op in ops for x in op]
        return b"*%d\r\n%s%s%s" % (5 + len(args), bulk(("EVALSHA", APPLY.sha, 1, batch_id)),
                                    self._prefix_arg, bulk(args))

    def _abandoned(self, w: Waiting, now: float) -> None:
        """``w`` was admitted in Redis but its request is gone (cancelled while it waited):
        free its slot and its token estimate, as a release would."""
        user, key = w.accounts
        ops: list[Op] = [("Y", user, key, w.slot)]
        if w.estimate:
            ops.append(("T", int(now // 60), user, key, -w.estimate))
        self._queue(ops)

    def _spend_key(self, acct: str, period: str, now: float) -> str:
        return key_of(self.prefix, "spend", acct, period, period_id(period, now))

    def _count_offline(self, accounts: tuple[str, str], estimate: int,
                       now: float) -> list[Op]:
        """What ADMIT would have counted, for an admission made while Redis was away."""
        minute = int(now // 60)
        out: list[Op] = []
        for acct in accounts:
            out += [("A", key_of(self.prefix, "w", acct, "rpm", minute), 1, WINDOW_TTL_S),
                    ("A", key_of(self.prefix, "w", acct, "tpm", minute), estimate, WINDOW_TTL_S),
                    ("A", key_of(self.prefix, "day", acct, period_id("daily", now)), 1, DAY_TTL_S)]
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
        user, key = shared.accounts
        ids = period_ids(now)  # one tuple per UTC day: its text is made once
        if ids is not self._ids[0]:
            self._ids = (ids, " ".join(ids[:3]))
        # Spend ops of one pair of accounts and model are summed within a batch
        # (redis_ops.merge); APPLY writes both accounts' four period hashes.
        ops: list[Op] = [("Q", self._ids[1], user, key, f"{provider}/{model}", 1,
                          prompt_tokens, completion_tokens, cost or 0.0)]
        if shared.counted:
            delta = prompt_tokens + completion_tokens - adm.estimate
            if delta:
                ops.append(("T", int(now // 60), user, key, delta))
        old_slot = shared.slot
        if old_slot:
            # Recorded: the spend is real now, so the slot no longer reserves any.
            shared.slot = slot = old_slot.rpartition("|")[0] + "|0"
            slots = self._slots
            slots.pop(old_slot, None)
            slots[slot] = shared.accounts
            ops.append(("V", user, key, old_slot, slot, int((now + LEASE_S) * 1000)))
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
        user, key = shared.accounts
        ops: list[Op] = [("Y", user, key, shared.slot)] if shared.slot else []
        if refund:
            ops.append(("T", int(self.ledger.clock() // 60), user, key, -adm.estimate))
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
            now = time.monotonic()
            if now - self._drop_said >= _DROP_LOG_EVERY_S:
                self._drop_said = now
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
            # While admissions flow, their exchanges carry the queued writes:
            # the flusher sends only what they have not taken within _CARRY_S.
            held = 0.0
            while (self._pending and held < _CARRY_S
                   and time.monotonic() - self._sent_at < _COALESCE_S):
                await asyncio.sleep(_COALESCE_S)
                held += _COALESCE_S
            if self._up:
                await self._flush()

    async def _flush(self) -> bool:
        """Send every queued write, in batches applied at most once; False if Redis
        failed (the batches stay, with their ids, for the next attempt)."""
        async with self._flushing:  # the flusher and the sync loop both flush
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        while (self._pending or self._unconfirmed) and self._up:
            self._stage()
            try:
                async with asyncio.timeout(self.timeout_s * 2):
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

    def _stage(self) -> None:
        """Queued writes into batches with their ids (``_unconfirmed``), 64 at most."""
        while self._pending and len(self._unconfirmed) < 64:
            ops = merge([self._pending.popleft()
                          for _ in range(min(_BATCH_OPS, len(self._pending)))])
            self._unconfirmed.append(
                (key_of(self.prefix, "applied", self._replica, next(self._batch_seq)), ops))

    async def _send_batches(self, batches: list[tuple[str, list[Op]]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for batch_id, ops in batches:
            pipe.evalsha(APPLY.sha, 1, batch_id, self.prefix, *(x for op in ops for x in op))
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
        tokens_key, cool_key = key_of(self.prefix, "tokens"), key_of(self.prefix, "cooldowns")
        ops: list[Op] = []
        for ck, n in tokens.items():
            delta = n - self._tokens_base.get(ck, 0)
            if delta:
                ops.append((seed, tokens_key, SEP.join(ck), delta if seed == "H" else n, 0))
                self._tokens_base[ck] = n
        day, quotas = self.counters.key_requests()
        if day != self._quota_day:
            self._quota_day, self._quota_base = day, {}
        quota_key = key_of(self.prefix, "keyreq", day)
        for pk, n in quotas.items():
            delta = n - self._quota_base.get(pk, 0)
            if delta:
                ops.append((seed, quota_key, SEP.join(pk), delta if seed == "H" else n, DAY_TTL_S))
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
            for member, accounts in self._slots.items():
                for acct in accounts:
                    pipe.zadd(key_of(self.prefix, "slots", acct), {member: expiry}, xx=True)
        pipe.hgetall(tokens_key)
        pipe.hgetall(quota_key)
        pipe.hgetall(cool_key)
        pipe.get(key_of(self.prefix, "epoch"))
        try:
            async with asyncio.timeout(self.timeout_s * 2):
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
            async with asyncio.timeout(self.timeout_s):
                known = await self._redis.smembers(key_of(self.prefix, "accounts")) \
                    if self._up else set()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, (key_of(self.prefix, "accounts"),))
            known = set()
        for raw in known:
            parts = text(raw).split(SEP)
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
            async with asyncio.timeout(self.timeout_s):
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
        pipe = self._redis.pipeline(transaction=False)
        keys: list[str] = []  # a data fault's suspects
        for user, key in accounts:
            keys += queue_reads(pipe, self.prefix, account_id(user, key), now)
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                res = await pipe.execute()
            doc = report(accounts, res, now)
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
        return await self.got(name, self.get_soon(name))

    def get_soon(self, name: str) -> asyncio.Future[Any] | None:
        if not self._up:
            return None
        # As _command, without waiting: the GET rides with whatever the caller awaits
        # next of this store (an admission's exchange).
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._commands.append((pack_command("GET", key_of(self.prefix, "kv", name)), future, ""))
        self._send_soon()
        return future

    async def got(self, name: str, asked: asyncio.Future[Any] | None) -> bytes | None:
        if asked is not None:
            value = await asked
            if value is None or isinstance(value, bytes):
                return value
            if isinstance(value, Exception):
                self._failed(value, (key_of(self.prefix, "kv", name),))
        # Redis away (or it could not be asked): this replica's own copy answers.
        return self._kv.get(name)

    async def put(self, name: str, value: bytes, ttl_s: float) -> None:
        if len(value) <= _LOCAL_COPY_MAX:
            self._kv.put(name, value, ttl_s)  # also here: it answers while Redis is away
        else:
            self._kv.discard(name)  # an older, smaller value must not answer for it
        if not self._up:
            return
        key = key_of(self.prefix, "kv", name)
        if len(value) <= _LOCAL_COPY_MAX:
            # Small (affinity pins): with the next exchange, not a call of its own.
            reply = await self._command("SET", key, value, "PX", max(1, int(ttl_s * 1000)))
            if isinstance(reply, Exception):
                self._failed(reply, (key,))
            return
        try:  # large (a stored response): apart, not to hold up admissions
            async with asyncio.timeout(self.timeout_s):
                await self._redis.set(key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, (key,))

    async def claim(self, name: str, ttl_s: float) -> bool:
        if self._up:
            key = key_of(self.prefix, "kv", name)
            try:
                async with asyncio.timeout(self.timeout_s):
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


    def put_soon(self, name: str, value: bytes, ttl_s: float) -> None:
        if len(value) > _LOCAL_COPY_MAX:
            self._kv.discard(name)
            return  # large values go through put, which a caller waits for
        self._kv.put(name, value, ttl_s)
        if self._up and len(self._commands) < _COMMANDS_MAX:
            key = key_of(self.prefix, "kv", name)
            self._commands.append(
                (pack_command("SET", key, value, "PX", max(1, int(ttl_s * 1000))), None, key))
            self._send_soon()
