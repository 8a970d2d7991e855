"""Which events happen, once each, and which receivers get them (docs/webhooks.md).

Sources, each costing nothing when no receiver wants its event:

* ``budget_threshold``: the state store tells :meth:`Webhooks.recorded` of each
  admission whose usage it recorded; a user or key with a budget is noted (a set add)
  and a background task, at most every :data:`_COALESCE_S`, reads the spend of every
  account noted since through the store (fleet-wide with Redis, after the store's
  queued writes are flushed) and compares it with each receiver's thresholds.
* ``circuit_open``, ``key_bad``: :class:`~llm_router.state.health.KeyHealth` calls
  :meth:`Webhooks.health_changed` on those transitions; ``backend_down`` follows when
  no key of the provider is usable any more (each open, half-open or bad), and is armed
  again when one of its keys closes its circuit or a reload clears the bad marks.
* ``reload_refused``: the config reloader calls :meth:`Webhooks.reload_refused`.

Once per crossing: every event has a *claim*, a name the first replica to set in the
state store (``SET NX`` with a TTL in Redis, a map in memory) wins; only the winner
sends. A budget crossing's claim is (account, period, period id, budget, threshold),
kept until the period ends, and the id of its event is derived from it, so even two
replicas that both sent it while Redis was away send one id. Health events claim
(provider, key) for ``circuit.open_s`` (one event per outage of a key, fleet-wide), a
bad key its secret's fingerprint for a day, a refused reload its problems for ten
minutes. In memory the budget claims this process made are also kept in a set until
their period ends, so a crossing is checked once, not per request; at start, budget
shares already past a threshold (the usage snapshot restored) are taken as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import orjson

from ..config import Budget, Config
from ..ledger.limits import Admission, period_end, period_id
from ..observe.metrics import Metrics
from ..state.store import StateStore
from .outbox import Event, Outbox

__all__ = ["Webhooks"]

log = logging.getLogger("llm_router.webhooks")

# Budget checks of a burst run as one: at most this often, one store read for every
# account touched since (one pipelined round trip with Redis).
_COALESCE_S: Final = 0.2
_MAX_PENDING: Final = 10_000  # events waiting for their claim; past it new ones drop
_DAY_S: Final = 86_400.0
_TOTAL_TTL_S: Final = 400 * _DAY_S  # a "total" budget's claims
_FLUSH_S: Final = 2.0  # at shutdown, how long queued events may still take
_MAX_PROBLEMS: Final = 20  # of a refused reload, in its event
# Replicas watching one file refuse an edit within seconds of each other: one event. The
# same mistake made again after this long is a new one.
_RELOAD_CLAIM_S: Final = 600.0


class Webhooks:
    """Every configured receiver, and the sources of their events."""

    def __init__(self, cfg: Config, store: StateStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.config = cfg
        self._outboxes: dict[str, Outbox] = {}
        self._wanted: frozenset[str] = frozenset()
        self._budgeted: frozenset[str] = frozenset()  # users with a user or key budget
        self._touched: set[tuple[str, str]] = set()  # (user, key) spent since the last check
        self._fired: dict[str, float] = {}  # budget claims made here -> when they lapse
        self._down: set[str] = set()  # providers reported down, until a key recovers
        self._pending: deque[tuple[str, str, float, dict[str, Any], str | None]] = deque()
        self._wake = asyncio.Event()
        self._budget_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._retired: set[asyncio.Task[int]] = set()
        self.configure(cfg)
        store.health.listener = self.health_changed

    # -- configuration
    def configure(self, cfg: Config) -> None:
        """Follow a (re)loaded config: receivers whose settings are unchanged keep their
        queue and task; a changed one takes over its predecessor's waiting events."""
        self.config = cfg
        old = self._outboxes
        new: dict[str, Outbox] = {}
        for hook in cfg.webhooks:
            name = hook.name
            while name in new:  # two receivers on one host: label them apart
                name += "'"
            if name != hook.name:
                hook = replace(hook, name=name)
            kept = old.get(name)
            if kept is not None and kept.hook == hook:
                new[name] = kept
                continue
            box = new[name] = Outbox(hook, self.metrics)
            if self._session is not None:
                box.start(self._session)
            if kept is not None:
                box.adopt(kept.hand_over())
        for name, box in old.items():
            if name not in new:
                self._retire(box)
        self._outboxes = new
        self._wanted = frozenset(e for hook in cfg.webhooks for e in hook.events)
        budgeted = {u.name for u in cfg.users
                    if u.budget is not None or any(k.budget is not None for k in u.keys)}
        self._budgeted = frozenset(budgeted if "budget_threshold" in self._wanted else ())
        # The store calls back only when some receiver wants budget events.
        self.store.on_record = self.recorded if self._budgeted else None
        # A reload clears 'bad' marks: providers may be usable again.
        self._down = {p for p in self._down if p in cfg.providers and self._all_down(p)}

    def _retire(self, box: Outbox) -> None:
        """Stop a receiver a reload removed, once its attempt in flight ends."""
        if self._session is None:
            return  # never started
        task = asyncio.get_running_loop().create_task(box.stop(box.hook.timeout_s))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # -- lifecycle
    async def start(self) -> None:
        """Open the delivery session and start the tasks (on the loop, before serving)."""
        self._session = aiohttp.ClientSession(trust_env=False)
        for box in self._outboxes.values():
            box.start(self._session)
        self._tasks = [asyncio.create_task(self._claim_loop(), name="webhook claims"),
                       asyncio.create_task(self._budget_loop(), name="webhook budgets")]
        if self._budgeted and self.store.backend == "memory":
            await self._prime()

    async def close(self) -> None:
        """Check what is pending, then give queued events :data:`_FLUSH_S` to go out."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_FLUSH_S / 2):
                await self._check_budgets()
                await self._claim_pending()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = await asyncio.gather(*(box.stop(_FLUSH_S) for box in self._outboxes.values()))
        if sum(left):
            log.warning("webhooks: %d event(s) not delivered before exit", sum(left))
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- sources
    def recorded(self, adm: Admission) -> None:
        """The store recorded ``adm``'s usage (the request path: a set add, no more)."""
        if adm.user in self._budgeted:
            self._touched.add((adm.user, adm.key))
            self._budget_wake.set()

    def health_changed(self, change: str, provider: str, key: str, status: int) -> None:
        """A key's circuit opened or closed, or the upstream rejected it (KeyHealth)."""
        if change == "circuit_closed":
            self._down.discard(provider)
            return
        if not self._wanted:
            return
        cfg = self.config
        base = {"provider": provider, "key": key}
        if change == "circuit_open":
            self.emit("circuit_open", f"circuit_open:{provider}:{key}", cfg.circuit.open_s,
                      {**base, "open_s": cfg.circuit.open_s})
        elif change == "key_bad":
            self.emit("key_bad", f"key_bad:{provider}:{key}:{self._fingerprint(provider, key)}",
                      _DAY_S, {**base, "status": status})
        if provider not in self._down and self._all_down(provider):
            self._down.add(provider)
            self.emit("backend_down", f"backend_down:{provider}", cfg.circuit.open_s,
                      {"provider": provider,
                       "keys": {k: self.store.health.label(provider, k)
                                for k in self._key_labels(provider)}})

    def reload_refused(self, reason: str, problems: tuple[str, ...], file: str) -> None:
        """A config reload was refused (its problems never quote a secret)."""
        digest = hashlib.sha256("\n".join(problems).encode()).hexdigest()[:32]
        self.emit("reload_refused", f"reload_refused:{digest}", _RELOAD_CLAIM_S,
                  {"reason": reason, "file": file, "problems": list(problems[:_MAX_PROBLEMS]),
                   "problem_count": len(problems)})

    def emit(self, event: str, claim: str, ttl_s: float, data: dict[str, Any],
             event_id: str | None = None) -> None:
        """Send ``event`` to the receivers that want it if this replica wins ``claim``
        (O(1) here; the claim and the delivery happen in the background)."""
        if event not in self._wanted:
            return
        if len(self._pending) >= _MAX_PENDING:
            log.warning("webhooks: %d events wait for their claim; %s dropped", _MAX_PENDING,
                        event)
            return
        self._pending.append((event, claim, ttl_s, data, event_id))
        self._wake.set()

    # -- background
    async def _claim_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._claim_pending()

    async def _claim_pending(self) -> None:
        while self._pending:
            event, claim, ttl_s, data, event_id = self._pending.popleft()
            if not await self.store.claim(f"hook:{claim}", max(1.0, ttl_s)):
                continue  # another replica (or an earlier check) sent it
            self._send(event, data, event_id or "evt_" + secrets.token_hex(12))

    def _send(self, event: str, data: dict[str, Any], event_id: str) -> None:
        now = time.time()
        body = orjson.dumps({"id": event_id, "type": event, "created": int(now), "data": data})
        ev = Event(event_id, event, now, body)
        for box in self._outboxes.values():
            if event in box.hook.events:
                box.put(ev)

    async def _budget_loop(self) -> None:
        while True:
            await self._budget_wake.wait()
            await asyncio.sleep(_COALESCE_S)  # the rest of a burst joins this check
            self._budget_wake.clear()
            try:
                await self._check_budgets()
            except Exception:  # a store fault: the next record checks again
                log.exception("webhooks: budget check failed")

    async def _check_budgets(self, *, prime: bool = False) -> None:
        touched, self._touched = self._touched, set()
        if not touched:
            return
        # Each budget of the touched users and keys, once: (subject, key name, budget).
        budgets: dict[tuple[str, str | None], tuple[str, str, Budget]] = {}
        users = {u.name: u for u in self.config.users}
        for user_name, key_name in touched:
            user = users.get(user_name)
            if user is None:
                continue
            if user.budget is not None:
                budgets[(user_name, None)] = ("user", key_name, user.budget)
            ukey = next((k for k in user.keys if k.name == key_name), None)
            if ukey is not None and ukey.budget is not None:
                budgets[(user_name, key_name)] = ("key", key_name, ukey.budget)
        if not budgets:
            return
        await self.store.settle()  # this replica's spend reaches the fleet's first
        accounts = [(user, key, b.period) for (user, key), (_, _, b) in budgets.items()]
        spent = await self.store.spent(accounts)
        now = time.time()
        self._fired = {c: until for c, until in self._fired.items() if until > now}
        for ((name, _), (subject, key, budget)), usd in zip(budgets.items(), spent,
                                                              strict=True):
            self._crossings(subject, name, key, budget, usd, now, prime)

    def _crossings(self, subject: str, user: str, key: str, budget: Budget, spent: float,
                   now: float, prime: bool) -> None:
        account = user if subject == "user" else f"{user}/{key}"
        pid = period_id(budget.period, now)
        end = period_end(budget.period, now)
        lapse = end if end is not None else now + _TOTAL_TTL_S
        for hook in self.config.webhooks:
            if "budget_threshold" not in hook.events:
                continue
            for share in hook.thresholds:
                if spent < share * budget.usd:
                    break  # thresholds are sorted
                claim = f"budget:{subject}:{account}:{budget.period}:{pid}:{budget.usd!r}:{share!r}"
                if claim in self._fired:
                    continue
                self._fired[claim] = lapse
                if prime:
                    continue
                # Float sums of many costs carry noise past the 9th decimal (a nano-dollar).
                data = {"subject": subject, "user": user,
                        "key": key if subject == "key" else None,
                        "threshold": share, "spent_usd": round(spent, 9),
                        "budget_usd": budget.usd,
                        "share": round(spent / budget.usd, 6) if budget.usd else None,
                        "period": budget.period, "period_id": pid,
                        "resets_at": _iso(end) if end is not None else None}
                self.emit("budget_threshold", claim, lapse - now + _DAY_S, data,
                          "evt_" + hashlib.sha256(claim.encode()).hexdigest()[:24])

    async def _prime(self) -> None:
        """At start: shares already past (restored from the usage snapshot) were sent
        before the restart; take them as sent."""
        for user in self.config.users:
            if user.name in self._budgeted:
                self._touched.update((user.name, k.name) for k in user.keys)
        await self._check_budgets(prime=True)

    # -- helpers
    def _key_labels(self, provider: str) -> list[str]:
        p = self.config.providers.get(provider)
        return [k.label for k in p.keys] if p is not None else []

    def _all_down(self, provider: str) -> bool:
        labels = self._key_labels(provider)
        health = self.store.health
        return bool(labels) and all(health.label(provider, k) in ("open", "half_open", "bad")
                                    for k in labels)

    def _fingerprint(self, provider: str, key: str) -> str:
        p = self.config.providers.get(provider)
        secret = next((k.secret for k in p.keys if k.label == key), "") if p else ""
        return hashlib.sha256(secret.encode()).hexdigest()[:12]

    def status(self) -> list[dict[str, Any]]:
        """Each receiver's queue and last outcomes (/admin/status)."""
        return [box.status() for box in self._outboxes.values()]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
