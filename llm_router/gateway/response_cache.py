"""The response cache's rules and storage: which requests it serves, under what key, where.

What a group's policy is (:meth:`ResponseCache.rule`), whether a request may be cached
(:func:`deterministic`), its key (:func:`cache_key`), and where answers live: an LRU in
this process bounded by entries and bytes (:class:`MemoryCache`), or with
``state.redis_url`` the state store's shared map, so every replica serves what any of
them cached (:class:`SharedCache`). Serving a hit and keeping a miss's answer is
:mod:`.cached_answer`'s. docs/cache.md is the operator's view.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from ..config import Config
from ..observe.metrics import Metrics

__all__ = ["CACHED_KINDS", "Entry", "MemoryCache", "Policy", "ResponseCache", "SharedCache",
           "cache_key", "deterministic"]

log = logging.getLogger("llm_router")

# Routes whose answers are cached. Not /v1/responses: its answers carry an id that a
# later turn continues from (previous_response_id), which a replay cannot honour.
CACHED_KINDS: Final = frozenset({"chat", "completions", "embeddings", "messages"})
# Request fields that do not change the answer, left out of the key. ``model`` is
# replaced by the resolved group and the name asked for.
_LEFT_OUT: Final = frozenset({"model", "user", "stream", "stream_options", "metadata"})
_KEY_VERSION: Final = 1  # bumped when the key's makeup changes: old entries stop matching
_PENDING_MAX: Final = 1024  # shared writes in flight at most; past it an answer is not kept


@dataclass(frozen=True, slots=True)
class Policy:
    """One group's effective cache policy (its block over the top-level one)."""

    ttl_s: float
    scope: str  # user | global
    nondeterministic: bool


def deterministic(kind: str, body: dict[str, Any]) -> bool:
    """Whether the answer is meant to be the same each time: ``temperature`` 0 and at
    most one choice. An absent temperature is the API's default, 1 (OpenAI and
    Anthropic alike), so it samples. Embeddings have no sampling at all."""
    if kind == "embeddings":
        return True
    t = body.get("temperature")
    if isinstance(t, bool) or not isinstance(t, int | float) or t != 0:
        return False
    n = body.get("n")
    return n is None or n == 1


