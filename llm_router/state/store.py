"""The one state seam: where limits, spend, selection counters and cooldowns are shared.

Every replica keeps its own engine objects — the :class:`~.limits.Ledger`, the
:class:`~.usage.UsageCounters` and the :class:`~.health.KeyHealth` — and a
:class:`StateStore` decides how far their answers reach:

* :class:`MemoryStore` (the default): this process is the whole fleet; the store is a
  thin pass-through to the ledger and costs the request path nothing.
* ``RedisStore`` (``redis_store.py``, with ``state.redis_url``): every replica and worker
  sharing one Redis and prefix enforces limits and budgets fleet-wide, and exchanges
  selection counters, key quotas and cooldowns in the background.

The store is chosen once from the config (``state.open_store``); the request path calls
the same methods whichever it has: ``await admit``, ``record``, ``release``, and the
reports ``await usage`` / ``await admin_usage``. ``get``/``put`` is a small key-value
hook with a TTL for other shared maps (session affinity, stored responses).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Final

from ..config import Config
from ..ledger.accounting import Caller
from ..ledger.limits import Admission, Ledger
from ..ledger.usage import UsageCounters
from ..observe.metrics import Metrics
from .health import KeyHealth

__all__ = ["Account", "MemoryStore", "StateStore", "TTLMap", "claim_locally"]

Account = tuple[str, str | None, str]  # (user, client key or None, budget period)

_KV_MAX: Final = 100_000  # entries the in-process key-value hook keeps at most
_KV_MAX_BYTES: Final = 64 * 1024 * 1024  # and bytes of values


class StateStore(ABC):
    """What limits, usage and health need from shared state; see the module docstring."""

    backend: str = "memory"

    def __init__(self, ledger: Ledger, counters: UsageCounters, health: KeyHealth,
                 metrics: Metrics) -> None:
        self.ledger = ledger
        self.counters = counters
        self.health = health
        self.metrics = metrics
        # Told of every admission whose usage was just recorded (webhooks' budget
        # thresholds, docs/webhooks.md); None, the default, costs record() one test.
        self.on_record: Callable[[Admission], None] | None = None

    @property
    def up(self) -> bool:
        """Whether the shared backend answers (always, for the in-process store)."""
        return True

    def status(self, detail: bool = False) -> dict[str, Any]:
        """For readiness: which backend, and whether it is degraded. ``detail`` (for
        admins, /admin/status) may add why and since when."""
        del detail
        return {"backend": self.backend, "up": self.up, "degraded": not self.up}

    async def start(self) -> None:
        """Connect and start background work (on the event loop, before serving)."""
        self.metrics.state_backend_up.set(1.0 if self.up else 0.0)

    async def close(self) -> None:  # noqa: B027 (nothing to close in memory)
        """Flush what is pending and stop background work (after draining)."""

    # -- limits and spend
    @abstractmethod
    async def admit(self, caller: Caller, estimate_tokens: int,
                    estimate_cost: float = 0.0) -> Admission:
        """Count and reserve one request or refuse it (402/429), as :meth:`Ledger.admit`
        does."""

    @abstractmethod
    def record(self, adm: Admission, provider: str, model: str, prompt_tokens: int,
               completion_tokens: int, cost: float | None) -> None:
        """Count what an admitted request used (once), as :meth:`Ledger.record` does."""

    @abstractmethod
    def release(self, adm: Admission) -> None:
        """End an admitted request (always, once), as :meth:`Ledger.release` does."""

    @abstractmethod
    async def usage(self, caller: Caller) -> dict[str, Any]:
        """``GET /v1/usage`` for ``caller``: fleet-wide where the store is shared."""

    @abstractmethod
    async def admin_usage(self, cfg: Config) -> dict[str, Any]:
        """``GET /admin/usage``: fleet-wide where the store is shared."""

    async def spent(self, accounts: list[Account]) -> list[float]:
        """USD each (user, client key or None for the user, period) spent in its current
        period: fleet-wide where the store is shared and answers, else this process's."""
        ledger = self.ledger
        return [ledger.spent(user, key, period) for user, key, period in accounts]

    # -- a small shared key-value map for other features
    @abstractmethod
    async def get(self, name: str) -> bytes | None:
        """The value ``put`` under ``name`` if it has not expired, else None."""

    def get_soon(self, name: str) -> asyncio.Future[Any] | None:
        """:meth:`get` asked now and answered by :meth:`got`: a shared store sends it with
        its next exchange, so a caller that will want the value after awaiting something
        else of the store (an admission) waits for one round trip, not two. None when
        nothing was sent: :meth:`got` then reads the value itself."""
        return None

    async def got(self, name: str, asked: asyncio.Future[Any] | None) -> bytes | None:
        """The value of ``name`` as :meth:`get_soon` asked for it (``asked``, its
        answer)."""
        return await self.get(name)

    @abstractmethod
    async def put(self, name: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` under ``name`` for ``ttl_s`` seconds (best effort when shared)."""

    @abstractmethod
    def put_soon(self, name: str, value: bytes, ttl_s: float) -> None:
        """:meth:`put` without waiting: written in the background (best effort)."""

    @abstractmethod
    async def claim(self, name: str, ttl_s: float) -> bool:
        """True for the first caller, fleet-wide where the store is shared, to claim
        ``name`` within ``ttl_s`` seconds (``SET NX``); False for every later one. While a
        shared backend is away, this process decides alone."""

    async def settle(self) -> None:  # noqa: B027 (nothing is pending in memory)
        """Wait until the usage recorded so far is visible to :meth:`usage` fleet-wide."""


class MemoryStore(StateStore):
    """This process is the fleet: a pass-through to the ledger, no extra work."""

    def __init__(self, ledger: Ledger, counters: UsageCounters, health: KeyHealth,
                 metrics: Metrics) -> None:
        super().__init__(ledger, counters, health, metrics)
        self._kv = TTLMap()

    async def admit(self, caller: Caller, estimate_tokens: int,
                    estimate_cost: float = 0.0) -> Admission:
        return self.ledger.admit(caller, estimate_tokens, estimate_cost)

    def record(self, adm: Admission, provider: str, model: str, prompt_tokens: int,
               completion_tokens: int, cost: float | None) -> None:
        self.ledger.record(adm, provider, model, prompt_tokens, completion_tokens, cost)
        if self.on_record is not None:
            self.on_record(adm)

    def release(self, adm: Admission) -> None:
        self.ledger.release(adm)

    async def usage(self, caller: Caller) -> dict[str, Any]:
        return self.ledger.usage(caller)

    async def admin_usage(self, cfg: Config) -> dict[str, Any]:
        return self.ledger.admin_usage(cfg)

    async def get(self, name: str) -> bytes | None:
        return self._kv.get(name)

    async def put(self, name: str, value: bytes, ttl_s: float) -> None:
        self._kv.put(name, value, ttl_s)

    def put_soon(self, name: str, value: bytes, ttl_s: float) -> None:
        self._kv.put(name, value, ttl_s)

    async def claim(self, name: str, ttl_s: float) -> bool:
        return claim_locally(self._kv, name, ttl_s)


def claim_locally(kv: TTLMap, name: str, ttl_s: float) -> bool:
    """:meth:`StateStore.claim` in one process, over its key-value map."""
    if kv.get(name) is not None:
        return False
    kv.put(name, b"1", ttl_s)
    return True


class TTLMap:
    """A bounded in-process map whose entries expire: the key-value hook of one process.

    Bounded twice: at most ``max_entries`` entries and ``max_bytes`` of values; past
    either, expired entries go first, then the oldest. A value larger than the whole
    byte bound is not kept.
    """

    def __init__(self, max_entries: int = _KV_MAX, max_bytes: int = _KV_MAX_BYTES) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: dict[str, tuple[float, bytes]] = {}

    def get(self, name: str) -> bytes | None:
        hit = self._items.get(name)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            self._drop(name)
            return None
        return hit[1]

    def put(self, name: str, value: bytes, ttl_s: float) -> None:
        self._drop(name)
        if len(value) > self._max_bytes:
            return
        now = time.monotonic()
        items = self._items
        if len(items) >= self._max or self._bytes + len(value) > self._max_bytes:
            for k in [k for k, (until, _) in items.items() if until <= now]:
                self._drop(k)
            # Dicts keep insertion order: the first entry is the oldest.
            while items and (len(items) >= self._max
                             or self._bytes + len(value) > self._max_bytes):
                self._drop(next(iter(items)))
        items[name] = (now + ttl_s, value)
        self._bytes += len(value)

    def discard(self, name: str) -> None:
        """Forget ``name`` if it is here."""
        self._drop(name)

    def _drop(self, name: str) -> None:
        hit = self._items.pop(name, None)
        if hit is not None:
            self._bytes -= len(hit[1])
