"""Prompt-cache affinity across replicas that share a real redis-server (issue 17 + 14)."""

from __future__ import annotations

import asyncio
from typing import Any

from .conftest import MakeUpstream, Router, StartRouter, scrape_metrics
from .redis_server import RedisServer, redis_server
from .test_affinity_e2e import _Conversation, _group_config, _keys_per_turn, _warm

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    """Poll ``check()`` (a coroutine function) until true: background syncs take a tick."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_replicas_sharing_redis_agree_on_a_conversations_key(
        redis_server: RedisServer, start_router: StartRouter,
        make_upstream: MakeUpstream) -> None:
    up = await make_upstream(prompt_cache_ttl_s=600)
    config = {**_group_config(up, {"slack": 100}),
              "state": {"redis_url": redis_server.url, "prefix": "aff", "sync_interval_ms": 50}}
    a = await start_router(config, name="a.yaml")
    b = await start_router(config, name="b.yaml")
    await _warm(a)

    async def b_sees_every_key() -> bool:  # counters reach b through Redis
        return len([n for n in b.state.counters.tokens.values() if n > 0]) == 3

    await _until(b_sees_every_key)
    conv = _Conversation(0)
    await conv.turn(a)
    redis = redis_server.client()
    try:
        async def pinned_in_redis() -> bool:
            return bool([k async for k in redis.scan_iter(match="*affinity:*")])

        await _until(pinned_in_redis)
    finally:
        await redis.aclose()
    replicas: list[Router] = [b, a, b]
    for router in replicas:
        raw = await conv.turn(router)
        assert raw.parse().usage.prompt_tokens_details.cached_tokens > 0
    assert len(set(_keys_per_turn(up, "Plan trip 0."))) == 1
    _, on_b = await scrape_metrics(b.url)
    assert on_b["llm_router_affinity_total{group=g,result=hit}"] == 2
