"""What one upstream answer may do to a key (issue 12): a Retry-After is capped, a
rejected key is marked bad and skipped, and a reload that changes a key forgets it all.
Real traffic: router → FakeUpstream over loopback."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from llm_router.testing.upstream import Fault

from .conftest import Router, StartRouter, Upstream
from .helpers import (
    AUTH,
    HELLO,
    RELOAD_OK,
    ROUTER_KEY,
    eventually,
    metric_samples,
    openai_provider,
    save_by_rename,
)


def _config(up: Upstream, keys: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"api_key": ROUTER_KEY, "providers": [openai_provider("up", up, keys)],
            "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}], **extra}


async def _chat(http: aiohttp.ClientSession, router: Router) -> tuple[int, dict[str, str], Any]:
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": HELLO}) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def _reload(http: aiohttp.ClientSession, router: Router, config: dict[str, Any],
                  count: int) -> None:
    save_by_rename(router.config_path, config)

    async def done() -> bool:
        return (await metric_samples(router.url)).get(RELOAD_OK) == count

    await eventually(done)


async def test_retry_after_is_capped_at_cooldown_max(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, [{"key": "sk-a", "name": "a"}],
                                        circuit={"cooldown_max_s": 2}))
    upstream.fake.add_fault(Fault(status=429, retry_after="100000000"))  # ~3 years
    status, headers, _ = await _chat(http, router)
    assert status == 429 and headers["Retry-After"] == "2"
    status, headers, _ = await _chat(http, router)
    assert status == 503 and int(headers["Retry-After"]) <= 2  # cooling, briefly
    await asyncio.sleep(2.1)
    assert (await _chat(http, router))[0] == 200


async def test_reload_that_changes_a_key_clears_its_cooldown(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    cfg = _config(upstream, [{"key": "sk-a", "name": "a"}])
    router = await start_router(cfg)
    upstream.fake.add_fault(Fault(status=429, retry_after="3600"))
    assert (await _chat(http, router))[0] == 429
    # An unrelated edit leaves the cooldown (capped at the default 60 s) in place …
    await _reload(http, router, {**cfg, "groups": [*cfg["groups"], {
        "name": "other", "models": [{"provider": "up", "name": "m"}]}]}, 1)
    status, headers, _ = await _chat(http, router)
    assert status == 503 and 55 <= int(headers["Retry-After"]) <= 60
    # … a new secret for the key does not inherit it.
    await _reload(http, router, _config(upstream, [{"key": "sk-a2", "name": "a"}]), 2)
    assert (await _chat(http, router))[0] == 200
    assert upstream.keys_seen()[-1] == "sk-a2"


async def test_rejected_key_is_marked_bad_and_skipped_then_502_when_all_are(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    keys = [{"key": "sk-a", "name": "a"}, {"key": "sk-b", "name": "b"}]
    router = await start_router(_config(upstream, keys))
    upstream.fake.add_fault(Fault(status=401, key="sk-a", times=None))
    with caplog.at_level(logging.ERROR, logger="llm_router.health"):
        for _ in range(4):
            status, headers, _ = await _chat(http, router)
            assert status == 200 and headers["X-Router-Key"] == "b"
    assert upstream.keys_seen().count("sk-a") == 1  # tried once, then skipped
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "key 'a' of provider 'up'" in rejected[0]
    assert "sk-a" not in rejected[0]
    samples = await metric_samples(router.url)
    assert samples["llm_router_key_state{key=a,provider=up,state=bad}"] == 1

    upstream.fake.add_fault(Fault(status=403, key="sk-b", times=None))
    for _ in range(2):  # the attempt that finds b rejected, then one with no key left
        status, headers, body = await _chat(http, router)
        assert status == 502, body
        assert body["error"]["code"] == "upstream_auth_failed"
        assert headers["Retry-After"] == "30"
    assert upstream.keys_seen().count("sk-b") == 5

    upstream.fake.clear_faults()
    await _reload(http, router, _config(upstream, [{"key": "sk-a3", "name": "a"}, keys[1]]), 1)
    assert (await _chat(http, router))[0] == 200
    assert upstream.keys_seen()[-1] == "sk-a3"
    samples = await metric_samples(router.url)
    for key in ("a", "b"):  # both back after the reload
        assert samples[f"llm_router_key_state{{key={key},provider=up,state=ok}}"] == 1
