"""Admissions on Redis go in batches (issue 27): what arrives while one exchange is out
goes in the next, one script call deciding each admission in order, as separate calls
would. Against a real redis-server: the router's own store, driven the way the request
path drives it (``admit``/``record``/``release``), and whole routers over HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from redis.asyncio import Redis

from llm_router.config import Budget, Limits
from llm_router.errors import BudgetExhausted, RateLimited
from llm_router.ledger.accounting import Caller
from llm_router.ledger.limits import Admission
from llm_router.state.redis_keys import SEP
from llm_router.state.redis_store import RedisStore

from .conftest import Router, StartRouter, Upstream
from .fleet import ALICE, fleet_config, get_json, post_chat
from .helpers import eventually
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, for pytest

USER = f"t:w:u{SEP}alice"  # the user's window keys (prefix t, fleet_config)


async def quiet_router(start_router: StartRouter, upstream: Upstream, redis: RedisServer,
                       **alice: Any) -> tuple[Router, RedisStore]:
    """A router on Redis whose background sync stays out of the counts under test."""
    cfg = fleet_config(upstream, redis, alice=alice or None)
    cfg["state"]["sync_interval_ms"] = 60_000
    router = await start_router(cfg)
    store = router.state.store
    assert isinstance(store, RedisStore) and store.up
    return router, store


def caller(key: str = "laptop", **fields: Any) -> Caller:
    return Caller(user="alice", key=key, **fields)


async def evalsha_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def window(client: Redis, name: str, account: str = USER) -> int:
    """The current minute's count of ``name`` (rpm | tpm) of ``account``."""
    keys = [k async for k in client.scan_iter(match=f"{account}:{name}:*".encode())]
    return sum([int(await client.get(k) or 0) for k in keys])


def outcome(result: Any) -> str:
    if isinstance(result, Admission):
        return "ok"
    if isinstance(result, RateLimited | BudgetExhausted):
        return f"{result.status} {result.reason if isinstance(result, RateLimited) else ''}"
    raise AssertionError(f"unexpected {result!r}")


