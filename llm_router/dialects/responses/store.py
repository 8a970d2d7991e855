"""Where the router keeps Responses API answers for ``previous_response_id`` and GET/DELETE.

A stored answer is one :class:`StoredResponse`: the ``response`` object as the client got
it, who may read it, and what a follow-up needs. A *translated* answer (a chat or
Anthropic member served it) carries the whole conversation as items (earlier inputs and
outputs, then this turn's input and output), so any member can continue it. A *native*
answer (the upstream's own Responses API) keeps its conversation upstream, so the entry
records instead which provider, key and model produced it: a follow-up must go back there.

:class:`ResponseStore` is the interface; :class:`MemoryResponseStore` keeps entries in
this process, serialised, and counts against ``max_bytes`` what each entry really costs
the process: its JSON as a bytes object, its id, and ~200 bytes of bookkeeping; so the
store's memory stays within ``max_bytes`` whatever the traffic (and at most
``max_entries`` entries). A shared implementation (Redis) serves the same interface.
"""

from __future__ import annotations

import sys
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


# Per entry, beyond the JSON and the id: the (expiry, json) tuple, the expiry float and
# the ordered dict's node and table slot. Measured 201 bytes on CPython 3.12 (bench/memory.py).
_BOOKKEEPING: Final = 200


def _held(raw: bytes) -> bytes:
    """``raw`` in a bytes object of its own size. ``orjson.dumps`` returns its working
    buffer, which keeps 4 to 8 KiB of heap whatever the length (a 276-byte entry held
    4.1 KiB of RSS); a copy holds what it says. ``bytes(raw)`` would return ``raw``."""
    return bytes(memoryview(raw))


def _cost(response_id: str, raw: bytes) -> int:
    """What keeping ``raw`` under ``response_id`` costs the process, in bytes."""
    return sys.getsizeof(raw) + sys.getsizeof(response_id) + _BOOKKEEPING


class MemoryResponseStore:
    """An LRU of serialised entries bounded by count, bytes (what the process holds for
    them, :func:`_cost`) and age."""

    __slots__ = ("_clock", "_entries", "_max_bytes", "_max_entries", "_ttl_s", "bytes")

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._clock = clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self.bytes = 0  # what the entries held cost the process (:func:`_cost`), summed

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
        response_id = entry.id
        cost = _cost(response_id, raw)
        if cost > self._max_bytes or self._max_entries <= 0:
            return False
        if response_id in self._entries:
            self._drop(response_id)
        now = self._clock()
        self._entries[response_id] = (now + self._ttl_s, _held(raw))
        self.bytes += cost
        self._evict(now)
        return True

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        held = self._entries.pop(response_id, None)
        if held is None:
            return False
        self.bytes -= _cost(response_id, held[1])
        return True

    def _evict(self, now: float | None = None) -> None:
        """Drop expired entries from the old end, then the least recently used while
        over a limit. Expiry is checked from the old end only, so an entry behind a
        younger one waits for its turn; ``get`` never returns it once expired."""
        if now is None:
            now = self._clock()
        entries = self._entries
        # The least recently used while over a limit, then the expired: the same entries
        # as one pass dropping the oldest while it is expired or a limit is passed
        # (dropping only brings the counts down).
        while entries and (len(entries) > self._max_entries or self.bytes > self._max_bytes):
            oldest, (_, raw) = entries.popitem(last=False)
            self.bytes -= _cost(oldest, raw)
        while entries:
            oldest = next(iter(entries))
            if entries[oldest][0] > now:
                break
            self._drop(oldest)
