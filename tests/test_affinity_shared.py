"""Prompt-cache affinity across replicas that share a real redis-server (issue 17 + 14)."""

from __future__ import annotations

from typing import Any

from llm_router.gateway.affinity import SharedAffinityStore
from llm_router.state.redis_store import _COMMANDS_MAX

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .conversations import Conversation, group_config, keys_per_turn, warm
from .helpers import eventually, metric_samples
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


def _shared_config(up: Upstream, redis_server: RedisServer, **state: Any) -> dict[str, Any]:
    """The conversations' group (keys a1, a2, b1), its state in Redis under ``aff``."""
    return {**group_config(up, {"slack": 100}),
            "state": {"redis_url": redis_server.url, "prefix": "aff", "sync_interval_ms": 50,
                      **state}}


async def _pins_in_redis(redis_server: RedisServer) -> set[bytes]:
    """The affinity pins Redis holds (their keys)."""
    redis = redis_server.client()
    try:
        return {k async for k in redis.scan_iter(match="aff:kv:affinity:*", count=1000)}
    finally:
        await redis.aclose()


async def _store_up(router: Router) -> None:
    async def up() -> bool:
        return router.state.store.up

    await eventually(up, timeout=10)


async def test_replicas_sharing_redis_agree_on_a_conversations_key(
        redis_server: RedisServer, start_router: StartRouter,
        make_upstream: MakeUpstream) -> None:
    up = await make_upstream(prompt_cache_ttl_s=600)
    config = _shared_config(up, redis_server)
    a = await start_router(config, name="a.yaml")
    b = await start_router(config, name="b.yaml")
    await warm(a)

    async def b_sees_every_key() -> bool:  # counters reach b through Redis
        return len([n for n in b.state.counters.tokens.values() if n > 0]) == 3

    await eventually(b_sees_every_key, timeout=10)
    conv = Conversation(0)
    await conv.turn(a)

    async def pinned_in_redis() -> bool:
        return bool(await _pins_in_redis(redis_server))

    await eventually(pinned_in_redis, timeout=10)
    replicas: list[Router] = [b, a, b]
    for router in replicas:
        raw = await conv.turn(router)
        assert raw.parse().usage.prompt_tokens_details.cached_tokens > 0
    assert len(set(keys_per_turn(up, "Plan trip 0."))) == 1
    on_b = await metric_samples(b.url)
    assert on_b["llm_router_affinity_total{group=g,result=hit}"] == 2


# ---------------------------------------------------------------- pins are best effort


async def test_pin_writes_past_the_pending_bound_are_dropped_and_serving_goes_on(
        redis_server: RedisServer, start_router: StartRouter,
        make_upstream: MakeUpstream) -> None:
    up = await make_upstream(prompt_cache_ttl_s=600)
    # A generous timeout: a loaded box must not take Redis for away (a drop of its own).
    router = await start_router(_shared_config(up, redis_server, timeout_ms=5000))
    await _store_up(router)
    affinity = router.state.affinity
    assert isinstance(affinity, SharedAffinityStore)
    # More pins in one tick than may wait for an exchange (many answers finishing while
    # one exchange is out): the writes past the bound are skipped, not queued.
    burst = [n.to_bytes(8, "big") for n in range(_COMMANDS_MAX + 300)]
    for digest in burst:
        affinity.pin(digest, ("a", "m", "k"), 60)
    # A conversation after the burst is answered, and its pin still reaches Redis.
    raw = await Conversation(0).turn(router)
    assert raw.http_response.status_code == 200 and raw.parse().choices
    burst_keys = {f"aff:kv:affinity:{d.hex()}".encode(): d for d in burst}

    async def conversation_pinned() -> bool:  # sent after the burst, on one connection
        return bool(await _pins_in_redis(redis_server) - burst_keys.keys())

    await eventually(conversation_pinned, timeout=10)
    kept = {burst_keys[k] for k in await _pins_in_redis(redis_server) if k in burst_keys}
    assert kept == set(burst[:_COMMANDS_MAX])  # the first ones, up to the bound
    # A lost pin costs its conversation the cache, nothing else: no pin, so a new pick.
    assert await affinity.lookup(burst[0]) == ("a", "m", "k")
    assert await affinity.lookup(burst[-1]) is None


async def test_pins_made_while_redis_is_away_stay_local_and_are_not_replayed(
        redis_server: RedisServer, start_router: StartRouter,
        make_upstream: MakeUpstream) -> None:
    up = await make_upstream(prompt_cache_ttl_s=600)
    router = await start_router(_shared_config(up, redis_server, timeout_ms=100))
    store = router.state.store
    await _store_up(router)
    conv = Conversation(0)
    redis_server.pause()
    try:
        # Answered alone (the first request waits out one short timeout) ...
        first = await conv.turn(router)
        assert first.http_response.status_code == 200 and not store.up
        # ... and the pin it made answers here: the next turn keeps its key and cache.
        second = await conv.turn(router)
        assert second.http_response.status_code == 200
        assert second.parse().usage.prompt_tokens_details.cached_tokens > 0
        assert second.headers["X-Router-Key"] == first.headers["X-Router-Key"]
        samples = await metric_samples(router.url)
        assert samples["llm_router_affinity_total{group=g,result=hit}"] == 1
    finally:
        redis_server.resume()

    async def back_and_flushed() -> bool:  # the counts queued meanwhile are replayed
        return store.up and store.status()["pending_writes"] == 0

    await eventually(back_and_flushed, timeout=10)
    assert await _pins_in_redis(redis_server) == set()  # the pins were not queued
