"""The in-process key-value hook of the state store: bounded by entries and by bytes."""

from __future__ import annotations

import time

from llm_router.state.store import TTLMap


def test_ttl_map_keeps_at_most_max_entries_dropping_the_oldest() -> None:
    m = TTLMap(max_entries=3, max_bytes=1000)
    for i in range(5):
        m.put(f"k{i}", b"v", ttl_s=60)
    assert [m.get(f"k{i}") for i in range(5)] == [None, None, b"v", b"v", b"v"]


def test_ttl_map_keeps_at_most_max_bytes_and_refuses_a_value_larger_than_that() -> None:
    m = TTLMap(max_entries=100, max_bytes=10)
    m.put("a", b"12345", ttl_s=60)
    m.put("b", b"12345", ttl_s=60)
    m.put("c", b"123", ttl_s=60)  # 13 bytes would not fit: the oldest goes
    assert (m.get("a"), m.get("b"), m.get("c")) == (None, b"12345", b"123")
    m.put("huge", b"x" * 11, ttl_s=60)
    assert m.get("huge") is None
    m.put("b", b"1", ttl_s=60)  # replacing frees the old value's bytes
    m.put("d", b"12345", ttl_s=60)
    assert (m.get("b"), m.get("c"), m.get("d")) == (b"1", b"123", b"12345")


def test_ttl_map_entries_expire() -> None:
    m = TTLMap()
    m.put("soon", b"v", ttl_s=0.01)
    m.put("later", b"v", ttl_s=60)
    time.sleep(0.02)
    assert m.get("soon") is None
    assert m.get("later") == b"v"