def cache_key(kind: str, group: str, asked: str, user: str | None,
              body: dict[str, Any]) -> bytes:
    """sha256 over the route, the group, the model name asked for, the user (scope
    ``user``) and every body field but those that do not change the answer; object keys
    sorted, so the order a client writes them in does not matter."""
    fields = {k: v for k, v in body.items() if k not in _LEFT_OUT}
    blob = orjson.dumps([_KEY_VERSION, kind, group, asked, user, fields],
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer: the whole body in the client's dialect, as it was sent, and
    what it cost to make (to price the savings of each hit)."""

    body: bytes
    stored_at: float  # Unix time (the Age header; replicas share it)
    provider: str
    model: str  # the upstream model that answered
    prompt: int
    completion: int
    cached: int

    def to_bytes(self) -> bytes:
        head = orjson.dumps([1, self.stored_at, self.provider, self.model, self.prompt,
                             self.completion, self.cached])
        return head + b"\n" + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry | None:
        """The entry, or None for bytes this router did not write."""
        head, sep, body = raw.partition(b"\n")
        try:
            h = orjson.loads(head)
            if not sep or not isinstance(h, list) or len(h) != 7 or h[0] != 1:
                return None
            return cls(body, float(h[1]), str(h[2]), str(h[3]), int(h[4]), int(h[5]),
                       int(h[6]))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None

    @property
    def size(self) -> int:
        return len(self.body) + 64  # the head, about


class CacheStore(Protocol):
    backend: str

    @property
    def entries(self) -> int | None: ...

    @property
    def held_bytes(self) -> int | None: ...

    async def get(self, digest: bytes) -> Entry | None: ...

    def put(self, digest: bytes, entry: Entry, ttl_s: float) -> None: ...

    def configure(self, max_entries: int, max_bytes: int) -> None: ...


class MemoryCache:
    """Least recently used answers of this process, at most ``max_entries`` of them and
    ``max_bytes`` of bodies; an answer larger than ``max_bytes`` alone is not kept."""

    backend = "memory"

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[bytes, tuple[float, Entry]] = OrderedDict()

    @property
    def entries(self) -> int:
        return len(self._items)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def configure(self, max_entries: int, max_bytes: int) -> None:
        self._max, self._max_bytes = max_entries, max_bytes
        self._evict(0)

    async def get(self, digest: bytes) -> Entry | None:
        hit = self._items.get(digest)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            self._drop(digest)
            return None
        self._items.move_to_end(digest)
        return hit[1]

    def put(self, digest: bytes, entry: Entry, ttl_s: float) -> None:
        self._drop(digest)
        if entry.size > self._max_bytes:
            return
        self._evict(entry.size)
        self._items[digest] = (time.monotonic() + ttl_s, entry)
        self._bytes += entry.size

    def _evict(self, room: int) -> None:
        items = self._items
        while items and (len(items) + (room > 0) > self._max
                         or self._bytes + room > self._max_bytes):
            self._drop(next(iter(items)))  # the least recently used

    def _drop(self, digest: bytes) -> None:
        hit = self._items.pop(digest, None)
        if hit is not None:
            self._bytes -= hit[1].size


class KeyValue(Protocol):
    """The state store's shared map with a TTL per entry."""

    async def get(self, name: str) -> bytes | None: ...

    async def put(self, name: str, value: bytes, ttl_s: float) -> None: ...


class SharedCache:
    """Answers in the state store's shared map (Redis), so replicas serve each other's.

    Each entry expires after its TTL, and one larger than ``max_bytes`` is not written;
    the total is Redis's to bound (its ``maxmemory`` and eviction policy,
    docs/cache.md). A lookup waits for Redis; a write goes in the background.
    """

    backend = "redis"

    def __init__(self, kv: KeyValue, max_bytes: int) -> None:
        self._kv = kv
        self._max_bytes = max_bytes
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def entries(self) -> None:
        return None  # Redis counts them, not this process

    @property
    def held_bytes(self) -> None:
        return None

    def configure(self, max_entries: int, max_bytes: int) -> None:
        del max_entries
        self._max_bytes = max_bytes

    async def get(self, digest: bytes) -> Entry | None:
        raw = await self._kv.get("cache:" + digest.hex())
        return Entry.from_bytes(raw) if raw is not None else None

    def put(self, digest: bytes, entry: Entry, ttl_s: float) -> None:
        if entry.size > self._max_bytes or len(self._pending) >= _PENDING_MAX:
            return
        task = asyncio.create_task(self._put("cache:" + digest.hex(), entry.to_bytes(), ttl_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, name: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._kv.put(name, value, ttl_s)
        except Exception as exc:  # a background write: nobody else would see it fail
            log.warning("cached answer not written to the shared store: %r", exc)


RESULTS: Final = ("hit", "miss", "skip")


class ResponseCache:
    """The process's response cache: the policy per group of the current config, the
    store, and its figures (metrics and ``/admin/status``)."""

    def __init__(self, cfg: Config, metrics: Metrics, kv: KeyValue | None) -> None:
        c = cfg.cache
        self.store: CacheStore = (MemoryCache(c.max_entries, c.max_bytes) if kv is None
                                  else SharedCache(kv, c.max_bytes))
        self.metrics = metrics
        self.counts = dict.fromkeys(RESULTS, 0)
        self.saved_usd = 0.0
        self._cfg: Config | None = None
        self._rules: dict[str, Policy | None] = {}
        self._default: Policy | None = None
        self._any = False
        self._configure(cfg)

    def rule(self, cfg: Config, group: str) -> Policy | None:
        """The policy of ``group`` (a group name, or a ``provider/model`` target, which
        takes the top-level one) under ``cfg``; None where the cache is off."""
        if cfg is not self._cfg:
            self._configure(cfg)
        if not self._any:
            return None
        return self._rules.get(group, self._default)

    def _configure(self, cfg: Config) -> None:
        base = cfg.cache
        self._cfg = cfg
        self._default = (Policy(base.ttl_s, base.scope, base.nondeterministic)
                         if base.mode != "off" else None)
        rules: dict[str, Policy | None] = {}
        for name, group in cfg.groups.items():
            over = group.cache
            if over is None:
                rules[name] = self._default
                continue
            mode = over.mode if over.mode is not None else base.mode
            rules[name] = None if mode == "off" else Policy(
                over.ttl_s if over.ttl_s is not None else base.ttl_s,
                over.scope if over.scope is not None else base.scope,
                over.nondeterministic if over.nondeterministic is not None
                else base.nondeterministic)
        self._rules = rules
        self._any = self._default is not None or any(r is not None for r in rules.values())
        self.store.configure(base.max_entries, base.max_bytes)

    def count(self, group: str, result: str) -> None:
        self.counts[result] += 1
        m = self.metrics
        m.child(m.cache_requests, group, result).inc()

    def saved(self, group: str, usd: float) -> None:
        self.saved_usd += usd
        m = self.metrics
        m.child(m.cache_savings, group).inc(usd)

    def put(self, digest: bytes, entry: Entry, ttl_s: float) -> None:
        self.store.put(digest, entry, ttl_s)
        held = self.store.held_bytes
        if held is not None:
            self.metrics.cache_bytes.set(held)

    def status(self) -> dict[str, Any]:
        """``/admin/status``'s cache figures (this process's lookups since it started)."""
        hits, misses = self.counts["hit"], self.counts["miss"]
        return {"enabled": self._any, "backend": self.store.backend,
                "entries": self.store.entries, "bytes": self.store.held_bytes,
                "hits": hits, "misses": misses, "skips": self.counts["skip"],
                "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
                "saved_usd": round(self.saved_usd, 6)}
