"""``GET /admin/status`` and ``GET /ui`` over real sockets (the page itself is driven in a
real browser by test_status_page.py), and the traffic rings' arithmetic."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.config import sha256_hex
from llm_router.observe.traffic import Traffic, merge_activity
from llm_router.testing.upstream import Fault

from .conftest import Router, StartRouter, Upstream
from .helpers import HELLO, eventually, openai_provider, write_config
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

ADMIN, BOB = "sk-status-admin", "sk-status-bob"
UP_A, UP_B = "sk-upstream-alpha", "sk-upstream-beta"


def status_config(up: Upstream) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up, [{"key": UP_A, "name": "alpha"},
                                                 {"key": UP_B, "name": "beta"}]),
                      {"name": "local", "type": "mock"}],
        "groups": [{"name": "fast", "models": [
            {"provider": "up", "name": "gpt-4o-mini", "weight": 1},
            {"provider": "local", "name": "llama", "weight": 2}]}],
        "users": [
            {"name": "ops", "role": "admin", "keys": [{"sha256": sha256_hex(ADMIN),
                                                       "name": "console"}]},
            {"name": "bob", "keys": [{"key": BOB, "name": "laptop"}],
             "limits": {"rpm": 600, "tpm": 1_000_000},
             "budget": {"usd": 5.0, "period": "monthly"}},
        ],
        "pricing": {"gpt-4o-mini": {"input": 0.15, "output": 0.6},
                    "llama": {"input": 1.0, "output": 2.0}},
    }


async def chat(http: aiohttp.ClientSession, router: Router, key: str = BOB) -> int:
    async with http.post(router.url + "/v1/chat/completions",
                         headers={"Authorization": f"Bearer {key}"},
                         json={"model": "fast", "messages": HELLO}) as resp:
        await resp.read()
        return resp.status


async def status(http: aiohttp.ClientSession, router: Router, key: str = ADMIN
                 ) -> tuple[int, Any, str]:
    async with http.get(router.url + "/admin/status",
                        headers={"Authorization": f"Bearer {key}"}) as resp:
        text = await resp.text()
        return resp.status, await resp.json(), text


def key_of(report: dict[str, Any], provider: str, key: str) -> dict[str, Any]:
    (p,) = [p for p in report["providers"] if p["name"] == provider]
    (k,) = [k for k in p["keys"] if k["key"] == key]
    return dict(k)


async def test_admin_status_shows_keys_groups_and_spend_by_label_never_a_secret(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(status_config(upstream))
    for _ in range(6):
        assert await chat(http, router) == 200
    code, report, text = await status(http, router)
    assert code == 200
    assert [p["name"] for p in report["providers"]] == ["up", "local"]
    alpha, beta = key_of(report, "up", "alpha"), key_of(report, "up", "beta")
    mock = key_of(report, "local", "mock")
    served = [alpha, beta, mock]
    assert all(k["state"] == "ok" and k["seconds_left"] is None for k in served)
    # Every request was one attempt on one key, counted where it went.
    assert sum(k["requests_5m"] for k in served) == 6
    assert sum(k["errors_5m"] for k in served) == 0
    assert sum(k["requests_today"] for k in served) == 6
    assert alpha["ratelimit_remaining"] or beta["ratelimit_remaining"]  # the fake sends them
    assert set(alpha["tokens"]) <= {"gpt-4o-mini"} and set(mock["tokens"]) == {"llama"}

    (group,) = report["groups"]
    shares = {f"{m['provider']}/{m['model']}": m for m in group["members"]}
    # Inverse weight per key: two keys at weight 1 against one at weight 2 -> 2 : 0.5.
    assert shares["up/gpt-4o-mini"]["target_share"] == pytest.approx(0.8)
    assert shares["local/llama"]["target_share"] == pytest.approx(0.2)
    assert sum(m["share"] for m in group["members"]) == pytest.approx(1.0, abs=1e-3)
    assert group["tokens"] == sum(sum(k["tokens"].values()) for k in served)

    users = {u["name"]: u for u in report["users"]}
    bob = users["bob"]
    assert bob["today"]["requests"] == 6 and bob["today"]["cost_usd"] > 0
    assert bob["budget"]["usd"] == 5.0
    assert bob["budget"]["remaining_usd"] == pytest.approx(5.0 - bob["budget"]["spent_usd"])
    assert bob["budget"]["resets_at"].endswith("Z")
    assert bob["limits"]["rpm"]["limit"] == 600 and bob["limits"]["rpm"]["remaining"] <= 594
    assert users["ops"]["role"] == "admin"

    assert report["config"]["path"] == str(router.config_path)
    assert report["config"]["last_reload"] is None
    assert report["router"]["version"]
    assert report["router"]["inflight"] == 0  # the status request does not count itself
    assert report["router"]["fleet"] is None  # no shared store: this process is the fleet
    assert report["config"]["state"]["backend"] == "memory"
    for secret in (ADMIN, BOB, UP_A, UP_B, sha256_hex(ADMIN), sha256_hex(BOB)):
        assert secret not in text


async def test_status_needs_an_admin_key(start_router: StartRouter, upstream: Upstream,
                                         http: aiohttp.ClientSession) -> None:
    router = await start_router(status_config(upstream))
    code, body, _ = await status(http, router, BOB)
    assert code == 403
    assert body["error"]["code"] == "admin_only"
    assert "bob" in body["error"]["message"] and "admin" in body["error"]["message"]
    code, body, _ = await status(http, router, "sk-nobody")
    assert code == 401 and body["error"]["type"] == "authentication_error"
    async with http.get(router.url + "/admin/status") as resp:
        assert resp.status == 401


async def test_a_429_shows_the_key_cooling_down_with_its_reason_and_time_left(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(status_config(upstream))
    upstream.fake.add_fault(Fault(status=429, key=UP_A, retry_after="40", times=None))
    while UP_A not in upstream.keys_seen():
        assert await chat(http, router) == 200  # failover hides the 429 from the client
    _, report, _ = await status(http, router)
    alpha = key_of(report, "up", "alpha")
    assert alpha["state"] == "cooldown"
    assert 30 < alpha["seconds_left"] <= 40
    assert "429" in alpha["reason"]
    assert alpha["errors_5m"] == 1 and alpha["requests_5m"] == 1
    assert alpha["last_error"]["reason"] == "status_429"
    assert key_of(report, "up", "beta")["state"] == "ok"


async def test_an_open_circuit_shows_with_its_time_left_and_failures(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    cfg = status_config(upstream)
    cfg["circuit"] = {"min_requests": 2, "failure_rate": 0.5, "open_s": 60}
    router = await start_router(cfg)
    upstream.fake.add_fault(Fault(status=500, key=UP_B, times=None))
    while upstream.keys_seen().count(UP_B) < 2:
        assert await chat(http, router) == 200
    _, report, _ = await status(http, router)
    beta = key_of(report, "up", "beta")
    assert beta["state"] == "open"
    assert 50 < beta["seconds_left"] <= 60
    assert "5xx" in beta["reason"]
    assert (beta["errors_5m"], beta["requests_5m"]) == (2, 2)
    assert key_of(report, "up", "alpha")["errors_5m"] == 0


async def test_a_refused_config_edit_is_reported_with_its_problems(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(status_config(upstream))
    _, before, _ = await status(http, router)
    bad = status_config(upstream)
    bad["groups"][0]["models"][0]["wieght"] = 3
    write_config(router.config_path, bad)

    async def reported() -> bool:
        _, report, _ = await status(http, router)
        return report["config"]["last_reload"] is not None

    await eventually(reported, timeout=10)
    _, report, _ = await status(http, router)
    last = report["config"]["last_reload"]
    assert last["result"] == "refused"
    assert any("groups[0].models[0].wieght" in e for e in last["errors"])
    assert report["config"]["loaded_at"] == before["config"]["loaded_at"]

    good = status_config(upstream)
    good["groups"][0]["models"][1]["weight"] = 3
    write_config(router.config_path, good)

    async def accepted() -> bool:
        _, report, _ = await status(http, router)
        return bool(report["config"]["last_reload"]["result"] == "accepted")

    await eventually(accepted, timeout=10)


async def test_ui_is_one_self_contained_page_served_without_a_key(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(status_config(upstream))
    async with http.get(router.url + "/ui") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Nothing to fetch from anywhere: no links, no external scripts, fonts or images.
    # (The one URL is SVG's namespace name, which is never fetched.)
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"]
    for marker in ("<link", "src=", "@import", "url(", "localStorage"):
        assert marker not in page
    assert "sessionStorage" in page
    assert router.state.inflight == 0
    async with http.get(router.url + "/ui/", allow_redirects=False) as resp:
        assert resp.status == 308 and resp.headers["Location"] == "/ui"


@dataclass
class Finished:
    route: str = "/v1/chat/completions"
    status: int = 200
    attempts: int = 1
    provider: str = "up"
    key: str = "alpha"
    failures: list[str] = field(default_factory=list)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_traffic_reports_the_last_complete_minute_and_bounded_percentiles() -> None:
    clock = Clock(1000.0)
    traffic = Traffic(clock, clock)
    clock.t = 1100.2
    for i in range(100):  # 1 ms .. 100 ms
        traffic.record(Finished(), (i + 1) / 1000)
    traffic.record(Finished(status=502), 0.5)
    traffic.record(Finished(route="/admin/status"), 0.001)  # not API traffic
    assert traffic.router().requests == 0  # the current second is not complete
    clock.t = 1101.0
    act = traffic.router()
    assert (act.requests, act.errors, act.window_s) == (101, 1, 60)
    assert act.per_second[-1] == (101, 1) and sum(r for r, _ in act.per_second) == 101
    assert act.p50_s == pytest.approx(0.051, rel=0.10)
    assert act.p95_s == pytest.approx(0.096, rel=0.10)
    clock.t = 1160.9
    assert traffic.router().requests == 101  # still inside the 60 s window
    clock.t = 1161.0
    assert traffic.router().requests == 0 and traffic.router().p50_s is None
    # A slot is reused a minute later: the old second is not counted again.
    traffic.record(Finished(), 0.01)
    clock.t = 1162.0
    assert traffic.router().requests == 1


def test_traffic_of_several_processes_adds_up_by_second() -> None:
    clock = Clock(5000.5)
    one, two = Traffic(clock, clock), Traffic(clock, clock)
    for _ in range(3):
        one.record(Finished(), 0.010)
    two.record(Finished(status=429), 1.0)
    clock.t = 5001.5
    two.record(Finished(), 0.010)
    clock.t = 5002.0
    # Exports travel as JSON between processes.
    docs = [orjson.loads(orjson.dumps(t.export())) for t in (one, two)]
    fleet = merge_activity(docs, 5002)
    assert (fleet.requests, fleet.errors) == (5, 1)
    assert fleet.per_second[-2:] == ((4, 1), (1, 0))
    assert fleet.p50_s == pytest.approx(0.010, rel=0.10)
    assert fleet.p95_s == pytest.approx(1.0, rel=0.10)
    assert one.router().requests == 3


def test_traffic_counts_attempts_and_failures_per_key_over_five_minutes() -> None:
    clock = Clock(3000.0)
    traffic = Traffic(clock, clock)
    traffic.record(Finished(attempts=2, provider="up", key="beta",
                            failures=["up/alpha:status_429"]), 0.2)
    traffic.record(Finished(attempts=1, status=502, key="weird/label:x",
                            failures=["up/weird/label:x:timeout"]), 0.2)
    alpha, beta = traffic.key("up", "alpha"), traffic.key("up", "beta")
    assert (alpha.attempts, alpha.failures, alpha.last_failure) == (1, 1, "status_429")
    assert alpha.last_failure_at == 3000.0
    assert (beta.attempts, beta.failures) == (1, 0)
    weird = traffic.key("up", "weird/label:x")
    assert (weird.attempts, weird.failures, weird.last_failure) == (1, 1, "timeout")
    clock.t = 3000.0 + 4 * 60
    assert traffic.key("up", "alpha").attempts == 1
    clock.t = 3000.0 + 5 * 60
    gone = traffic.key("up", "alpha")
    assert (gone.attempts, gone.failures) == (0, 0)
    assert gone.last_failure == "status_429"  # the last failure is remembered, with its time



async def test_with_a_shared_store_the_status_adds_up_every_router_process(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        redis_server: RedisServer) -> None:
    cfg = {**status_config(upstream),
           "state": {"redis_url": redis_server.url, "prefix": "st", "sync_interval_ms": 50}}
    one = await start_router(cfg, name="one.yaml")
    two = await start_router(cfg, name="two.yaml")
    for _ in range(3):
        assert await chat(http, one) == 200
    for _ in range(2):
        assert await chat(http, two) == 200

    async def whole_fleet_counted() -> bool:
        _, report, _ = await status(http, one)
        fleet = report["router"]["fleet"]
        bob = next(u for u in report["users"] if u["name"] == "bob")
        return bool(fleet is not None and fleet["processes"] == 2 and fleet["requests"] == 5
                    and bob["today"]["requests"] == 5)

    await eventually(whole_fleet_counted, timeout=15)
    _, report, _ = await status(http, one)
    assert report["router"]["requests"] == 3  # this process alone
    assert report["router"]["fleet"]["latency_ms"]["p50"] is not None
    assert report["config"]["state"]["backend"] == "redis"
    assert report["config"]["state"]["up"] is True
    # The other process sees the same fleet.
    _, other, _ = await status(http, two)
    assert other["router"]["requests"] == 2 and other["router"]["fleet"]["requests"] == 5


POLL = {"X-Router-Status-Poll": "1"}  # what /ui sends on its own polls


async def test_the_pages_own_polling_is_logged_at_debug_and_a_refused_poll_at_info(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(status_config(upstream))
    caplog.set_level(logging.DEBUG, logger="llm_router.access")
    for key, rid in ((ADMIN, "poll-ok"), ("sk-nobody", "poll-refused"), (ADMIN, "plain")):
        headers = {"Authorization": f"Bearer {key}", "X-Request-Id": rid}
        async with http.get(router.url + "/admin/status",
                            headers={**headers, **(POLL if rid.startswith("poll") else {})}
                            ) as resp:
            await resp.read()
    levels = {orjson.loads(r.getMessage())["request_id"]: r.levelno for r in caplog.records
              if r.name == "llm_router.access"}
    assert levels == {"poll-ok": logging.DEBUG, "poll-refused": logging.INFO,
                      "plain": logging.INFO}


async def test_limits_report_whole_requests_and_tokens(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(status_config(upstream))
    for _ in range(3):
        assert await chat(http, router) == 200
    _, report, _ = await status(http, router)
    (bob,) = [u for u in report["users"] if u["name"] == "bob"]
    for name, limit in bob["limits"].items():
        assert isinstance(limit["used"], int) and isinstance(limit["remaining"], int), name
        assert limit["used"] + limit["remaining"] == limit["limit"], (name, limit)
    assert bob["limits"]["tpm"]["used"] > 0
