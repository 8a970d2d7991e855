"""``max_tokens`` makes the budget bound hard on every route, in memory and on Redis
(issue 23, item 2; docs/teams.md, "Budgets").

A request that sets ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``)
reserves the cost of that many completion tokens at admission, so a burst of such
requests against a small budget spends at most the budget plus one request's most
expensive answer. The upstream answers every request at its full ``max_tokens`` (the fake
does), which is the worst case. Real traffic: aiohttp → router(s) → FakeUpstream; the
Redis cases run two routers sharing a real redis-server, as ``--workers 2`` does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.config import sha256_hex
from llm_router.ledger.usage import completion_ceiling

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .helpers import eventually, openai_provider
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

KEY = "sk-budgeted"
PRICE_PER_TOKEN = 0.002  # $2,000 per 1M tokens
MAX_TOKENS = 1000  # $2 of completion: twice the whole budget
BUDGET_USD = 1.0
BURST = 30
HELLO = "hello there"

# route → (path, body): each asks for MAX_TOKENS in its own dialect's field.
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions",
             {"model": "g", "messages": [{"role": "user", "content": HELLO}],
              "max_tokens": MAX_TOKENS}),
    "chat-stream": ("/v1/chat/completions",
                    {"model": "g", "messages": [{"role": "user", "content": HELLO}],
                     "max_completion_tokens": MAX_TOKENS, "stream": True}),
    "responses": ("/v1/responses",
                  {"model": "g", "input": HELLO, "max_output_tokens": MAX_TOKENS}),
    "messages": ("/v1/messages",
                 {"model": "g", "messages": [{"role": "user", "content": HELLO}],
                  "max_tokens": MAX_TOKENS}),
}


def _config(up: Upstream, redis: RedisServer | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "providers": [openai_provider("up", up)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "users": [{"name": "bob", "keys": [{"sha256": sha256_hex(KEY), "name": "laptop"}],
                   "budget": {"usd": BUDGET_USD, "period": "total"}}],
        "pricing": {"m": {"input": PRICE_PER_TOKEN * 1e6, "output": PRICE_PER_TOKEN * 1e6}},
    }
    if redis is not None:
        # The bound under test is the shared one. On a loaded machine one Redis call can
        # pass the default 0.5 s, after which a replica enforces alone (the degraded mode,
        # whose own tests are in test_shared_state.py), and each replica may then admit a
        # request: the calls get room, so that these tests see only the shared admission.
        cfg["state"] = {"redis_url": redis.url, "prefix": "mt", "sync_interval_ms": 50,
                        "timeout_ms": 10000}
    return cfg


async def _burst(routers: list[Router], path: str, body: dict[str, Any]) -> list[int]:
    raw = orjson.dumps(body)

    async def one(s: aiohttp.ClientSession, router: Router) -> int:
        async with s.post(router.url + path, data=raw,
                          headers={"Authorization": f"Bearer {KEY}",
                                   "Content-Type": "application/json"}) as resp:
            await resp.read()  # a stream is read to its end: its usage is then recorded
            return resp.status

    async with aiohttp.ClientSession() as s:
        return await asyncio.gather(*(one(s, routers[i % len(routers)])
                                      for i in range(BURST)))


async def _usage(router: Router) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(
            router.url + "/v1/usage", headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
    return doc["user"]


async def _burst_against_a_small_budget(routers: list[Router], route: str) -> None:
    path, body = ROUTES[route]
    statuses = await _burst(routers, path, body)
    served = statuses.count(200)
    assert served >= 1, "the budget allows the first request"
    assert set(statuses) <= {200, 402}

    async def settled() -> bool:
        user = await _usage(routers[0])
        return bool(user["usage"]["total"]["requests"] == served
                    and user["budget"]["in_flight_usd"] == 0.0)

    await eventually(settled, timeout=10)
    spent = (await _usage(routers[0]))["budget"]["spent_usd"]
    # One request's dearest answer: its prompt, generously a token per 4 bytes of the
    # body, plus every token max_tokens allows.
    one_request = (len(orjson.dumps(body)) / 4 + MAX_TOKENS) * PRICE_PER_TOKEN
    assert BUDGET_USD <= spent <= BUDGET_USD + one_request + 1e-9, (served, spent)
    # And it is over: nothing more is admitted.
    assert set(await _burst(routers, path, body)) == {402}


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_burst_with_max_tokens_spends_at_most_one_request_over_the_budget(
        route: str, make_upstream: MakeUpstream, start_router: StartRouter) -> None:
    slow = await make_upstream(latency_ms=300)  # every request of the burst is in flight
    router = await start_router(_config(slow, None))
    await _burst_against_a_small_budget([router], route)


@pytest.mark.parametrize("route", list(ROUTES))
async def test_the_same_burst_on_two_routers_sharing_redis(
        route: str, redis_server: RedisServer, make_upstream: MakeUpstream,
        start_router: StartRouter) -> None:
    slow = await make_upstream(latency_ms=300)
    cfg = _config(slow, redis_server)
    routers = [await start_router(cfg, name=f"replica{i}.yaml") for i in range(2)]
    await _burst_against_a_small_budget(routers, route)


@pytest.mark.parametrize(("body", "ceiling"), [
    ({"max_tokens": 100}, 100),
    ({"max_completion_tokens": 50, "max_tokens": 80}, 80),  # the upstream may honour either
    ({"max_output_tokens": 30}, 30),
    ({"max_tokens": 100, "n": 3}, 300),
    ({"max_tokens": 10, "n": 2, "best_of": 5}, 50),  # best_of answers are all billed
    ({"max_tokens": 10, "n": 10_000}, 1280),  # n beyond what an upstream accepts
    ({"max_tokens": 10**30}, 1_000_000_000),
    ({}, None),
    ({"max_tokens": True}, None),
    ({"max_tokens": 0}, None),
    ({"max_tokens": -5}, None),
    ({"max_tokens": "4000"}, None),
    ({"max_tokens": 12.0}, None),
], ids=["max_tokens", "largest", "responses", "n", "best_of", "n-capped", "huge", "unset",
        "bool", "zero", "negative", "string", "float"])
def test_completion_ceiling(body: dict[str, Any], ceiling: int | None) -> None:
    assert completion_ceiling(body) == ceiling
