"""Shared state through a real redis-server (issue 14, docs/scaling.md).

Several routers (replicas) share one Redis: limits are exact fleet-wide, spend and
usage are fleet-wide, counters and cooldowns travel between replicas, and a Redis that
stalls (SIGSTOP), goes away or comes back empty never takes traffic down. The replicas
are real routers on loopback ports (one a real ``python -m llm_router`` process, to be
killed with SIGKILL); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llm_router.cli import main
from llm_router.state import redis_store
from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .fleet import ADMIN, fleet_config, get_json, post_chat
from .helpers import eventually, metric_samples, write_config
from .redis_server import REDIS_PASSWORD, RedisServer, redis_server, redis_server_with_password

__all__ = ["redis_server", "redis_server_with_password"]  # the fixtures, for pytest

async def replicas(start_router: StartRouter, config: dict[str, Any], n: int) -> list[Router]:
    return [await start_router(config, name=f"replica{i}.yaml") for i in range(n)]


async def test_rpm_is_exact_across_three_replicas(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    # The bound under test is the shared one. On a loaded machine one Redis call can pass
    # the default 0.5 s, after which a replica enforces alone (the degraded mode, tested
    # below): give the calls room, so that this test sees only the shared admission.
    cfg = fleet_config(upstream, redis_server, alice={"limits": {"rpm": 30}},
                       timeout_ms=10000)
    routers = await replicas(start_router, cfg, 3)
    results = await asyncio.gather(*(post_chat(http, routers[i % 3]) for i in range(90)))
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: 30, 429: 60}
    for status, headers, body in results:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert "rpm" in body["error"]["message"]


async def test_budget_and_usage_are_fleet_wide(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    # At $1000 per 1M tokens, one small chat costs a few cents: the budget is one request.
    cfg = fleet_config(upstream, redis_server, alice={"budget": {"usd": 0.001,
                                                                 "period": "daily"}})
    a, b = await replicas(start_router, cfg, 2)
    status, headers, _ = await post_chat(http, a)
    assert status == 200
    spent = float(headers["X-Router-Cost-USD"])

    async def refused_on_b() -> bool:
        return (await post_chat(http, b))[0] == 402

    await eventually(refused_on_b, timeout=5)

    async def spend_on_b() -> bool:
        _, usage = await get_json(http, b, "/v1/usage")
        return bool(usage["user"]["usage"]["daily"]["requests"] == 1)

    await eventually(spend_on_b, timeout=5)  # settling is written a few ms later
    status, usage = await get_json(http, b, "/v1/usage")
    assert status == 200
    assert usage["user"]["usage"]["daily"]["requests"] == 1
    assert usage["user"]["usage"]["daily"]["cost_usd"] == pytest.approx(spent)
    assert usage["user"]["budget"]["exhausted"] is True
    status, report = await get_json(http, a, "/admin/usage", ADMIN)
    alice = next(u for u in report["users"] if u["name"] == "alice")
    assert alice["usage"]["total"]["requests"] == 1


async def test_callers_without_limits_reach_the_fleet_report(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    a, b = await replicas(start_router, fleet_config(upstream, redis_server), 2)
    for router in (a, b, b):
        assert (await post_chat(http, router))[0] == 200

    async def three_requests() -> bool:
        _, usage = await get_json(http, a, "/v1/usage")
        return bool(usage["user"]["usage"]["daily"]["requests"] == 3)

    await eventually(three_requests, timeout=5)


async def test_redis_stall_falls_back_to_this_replica_and_flushes_on_recovery(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    cfg = fleet_config(upstream, redis_server, alice={"limits": {"rpm": 3}})
    a, b = await replicas(start_router, cfg, 2)
    assert (await post_chat(http, a))[0] == 200
    redis_server.pause()
    try:
        t0 = time.monotonic()
        statuses = [(await post_chat(http, a))[0] for _ in range(3)]
        elapsed = time.monotonic() - t0
        # The first call waits out one short timeout at most; the rest skip Redis.
        assert elapsed < 3.0
        # This replica alone enforces the same rpm: it had 1, so 2 more, then 429.
        assert statuses == [200, 200, 429]
        async with http.get(a.url + "/health/ready") as resp:
            assert resp.status == 200
            ready = await resp.json()
        assert ready["state"]["backend"] == "redis"
        assert ready["state"]["degraded"] is True
        samples = await metric_samples(a.url)
        assert samples["llm_router_state_backend_up{}"] == 0.0
    finally:
        redis_server.resume()

    async def back_up() -> bool:
        samples = await metric_samples(a.url)
        return samples["llm_router_state_backend_up{}"] == 1.0

    await eventually(back_up, timeout=10)

    async def flushed() -> bool:
        _, usage = await get_json(http, b, "/v1/usage")
        return bool(usage["user"]["usage"]["daily"]["requests"] == 3)

    await eventually(flushed, timeout=10)
    # The fleet saw all four admissions: replica B, which served none, refuses now.
    assert (await post_chat(http, b))[0] == 429


async def test_writes_queued_past_the_bound_drop_the_oldest_and_serving_goes_on(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The real bound (100 000 queued writes) would take thousands of requests to reach.
    bound = 20
    monkeypatch.setattr(redis_store, "MAX_PENDING", bound)
    caplog.set_level(logging.WARNING, logger="llm_router.state")
    cfg = fleet_config(upstream, redis_server, alice={"limits": {"rpm": 1000}},
                       timeout_ms=200)
    a, b = await replicas(start_router, cfg, 2)

    async def fleet_requests() -> dict[str, int]:  # as Redis has them, through b
        _, doc = await get_json(http, b, "/admin/usage", key=ADMIN)
        return {u["name"]: u["usage"]["daily"]["requests"] for u in doc["users"]}

    async def ready() -> dict[str, Any]:
        async with http.get(a.url + "/health/ready") as resp:
            state: dict[str, Any] = (await resp.json())["state"]
            return state

    redis_server.pause()
    try:
        sent = 8  # each queues several writes (counts, spend, tokens): well past the bound
        assert [(await post_chat(http, a))[0] for _ in range(sent)] == [200] * sent
        assert (await post_chat(http, a, key=ADMIN))[0] == 200  # the newest writes
        state = await ready()
        assert state["degraded"] is True
        assert state["pending_writes"] == bound  # memory stays bounded
    finally:
        redis_server.resume()
    dropped = [int(m.split(": ")[1].split()[0]) for m in (
        r.getMessage() for r in caplog.records) if "away too long" in m]
    # Said once, not once per request: an outage under load must not flood the log
    # (at most one line per _DROP_LOG_EVERY_S, and this pause lasts a second or two).
    assert len(dropped) == 1 and dropped[0] > 0

    async def flushed() -> bool:
        return (await ready())["pending_writes"] == 0 and bool(
            (await fleet_requests()).get("admin"))

    await eventually(flushed, timeout=10)
    # Replica a's recovery line gives the whole count (b queued nothing, so it says 0).
    totals = [int(m.rsplit("; ", 1)[1].split()[0]) for m in (
        r.getMessage() for r in caplog.records) if "is back" in m]
    assert max(totals) >= dropped[0]
    # The newest writes reached Redis (admin's request); the oldest were lost: the fleet
    # misses some of alice's requests, as the log line warned.
    counted = await fleet_requests()
    assert counted["admin"] == 1
    assert counted.get("alice", 0) < sent


async def test_redis_restarted_empty_is_noticed_and_serving_goes_on(
        redis_server_with_password: RedisServer, start_router: StartRouter,
        upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    # A password in the URL, so the log lines that name the backend could leak it.
    caplog.set_level(logging.INFO, logger="llm_router.state")
    redis_server = redis_server_with_password
    assert REDIS_PASSWORD in redis_server.url
    cfg = fleet_config(upstream, redis_server, alice={"limits": {"rpm": 100}})
    (a,) = await replicas(start_router, cfg, 1)
    assert (await post_chat(http, a))[0] == 200
    await redis_server.restart_empty()

    async def noticed() -> bool:
        return "lost its data" in caplog.text

    await eventually(noticed, timeout=10)
    for _ in range(3):
        assert (await post_chat(http, a))[0] == 200

    async def counted_again() -> bool:
        _, usage = await get_json(http, a, "/v1/usage")
        return bool(usage["user"]["usage"]["daily"]["requests"] >= 1)

    await eventually(counted_again, timeout=10)
    lost = [r.getMessage() for r in caplog.records if "lost its data" in r.getMessage()]
    assert lost and all(":***@127.0.0.1" in line for line in lost)  # named, masked
    assert REDIS_PASSWORD not in caplog.text


async def test_selection_counters_balance_across_replicas(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    cfg = fleet_config(upstream, redis_server, keys=["sk-k1", "sk-k2", "sk-k3"])
    routers = await replicas(start_router, cfg, 3)
    for i in range(90):
        assert (await post_chat(http, routers[i % 3]))[0] == 200
        await asyncio.sleep(0.02)
    seen = Counter(upstream.keys_seen())
    assert set(seen) == {"sk-k1", "sk-k2", "sk-k3"}
    # Every answer has the same usage, so requests stand for tokens: each key within
    # 10 % of the mean of 30 (README "How selection works", issue 14).
    assert max(seen.values()) - min(seen.values()) <= 3, seen

    async def fleet_totals() -> bool:
        totals = [sorted(r.state.counters.tokens.items()) for r in routers]
        return totals[0] == totals[1] == totals[2]

    await eventually(fleet_totals, timeout=5)


async def test_a_cooldown_seen_by_one_replica_is_honoured_by_another(
        redis_server: RedisServer, start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    up = await make_upstream()
    cfg = fleet_config(up, redis_server, keys=["sk-k1", "sk-k2"])
    a, b = await replicas(start_router, cfg, 2)
    up.fake.add_fault(Fault(status=429, retry_after="60"))
    # Replica A meets a 429 from whichever key it tries first, and fails over.
    assert (await post_chat(http, a))[0] == 200
    cooled = {k for (_, k), until in a.state.health.cooldowns().items()
              if until > time.monotonic()}
    assert len(cooled) == 1

    async def b_knows() -> bool:
        return {k for (_, k), until in b.state.health.cooldowns().items()
                if until > time.monotonic()} == cooled

    await eventually(b_knows, timeout=5)
    up.fake.requests.clear()
    for _ in range(4):
        assert (await post_chat(http, b))[0] == 200
    from llm_router.config import key_label

    used = {key_label(k) for k in up.keys_seen() if k}
    assert not used & cooled


async def test_generic_map_is_shared(redis_server: RedisServer, start_router: StartRouter,
                                     upstream: Upstream) -> None:
    a, b = await replicas(start_router, fleet_config(upstream, redis_server), 2)
    await a.state.store.put("session:1", b"k2", ttl_s=30)
    assert await b.state.store.get("session:1") == b"k2"
    assert await b.state.store.get("session:none") is None


@pytest.mark.parametrize("url", ["redis://alice:hunter2@localhost:port/0",
                                 "http://alice:hunter2@localhost:6379",
                                 "redis://alice:hunter2@localhost:6379/zero"])
def test_check_refuses_a_bad_redis_url_without_showing_its_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, {"api_key": "sk-x", "state": {"redis_url": url}})
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "state.redis_url" in err
    assert "hunter2" not in err
    assert "alice:***@localhost" in err


async def test_budget_gauges_on_metrics_are_fleet_wide(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession) -> None:
    cfg = fleet_config(upstream, redis_server, alice={"budget": {"usd": 1.0, "period": "daily"},
                                                      "limits": {"daily_requests": 10}})
    a, b = await replicas(start_router, cfg, 2)
    status, headers, _ = await post_chat(http, a)
    assert status == 200
    spent = float(headers["X-Router-Cost-USD"])

    async def b_sees_it() -> bool:  # a scrape of the replica that served nothing
        # The request was counted at admission, its spend only once it settled; both reach
        # Redis, in two writes: wait for the second as well as the first.
        s = await metric_samples(b.url)
        return s.get("llm_router_limit_remaining{limit=daily_requests,user=alice}") == 9 \
            and s.get("llm_router_budget_remaining_usd{user=alice}") == pytest.approx(1.0 - spent)

    await eventually(b_sees_it, timeout=5)
    s = await metric_samples(b.url)
    assert s["llm_router_budget_usd{user=alice}"] == 1.0
    assert s["llm_router_budget_remaining_usd{user=alice}"] == pytest.approx(1.0 - spent)


def test_the_redis_password_is_scrubbed_from_logs_like_other_secrets(tmp_path: Path) -> None:
    from llm_router.config import load_config
    from llm_router.observe.redact import Redactor

    path = tmp_path / "config.yaml"
    write_config(path, {"api_key": "sk-x", "state": {
        "redis_url": "redis://alice:hunter2-long-pw@localhost:6379/0"}})
    scrubbed = Redactor(load_config(path)).text("AUTH alice hunter2-long-pw failed")
    assert "hunter2-long-pw" not in scrubbed
