"""The in-memory response store stays within its entries, bytes and age limits."""

from __future__ import annotations

import sys

from llm_router.dialects.responses.store import MemoryResponseStore, StoredResponse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(n: int, text: str = "x", owner: str = "alice") -> StoredResponse:
    return StoredResponse({"id": f"resp_{n}", "output": [{"text": text}]}, owner,
                          [{"type": "message", "role": "user", "content": text}])


async def test_round_trip_keeps_the_response_items_and_origin() -> None:
    store = MemoryResponseStore(10, 1 << 20, 60)
    native = StoredResponse({"id": "resp_n"}, "bob", [], ("p", "k", "m"))
    assert await store.put(entry(1)) and await store.put(native)
    got = await store.get("resp_1")
    assert got == entry(1)
    assert await store.get("resp_n") == native
    assert await store.get("resp_missing") is None
    assert await store.delete("resp_1") and not await store.delete("resp_1")
    assert await store.get("resp_1") is None


async def test_least_recently_used_entries_go_first_past_max_entries() -> None:
    store = MemoryResponseStore(3, 1 << 20, 60)
    for n in range(3):
        await store.put(entry(n))
    await store.get("resp_0")  # continued recently: kept
    await store.put(entry(3))
    assert len(store) == 3
    assert await store.get("resp_1") is None
    assert all([await store.get(f"resp_{n}") for n in (0, 2, 3)])


async def test_memory_stays_under_max_bytes_whatever_the_traffic() -> None:
    limit = 10_000
    store = MemoryResponseStore(1_000_000, limit, 60)
    for n in range(500):
        await store.put(entry(n, "y" * (n % 97)))
        assert store.bytes <= limit
    assert 0 < len(store) < 500
    # What is counted is what each entry costs: its JSON as bytes, its id, bookkeeping.
    kept = [entry(n, "y" * (n % 97)) for n in range(500)][-len(store):]
    assert store.bytes == sum(sys.getsizeof(e.to_json()) + sys.getsizeof(e.id) + 200
                              for e in kept)
    # One entry larger than the whole budget is refused, not kept at others' expense.
    assert not await store.put(entry(9999, "z" * limit))
    assert store.bytes <= limit and await store.get("resp_499") is not None


async def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    store = MemoryResponseStore(10, 1 << 20, 30, clock=clock)
    await store.put(entry(1))
    clock.now += 29
    assert await store.get("resp_1") is not None
    clock.now += 2
    assert await store.get("resp_1") is None
    assert store.bytes == 0


async def test_a_put_drops_the_expired_from_the_old_end() -> None:
    clock = Clock()
    store = MemoryResponseStore(2, 1 << 20, 30, clock=clock)
    await store.put(entry(1))
    clock.now += 2
    await store.put(entry(2))
    clock.now += 31  # both expired; the store is full
    await store.put(entry(3))  # the oldest goes for room, the next for its age
    assert len(store) == 1 and await store.get("resp_3") is not None
    assert store.bytes == sys.getsizeof(entry(3).to_json()) + sys.getsizeof("resp_3") + 200
    await store.put(entry(4))
    assert len(store) == 2  # a live entry stays


async def test_a_reload_with_smaller_limits_evicts_at_once() -> None:
    store = MemoryResponseStore(10, 1 << 20, 60)
    for n in range(10):
        await store.put(entry(n))
    store.configure(2, 1 << 20, 60)
    assert len(store) == 2
    assert await store.get("resp_9") is not None
