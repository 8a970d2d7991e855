"""Webhooks (issue 29, docs/webhooks.md): signed events, once per crossing, retried.

A real aiohttp receiver on loopback checks every delivery's signature with the verifier
docs/webhooks.md gives receivers; the router under test sends to it over a real socket,
and the events come from real traffic: spend recorded from the fake upstream's usage,
keys the fake upstream rejects or fails, a config file edited into an invalid one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from llm_router.config import ConfigError, parse_config, sha256_hex
from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .helpers import (
    AUTH,
    HELLO,
    RELOAD_OK,
    ROUTER_KEY,
    eventually,
    metric_samples,
    openai_provider,
    write_config,
)
from .ports import free_port
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

SECRET = "whsec-test-0123456789"
ALICE = "sk-alice"
DESK = "sk-alice-desk"
def verify(secret: bytes, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """docs/webhooks.md's verifier, verbatim."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(fields["t"])) <= tolerance_s
    return fresh and hmac.compare_digest(expected, fields["v1"])


class Receiver:
    """An aiohttp webhook receiver that can be taken down and brought back on its port."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret.encode()
        self.port = free_port()
        self.events: list[dict[str, Any]] = []  # verified deliveries, as parsed
        self.refused: list[bytes] = []  # bodies whose signature did not verify
        self.attempts: list[str] = []  # X-Router-Delivery-Attempt of verified ones
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self.secret, request.headers.get("X-Router-Signature", "t=0,v1="), body):
            self.refused.append(body)
            return web.Response(status=401, text="bad signature")
        event = orjson.loads(body)
        assert request.headers["X-Router-Event-Id"] == event["id"]
        assert request.headers["X-Router-Event"] == event["type"]
        self.events.append(event)
        self.attempts.append(request.headers["X-Router-Delivery-Attempt"])
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture
async def receiver() -> Any:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def hook(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"url": receiver.url, "secret": SECRET, **extra}


def budget_config(up: Upstream, receiver: Receiver, **top: Any) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up)],
        "groups": [{"name": "g", "affinity": "off", "models": [{"provider": "up", "name": "m"}]}],
        "users": [{"name": "alice", "budget": {"usd": 0.5, "period": "daily"},
                   "keys": [{"sha256": sha256_hex(ALICE), "name": "laptop",
                             "budget": {"usd": 0.3, "period": "monthly"}}]}],
        # At $1000 per 1M tokens one small chat costs a few cents: ~10-20 requests each.
        "pricing": {"m": {"input": 1000.0, "output": 1000.0}},
        "webhooks": [hook(receiver, events=["budget_threshold"])],
        **top,
    }


async def spend_until_refused(routers: list[Router]) -> None:
    """Concurrent chats spread over ``routers`` until one is refused because the key's
    budget is spent (not because requests in flight reserve the rest of it)."""
    async with aiohttp.ClientSession() as http:
        async def chat(router: Router) -> tuple[int, str]:
            async with http.post(router.url + "/v1/chat/completions",
                                 headers={"Authorization": f"Bearer {ALICE}"},
                                 json={"model": "g", "messages": HELLO}) as resp:
                body = await resp.json()
                return resp.status, body["error"]["message"] if resp.status != 200 else ""

        for _ in range(200):
            answers = await asyncio.gather(*(chat(routers[i % len(routers)])
                                             for i in range(8)))
            assert {status for status, _ in answers} <= {200, 402}
            if any("It renews at" in message for _, message in answers):
                return
            await asyncio.sleep(0.05)  # reservations of the last batch are settled
        pytest.fail("the budget was never spent")


def assert_one_event_per_crossing(receiver: Receiver) -> None:
    crossings = Counter((e["data"]["subject"], e["data"]["threshold"])
                        for e in receiver.of("budget_threshold"))
    # The key's budget ($0.30) is spent before the user's ($0.50): the user's 80 % (0.40)
    # is never reached, the key's 80 % and 100 % exactly once each.
    assert crossings == {("key", 0.8): 1, ("key", 1.0): 1}, crossings
    for e in receiver.of("budget_threshold"):
        d = e["data"]
        assert d["user"] == "alice" and d["key"] == "laptop"
        assert d["budget_usd"] == 0.3 and d["period"] == "monthly"
        assert d["spent_usd"] >= d["threshold"] * 0.3
        assert d["period_id"] == time.strftime("%Y-%m", time.gmtime())
        assert d["resets_at"].endswith("Z")
        assert e["id"].startswith("evt_")
    assert not receiver.refused


async def test_budget_crossings_fire_exactly_once_each_under_concurrent_traffic(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    router = await start_router(budget_config(upstream, receiver))
    await spend_until_refused([router])
    await eventually(lambda: _has(receiver, "budget_threshold", 2))
    await asyncio.sleep(0.5)  # room for a duplicate to show up, were there one
    assert_one_event_per_crossing(receiver)
    samples = await metric_samples(router.url)
    assert samples["llm_router_webhook_deliveries_total{event=budget_threshold,"
                   "result=delivered,webhook=127.0.0.1}"] == 2


async def test_two_replicas_sharing_redis_send_each_crossing_once(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver,
        redis_server: RedisServer) -> None:
    cfg = budget_config(upstream, receiver,
                        state={"redis_url": redis_server.url, "prefix": "wh",
                               "sync_interval_ms": 50})
    routers = [await start_router(cfg, name=f"replica{i}.yaml") for i in range(2)]
    await spend_until_refused(routers)
    await eventually(lambda: _has(receiver, "budget_threshold", 2))
    await asyncio.sleep(0.5)
    assert_one_event_per_crossing(receiver)


async def test_replicas_whose_redis_went_away_still_send_crossings_with_one_id(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver,
        redis_server: RedisServer) -> None:
    # docs/webhooks.md: while Redis is away each replica decides alone, so a crossing
    # may come twice, but never lost, and its copies share one id the receiver can drop.
    cfg = budget_config(upstream, receiver,
                        state={"redis_url": redis_server.url, "prefix": "wh",
                               "sync_interval_ms": 50})
    routers = [await start_router(cfg, name=f"replica{i}.yaml") for i in range(2)]
    redis_server.stop()
    await spend_until_refused(routers)
    await eventually(lambda: _has(receiver, "budget_threshold", 2))
    await asyncio.sleep(0.5)  # room for the other replica's copies
    ids: dict[tuple[str, float], set[str]] = {}
    for e in receiver.of("budget_threshold"):
        d = e["data"]
        assert (d["user"], d["key"], d["budget_usd"]) == ("alice", "laptop", 0.3)
        ids.setdefault((d["subject"], d["threshold"]), set()).add(e["id"])
    # The key's 80 % and 100 % came (from one replica or both), one id each.
    assert set(ids) == {("key", 0.8), ("key", 1.0)}, ids
    assert all(len(one) == 1 for one in ids.values()), ids
    assert not receiver.refused
    for router in routers:  # still serving without Redis
        async with aiohttp.ClientSession() as http, http.get(router.url + "/health") as r:
            assert r.status == 200


async def test_a_restart_does_not_send_a_crossing_again(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver,
        tmp_path: Path) -> None:
    cfg = budget_config(upstream, receiver,
                        usage={"snapshot_path": str(tmp_path / "usage.json")},
                        webhooks=[hook(receiver, events=["budget_threshold"],
                                       thresholds=[0.2, 1.0])])
    cfg["users"][0]["keys"].append({"sha256": sha256_hex(DESK), "name": "desk"})
    first = await start_router(cfg)
    await spend_until_refused([first])
    # The key's 20 % and 100 % ($0.30), the user's 20 % ($0.50; it spent the key's $0.30).
    await eventually(lambda: _has(receiver, "budget_threshold", 3))
    await first.close()
    sent = Counter((e["data"]["subject"], e["data"]["threshold"])
                   for e in receiver.of("budget_threshold"))
    assert sent == {("key", 0.2): 1, ("key", 1.0): 1, ("user", 0.2): 1}
    # The same spend, restored from the snapshot. Alice's other key spends more of her
    # budget: the check runs, and finds her 20 % already sent before the restart.
    second = await start_router(cfg, name="again.yaml")
    async with aiohttp.ClientSession() as http, http.post(
            second.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {DESK}"},
            json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 200
    await asyncio.sleep(0.5)
    assert len(receiver.of("budget_threshold")) == 3


async def test_a_receiver_that_was_down_gets_the_event_when_it_returns(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    await receiver.stop()
    router = await start_router({
        "providers": [openai_provider("up", upstream)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "webhooks": [hook(receiver, events=["reload_refused"], max_backoff_s=0.2,
                          max_attempts=50, max_age_s=60)]})
    router.config_path.write_text("groups: [not, a, group]\n")
    await eventually(lambda: _metric(router, "reload_refused", "retry", at_least=2))
    await receiver.start()
    await eventually(lambda: _has(receiver, "reload_refused", 1))
    event = receiver.events[0]
    assert int(receiver.attempts[0]) >= 3  # two failed attempts at least, then this one
    assert event["data"]["reason"] == "file changed"
    assert any("groups" in p for p in event["data"]["problems"])
    status = await _status(router)
    hooks = status["webhooks"]
    assert hooks[0]["delivered"] == 1 and hooks[0]["queued"] == 0
    assert hooks[0]["last_attempt"]["status"] == 204


async def test_a_reload_that_rotates_the_secret_signs_waiting_events_with_the_new_one(
        start_router: StartRouter, upstream: Upstream) -> None:
    rotated = "whsec-rotated-secret-777"
    receiver = Receiver(secret=rotated)
    cfg: dict[str, Any] = {
        "providers": [openai_provider("up", upstream)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "webhooks": [{"url": receiver.url, "secret": SECRET, "events": ["reload_refused"],
                      "max_backoff_s": 0.2, "max_attempts": 100, "max_age_s": 60}]}
    router = await start_router(cfg)
    router.config_path.write_text("groups: [not, a, group]\n")  # the receiver is down
    await eventually(lambda: _metric(router, "reload_refused", "retry"))
    cfg["webhooks"][0]["secret"] = rotated
    write_config(router.config_path, {"api_key": ROUTER_KEY, **cfg})
    await eventually(lambda: _reloaded(router))
    await receiver.start()
    try:
        await eventually(lambda: _has(receiver, "reload_refused", 1))
        assert not receiver.refused  # signed with the rotated secret, never the old one
    finally:
        await receiver.stop()


async def test_a_receiver_with_another_secret_refuses_the_signature(
        start_router: StartRouter, upstream: Upstream) -> None:
    other = Receiver(secret="whsec-another-secret-999")
    await other.start()
    try:
        router = await start_router({
            "providers": [openai_provider("up", upstream)],
            "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
            "webhooks": [{"url": other.url, "secret": SECRET, "events": ["reload_refused"]}]})
        router.config_path.write_text("groups: [not, a, group]\n")
        await eventually(lambda: _metric(router, "reload_refused", "rejected"))
        assert len(other.refused) == 1 and not other.events  # a 401 is not retried
        event = orjson.loads(other.refused[0])
        assert event["type"] == "reload_refused"
    finally:
        await other.stop()


async def test_key_bad_circuit_open_and_backend_down_come_from_upstream_failures(
        start_router: StartRouter, make_upstream: MakeUpstream, receiver: Receiver) -> None:
    a, b = await make_upstream(), await make_upstream()
    a.fake.add_fault(Fault(status=401, key="sk-rotated", times=None))
    b.fake.add_fault(Fault(status=500, times=None))
    router = await start_router({
        "providers": [openai_provider("a", a, ["sk-rotated", "sk-good"]),
                      openai_provider("b", b, [{"key": "sk-b-only", "name": "only"}])],
        "groups": [{"name": "ga", "models": [{"provider": "a", "name": "m"}]},
                   {"name": "gb", "models": [{"provider": "b", "name": "m"}]}],
        "circuit": {"window": 4, "min_requests": 2, "failure_rate": 0.5, "open_s": 30},
        "webhooks": [hook(receiver)]})
    async with aiohttp.ClientSession() as http:
        for model in ["ga"] * 4 + ["gb"] * 3:
            async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                                 json={"model": model, "messages": HELLO}) as resp:
                await resp.read()
    await eventually(lambda: _has(receiver, "backend_down", 1))
    await asyncio.sleep(0.3)
    bad = receiver.of("key_bad")
    assert len(bad) == 1
    assert bad[0]["data"] == {"provider": "a", "key": sha256_hex("sk-rotated")[:8],
                              "status": 401}
    opened = receiver.of("circuit_open")
    assert [e["data"]["provider"] for e in opened] == ["b"]
    assert opened[0]["data"]["key"] == "only"
    down = receiver.of("backend_down")
    assert len(down) == 1 and down[0]["data"] == {"provider": "b", "keys": {"only": "open"}}
    # Provider a still has a usable key: not down.
    assert not receiver.refused


async def test_a_provider_that_recovers_and_fails_again_is_a_new_outage(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    router = await start_router({
        "providers": [openai_provider("up", upstream, [{"key": "sk-up-only", "name": "k"}])],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "circuit": {"window": 4, "min_requests": 2, "failure_rate": 0.5, "open_s": 1.0},
        "webhooks": [hook(receiver, events=["circuit_open", "backend_down"])]})

    async def outage() -> None:
        upstream.fake.add_fault(Fault(status=500, times=2))
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                                     json={"model": "g", "messages": HELLO}) as resp:
                    assert resp.status == 502

    async def recovered() -> bool:  # the half-open probe succeeds: the circuit closes
        async with aiohttp.ClientSession() as http, http.post(
                router.url + "/v1/chat/completions", headers=AUTH,
                json={"model": "g", "messages": HELLO}) as resp:
            await resp.read()
            return resp.status == 200

    await outage()
    await eventually(lambda: _has(receiver, "backend_down", 1))
    await eventually(recovered)
    await outage()
    await eventually(lambda: _has(receiver, "backend_down", 2))
    assert len(receiver.of("circuit_open")) == 2
    assert len({e["id"] for e in receiver.events}) == 4


async def test_status_and_logs_never_show_the_secret_or_url_credentials(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://user:pa55word-xyz@127.0.0.1:{free_port()}/in?token=tok-abcdef123"
    router = await start_router({
        "providers": [openai_provider("up", upstream)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "webhooks": [{"url": url, "secret": SECRET, "name": "ops", "max_attempts": 2,
                      "max_backoff_s": 0.1}]})
    router.config_path.write_text("groups: [not, a, group]\n")
    await eventually(lambda: _metric(router, "reload_refused", "expired", webhook="ops"))
    status = await _status(router)
    text = orjson.dumps(status).decode() + caplog.text
    for secret in (SECRET, "pa55word-xyz", "tok-abcdef123"):
        assert secret not in text
    assert status["webhooks"][0]["url"].endswith("/in")
    assert status["webhooks"][0]["last_attempt"]["error"] == "ClientConnectorError"


def test_bad_webhook_configs_are_refused_with_their_location() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(orjson.dumps({"webhooks": [
            {"url": "ftp://x", "secret": "s" * 16},
            {"url": "https://h.example", "events": ["key_badd"], "secret": "s" * 16},
            {"url": "https://h.example", "thresholds": [0]},
        ]}).decode(), fmt="json")
    problems = "\n".join(err.value.problems)
    assert "webhooks[0].url: must be an http:// or https:// URL" in problems
    assert "webhooks[1].events[0]: unknown event 'key_badd' (did you mean 'key_bad'?)" in problems
    assert "webhooks[2].thresholds[0]: must be a share of the budget above 0" in problems
    assert "webhooks[2].secret: required (or secret_file)" in problems


async def _has(receiver: Receiver, kind: str, n: int) -> bool:
    return len(receiver.of(kind)) >= n


async def _metric(router: Router, event: str, result: str, *, at_least: int = 1,
                  webhook: str = "127.0.0.1") -> bool:
    samples = await metric_samples(router.url)
    key = f"llm_router_webhook_deliveries_total{{event={event},result={result},webhook={webhook}}}"
    return samples.get(key, 0) >= at_least


async def _reloaded(router: Router) -> bool:
    samples = await metric_samples(router.url)
    return samples.get(RELOAD_OK, 0) >= 1


async def _status(router: Router) -> Any:
    async with aiohttp.ClientSession() as http, http.get(router.url + "/admin/status",
                                                          headers=AUTH) as resp:
        assert resp.status == 200
        return await resp.json()

