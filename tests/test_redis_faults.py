"""Redis failures say why (issue 23): a wrong password, a foreign value under the prefix,
a key of the wrong type, each against a real redis-server.

The reason is on ``/admin/status`` and in the log, the password masked; the same reason
is logged once while retries keep failing; and a fault that outlives every reconnect keeps
the backend down in one transition (``changes``) rather than flapping it up and down at
each retry. Deleting the key brings it back by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from llm_router.state.redis_keys import SEP

from .conftest import Router, StartRouter, Upstream
from .fleet import ADMIN, fleet_config, get_json, post_chat
from .helpers import eventually, metric_samples
from .redis_server import REDIS_PASSWORD, RedisServer, redis_server, redis_server_with_password

__all__ = ["redis_server", "redis_server_with_password"]  # the fixtures, for pytest

RETRIES = 2  # failed reconnects to see before judging: each would have been a flap


async def backend(http: aiohttp.ClientSession, router: Router) -> dict[str, Any]:
    status, doc = await get_json(http, router, "/admin/status", key=ADMIN)
    assert status == 200
    state: dict[str, Any] = doc["config"]["state"]
    return state


async def wait_for(http: aiohttp.ClientSession, router: Router,
                   check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The backend's status once ``check`` holds of it."""
    seen: dict[str, Any] = {}

    async def holds() -> bool:
        seen.update(await backend(http, router))
        return check(seen)

    await eventually(holds, timeout=15.0)
    return seen


def state_lines(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "llm_router.state" and r.levelno == level and text in r.getMessage()]


async def test_a_wrong_password_is_named_masked_and_logged_once(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        redis_server_with_password: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.state")
    redis = redis_server_with_password
    config = fleet_config(upstream, redis)
    config["state"]["redis_url"] = f"redis://:wrong-{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0"
    router = await start_router(config)
    state = await wait_for(http, router, lambda s: s["failed_retries"] >= RETRIES)
    assert state["up"] is False and state["fault"] == "auth"
    assert "refused the credentials" in state["reason"]
    assert "state.redis_url" in state["reason"]
    assert state["redis"] == f"redis://:***@127.0.0.1:{redis.port}/0"
    assert state["changes"] == 0  # never up
    status, _, _ = await post_chat(http, router)  # limits fall back to this replica
    assert status == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert REDIS_PASSWORD not in text and REDIS_PASSWORD not in str(state)
    [at_start] = state_lines(caplog, logging.ERROR, "not usable at start")
    assert "refused the credentials" in at_start and ":***@" in at_start
    # Retries failed RETRIES times or more; the same reason was logged once.
    [still] = state_lines(caplog, logging.WARNING, "still down")
    assert "refused the credentials" in still


def _day_key(prefix: str) -> str:
    return f"{prefix}:day:u{SEP}alice:{time.strftime('%Y-%m-%d', time.gmtime())}"


# (what a foreign writer leaves under the prefix, the key to delete, what the reason says)
FAULTS = [
    pytest.param(lambda r: r.set("t:tokens", "not a hash"), "t:tokens",
                 "key 't:tokens' is a string; this router keeps a hash there", id="wrong-type"),
    pytest.param(lambda r: r.hset("t:tokens", f"up{SEP}k{SEP}m", "lots"), "t:tokens",
                 "holds 'lots' where this router counts a number", id="foreign-counter"),
    pytest.param(lambda r: r.set(_day_key("t"), "abc"), _day_key("t"),
                 "holds 'abc' where this router counts a number", id="foreign-day-count"),
]


@pytest.mark.parametrize(("spoil", "key", "reason"), FAULTS)
async def test_a_foreign_key_keeps_the_backend_down_once_until_it_is_deleted(
        spoil: Callable[[Redis], Awaitable[Any]], key: str, reason: str,
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.state")
    router = await start_router(fleet_config(
        upstream, redis_server, alice={"limits": {"rpm": 1000, "daily_requests": 1000}}))
    before = (await wait_for(http, router, lambda s: s["up"]))["changes"]
    client = redis_server.client()
    try:
        await spoil(client)
        # Admissions read the day count; the sync reads the tokens. Both go on serving.
        status, _, _ = await post_chat(http, router)
        assert status == 200
        state = await wait_for(http, router, lambda s: s["failed_retries"] >= RETRIES)
        assert state["up"] is False and state["fault"] == "data"
        assert reason in state["reason"] and f"redis-cli DEL '{key}'" in state["reason"]
        # Down once, and stays down through every retry: no flapping.
        assert state["changes"] == before + 1
        samples = await metric_samples(router.url)
        assert samples["llm_router_state_backend_up{}"] == 0.0
        status, _, _ = await post_chat(http, router)
        assert status == 200
        assert len(state_lines(caplog, logging.ERROR, "failed")) == 1
        await client.delete(key)
        state = await wait_for(http, router, lambda s: s["up"])
        assert state["changes"] == before + 2 and state["reason"] is None
    finally:
        await client.aclose()


async def test_readiness_says_the_kind_of_fault_but_not_why(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        redis_server_with_password: RedisServer) -> None:
    redis = redis_server_with_password
    config = fleet_config(upstream, redis)
    config["state"]["redis_url"] = f"redis://127.0.0.1:{redis.port}/0"  # no password
    router = await start_router(config)
    await wait_for(http, router, lambda s: s["failed_retries"] >= 1)
    async with http.get(router.url + "/health/ready") as resp:
        doc = await resp.json()
    assert doc["state"] == {"backend": "redis", "up": False, "degraded": True,
                            "pending_writes": 0, "fault": "auth"}
