"""Where the router keeps Responses API answers for ``previous_response_id`` and GET/DELETE.

A stored answer is one :class:`StoredResponse`: the ``response`` object as the client got
it, who may read it, and what a follow-up needs. A *translated* answer (a chat or
Anthropic member served it) carries the whole conversation as items (earlier inputs and
outputs, then this turn's input and output), so any member can continue it. A *native*
answer (the upstream's own Responses API) keeps its conversation upstream, so the entry
records instead which provider, key and model produced it: a follow-up must go back there.

:class:`ResponseStore` is the interface; :class:`MemoryResponseStore` keeps entries in
this process, serialised, so its memory is bounded by ``max_bytes`` of JSON whatever the
traffic (plus a fixed ~200 bytes of bookkeeping per entry, at most ``max_entries``
entries). A shared implementation (Redis) serves the same interface.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

__all__ = ["KeyValue", "MemoryResponseStore", "ResponseStore", "SharedResponseStore",
           "StoredResponse"]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict[str, Any]  # the response object, as returned to the client
    owner: str  # the user that created it; nobody else may read or continue it
    items: list[dict[str, Any]]  # translated: the conversation up to this answer
    origin: tuple[str, str, str] | None = None  # native: (provider, key label, model)

    @property
    def id(self) -> str:
        return str(self.response.get("id") or "")

    def to_json(self) -> bytes:
        return orjson.dumps({"response": self.response, "owner": self.owner,
                             "items": self.items,
                             "origin": list(self.origin) if self.origin else None})

    @classmethod
    def from_json(cls, raw: bytes) -> StoredResponse:
        doc = orjson.loads(raw)
        origin = doc.get("origin")
        return cls(doc["response"], doc["owner"], doc["items"],
                   (str(origin[0]), str(origin[1]), str(origin[2])) if origin else None)


class ResponseStore(Protocol):
    """Keeps responses for a while; every method may be a network round trip."""

    async def get(self, response_id: str) -> StoredResponse | None:
        """The entry, or None if it was never stored, expired, evicted or deleted."""

    async def put(self, entry: StoredResponse) -> bool:
        """Keep ``entry`` under its response id; False if it is too large to keep."""

    async def delete(self, response_id: str) -> bool:
        """Remove the entry; False if there was none."""

    def configure(self, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        """New limits (a config reload); entries over them are dropped at once."""


class KeyValue(Protocol):
    """A map shared by replicas, with a TTL per entry (the state store's get/put)."""

    async def get(self, name: str) -> bytes | None: ...

    async def put(self, name: str, value: bytes, ttl_s: float) -> None: ...


class SharedResponseStore:
    """Entries in the map every replica shares (Redis, through the state store), so any
    replica can continue a conversation another one answered.

    Each entry expires ``ttl_s`` after it was written and one larger than ``max_bytes``
    is not kept; how many entries the map holds is bounded by the backend's own memory
    policy (Redis ``maxmemory``), not counted here. A write is awaited, so a follow-up
    sent on the answer's last event finds it on any replica.
    """

    __slots__ = ("_kv", "_max_bytes", "_ttl_s")

    _PREFIX: Final = "response:"

    def __init__(self, kv: KeyValue, max_bytes: int, ttl_s: float) -> None:
        self._kv = kv
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s

    def configure(self, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        del max_entries  # the shared backend bounds its own size
        self._max_bytes, self._ttl_s = max_bytes, ttl_s

    async def get(self, response_id: str) -> StoredResponse | None:
        raw = await self._kv.get(self._PREFIX + response_id)
        if not raw:  # absent, expired, or deleted (an empty tombstone)
            return None
        try:
            return StoredResponse.from_json(raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            return None  # written by another version; treated as gone

    async def put(self, entry: StoredResponse) -> bool:
        raw = entry.to_json()
        if len(raw) > self._max_bytes:
            return False
        await self._kv.put(self._PREFIX + entry.id, raw, self._ttl_s)
        return True

    async def delete(self, response_id: str) -> bool:
        if await self.get(response_id) is None:
            return False
        # The map has no delete: an empty value reads as gone, and expires soon.
        await self._kv.put(self._PREFIX + response_id, b"", 60.0)
        return True


class MemoryResponseStore:
    """An LRU of serialised entries bounded by count, bytes and age."""

    __slots__ = ("_clock", "_entries", "_max_bytes", "_max_entries", "_ttl_s", "bytes")

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._clock = clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self.bytes = 0  # sum of the serialised entries held

    def __len__(self) -> int:
        return len(self._entries)

    def configure(self, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        self._max_entries, self._max_bytes, self._ttl_s = max_entries, max_bytes, ttl_s
        self._evict()

    async def get(self, response_id: str) -> StoredResponse | None:
        held = self._entries.get(response_id)
        if held is None:
            return None
        expires, raw = held
        if expires <= self._clock():
            self._drop(response_id)
            return None
        self._entries.move_to_end(response_id)  # recently continued: keep it longer
        return StoredResponse.from_json(raw)

    async def put(self, entry: StoredResponse) -> bool:
        raw = entry.to_json()
        if len(raw) > self._max_bytes or self._max_entries <= 0:
            return False
        self._drop(entry.id)
        self._entries[entry.id] = (self._clock() + self._ttl_s, raw)
        self.bytes += len(raw)
        self._evict()
        return True

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        held = self._entries.pop(response_id, None)
        if held is None:
            return False
        self.bytes -= len(held[1])
        return True

    def _evict(self) -> None:
        """Drop expired entries from the old end, then the least recently used while
        over a limit. Expiry is checked from the old end only, so an entry behind a
        younger one waits for its turn; ``get`` never returns it once expired."""
        now = self._clock()
        entries = self._entries
        while entries:
            oldest, (expires, _) = next(iter(entries.items()))
            if expires > now and len(entries) <= self._max_entries \
                    and self.bytes <= self._max_bytes:
                break
            self._drop(oldest)