async def test_a_burst_in_one_tick_is_one_call_answered_in_order(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    _, store = await quiet_router(start_router, upstream, redis_server)
    client = redis_server.client()
    try:
        who = caller(limits=Limits(rpm=5))
        before = await evalsha_calls(client)
        results = await asyncio.gather(*(store.admit(who, 10) for _ in range(12)),
                                       return_exceptions=True)
        assert await evalsha_calls(client) == before + 1  # twelve admissions, one call
        assert [outcome(r) for r in results] == ["ok"] * 5 + ["429 rpm"] * 7
        # Only the admitted ones were counted.
        assert await window(client, "rpm") == 5
        assert await window(client, "tpm") == 50
        assert await client.zcard(f"t:slots:u{SEP}alice") == 5
        for adm in results:
            if isinstance(adm, Admission):
                store.release(adm)

        async def slots_freed() -> bool:
            return await client.zcard(f"t:slots:u{SEP}alice") == 0

        await eventually(slots_freed, timeout=5)
    finally:
        await client.aclose()


async def test_a_refused_admission_counts_nothing_and_the_next_ones_see_the_earlier(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    _, store = await quiet_router(start_router, upstream, redis_server)
    client = redis_server.client()
    try:
        who = caller(limits=Limits(tpm=100))
        results = await asyncio.gather(*(store.admit(who, est) for est in (40, 70, 30, 20, 20)),
                                       return_exceptions=True)
        # 40; 40+70 > 100: refused; 40+30; 70+20; 90+20 > 100: refused.
        assert [outcome(r) for r in results] == ["ok", "429 tpm", "ok", "ok", "429 tpm"]
        assert await window(client, "tpm") == 90
        assert await window(client, "rpm") == 3
    finally:
        await client.aclose()


async def test_budget_reservations_within_one_batch_add_up(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    _, store = await quiet_router(start_router, upstream, redis_server)
    who = caller(budget=Budget(usd=1.0, period="daily"))
    results = await asyncio.gather(*(store.admit(who, 10, 0.3) for _ in range(5)),
                                   return_exceptions=True)
    # Reserved before each: 0, 0.3, 0.6, 0.9 (all under $1), then 1.2: refused.
    assert [outcome(r) for r in results] == ["ok"] * 4 + ["402 "]


async def test_two_keys_of_one_user_share_its_limit_within_a_batch(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    _, store = await quiet_router(start_router, upstream, redis_server)
    client = redis_server.client()
    try:
        laptop = caller("laptop", limits=Limits(rpm=3), key_limits=Limits(rpm=100))
        phone = caller("phone", limits=Limits(rpm=3), key_limits=Limits(rpm=1))
        order = [laptop, phone, phone, laptop, laptop, phone]
        results = await asyncio.gather(*(store.admit(c, 1) for c in order),
                                       return_exceptions=True)
        # The phone's own rpm of 1 refuses its second; the user's 3 refuses the rest.
        assert [outcome(r) for r in results] == ["ok", "ok", "429 rpm", "ok", "429 rpm",
                                                 "429 rpm"]
        assert isinstance(results[2], RateLimited) and "key" in results[2].message
        assert isinstance(results[4], RateLimited) and "user" in results[4].message
        assert await window(client, "rpm") == 3
        assert await window(client, "rpm", f"t:w:k{SEP}alice{SEP}laptop") == 2
        assert await window(client, "rpm", f"t:w:k{SEP}alice{SEP}phone") == 1
    finally:
        await client.aclose()


async def test_an_admission_whose_request_is_gone_frees_what_it_took(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    _, store = await quiet_router(start_router, upstream, redis_server)
    client = redis_server.client()
    try:
        who = caller(limits=Limits(tpm=1000, max_concurrent=10))
        # The exchange's connection is up; released unused, its estimate is refunded.
        store.release(await store.admit(who, 1))
        tasks = [asyncio.create_task(store.admit(who, est)) for est in (100, 200, 300)]
        while not any(t.done() for t in tasks) and not store._sender:
            await asyncio.sleep(0)
        tasks[1].cancel()  # the client went away while its admission was out
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[1], asyncio.CancelledError)
        assert all(isinstance(done[i], Admission) for i in (0, 2))

        async def only_the_two_hold() -> bool:
            return (await client.zcard(f"t:slots:u{SEP}alice") == 2
                    and await window(client, "tpm") == 100 + 300)

        # Admitted in Redis or not, the cancelled one holds no slot and no tokens.
        await eventually(only_the_two_hold, timeout=5)
    finally:
        await client.aclose()


async def test_a_concurrent_burst_over_http_settles_every_request_in_redis(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    router, _ = await quiet_router(start_router, upstream, redis_server,
                                   limits={"rpm": 10_000, "max_concurrent": 50},
                                   budget={"usd": 1000.0, "period": "daily"})
    client = redis_server.client()
    try:
        for _ in range(3):
            statuses = await asyncio.gather(*(post_chat(http, router) for _ in range(40)))
            assert [s for s, _, _ in statuses] == [200] * 40

        async def settled() -> bool:
            _, usage = await get_json(http, router, "/v1/usage", ALICE)
            return bool(usage["user"]["usage"]["daily"]["requests"] == 120
                        and await client.zcard(f"t:slots:u{SEP}alice") == 0)

        # Every spend recorded and every in-flight slot released, in Redis.
        await eventually(settled, timeout=5)
    finally:
        await client.aclose()


async def test_one_at_a_time_passes_max_concurrent_1_on_redis(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    # A request's slot is released before the next admission is decided: the release
    # rides ahead of it in the same write, so a client sending one request after the
    # other never trips its own max_concurrent of 1.
    router = await start_router(fleet_config(upstream, redis_server,
                                             alice={"limits": {"max_concurrent": 1}}))
    statuses = [(await post_chat(http, router))[0] for _ in range(10)]
    assert statuses == [200] * 10


async def test_a_value_asked_before_an_admission_comes_back_with_it(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    # The proxy asks for a conversation's pin before it awaits the caller's admission:
    # one exchange with Redis carries both, so the pin is there when the admission is.
    _, store = await quiet_router(start_router, upstream, redis_server)
    await store.put("affinity:ab", b"p\x1fk\x1fm", 60)
    store._kv.discard("affinity:ab")  # the answer must come from Redis, not this copy
    asked = store.get_soon("affinity:ab")
    missing = store.get_soon("affinity:none")
    assert asked is not None and not asked.done()
    adm = await store.admit(caller(limits=Limits(rpm=5)), 10)
    assert asked.done() and missing is not None and missing.done()
    assert await store.got("affinity:ab", asked) == b"p\x1fk\x1fm"
    assert await store.got("affinity:none", missing) is None
    store.release(adm)
