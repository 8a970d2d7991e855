"""Observability: /metrics after real traffic, health endpoints, the access log line."""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from llm_router import __version__
from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .helpers import AUTH, HELLO, ROUTER_KEY, metric_samples, metrics_page, openai_provider, total


def _config(up: Upstream) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up, ["sk-secret-one", {"key": "sk-secret-two",
                                                                   "name": "two"}])],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "pricing": {"m": {"input": 1.0, "output": 2.0}},
    }


async def test_metrics_after_real_traffic(start_router: StartRouter, upstream: Upstream,
                                          http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream))
    client = router.openai()
    usages = []
    for _ in range(3):
        r = await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
        assert r.usage is not None
        usages.append((r.usage.prompt_tokens, r.usage.completion_tokens))
    for _ in range(2):
        chunks = [c async for c in await client.chat.completions.create(
            model="g", messages=HELLO, stream=True, max_tokens=4,  # type: ignore[arg-type]
            stream_options={"include_usage": True})]
        u = chunks[-1].usage
        assert u is not None
        usages.append((u.prompt_tokens, u.completion_tokens))
    upstream.fake.add_fault(Fault(status=503, times=3))
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]

    text, s = await metrics_page(router.url)
    route = "/v1/chat/completions"
    assert total(s, "llm_router_requests_total", route=route, status="200") == 5
    assert total(s, "llm_router_requests_total", route=route, status="502") == 1
    assert total(s, "llm_router_tokens_total", kind="prompt") == sum(p for p, _ in usages)
    assert total(s, "llm_router_tokens_total", kind="completion") == sum(c for _, c in usages)
    assert total(s, "llm_router_time_to_first_token_seconds_count", group="g") == 2
    assert total(s, "llm_router_request_duration_seconds_count", route=route) == 6
    assert total(s, "llm_router_overhead_seconds_count", route=route) == 6
    assert total(s, "llm_router_upstream_errors_total", reason="status_5xx") == 2
    assert total(s, "llm_router_fallbacks_total", group="g") == 1
    expected_cost = sum(p * 1.0 + c * 2.0 for p, c in usages) / 1e6
    assert total(s, "llm_router_cost_usd_total") == pytest.approx(expected_cost)
    assert total(s, "llm_router_key_tokens") == sum(router.state.counters.tokens.values())
    # Each key's gauges hold its last answer's x-ratelimit-remaining-*; the fake counts
    # down, so the lowest is what the last answer said.
    for kind, sent in (("requests", upstream.fake._remaining_requests),
                       ("tokens", upstream.fake._remaining_tokens)):
        assert min(v for k, v in s.items() if k.startswith(
            "llm_router_upstream_ratelimit_remaining{") and f"kind={kind}" in k) == sent
    assert s["llm_router_inflight_requests{}"] == 0  # a scrape does not count itself
    assert total(s, "llm_router_config_reloads_total", result="success") == 0
    assert s["llm_router_config_last_reload_timestamp_seconds{}"] > 0
    assert "sk-secret" not in text and ROUTER_KEY not in text
    assert 'key="two"' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_promtool_accepts_the_exposition(start_router: StartRouter, upstream: Upstream,
                                               http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream))
    await router.openai().chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    text, _ = await metrics_page(router.url)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_health_endpoints_need_no_key(start_router: StartRouter, upstream: Upstream,
                                            http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream))
    for path in ("/health", "/health/live"):
        async with http.get(router.url + path) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with http.get(router.url + "/health/ready") as resp:
        assert resp.status == 200 and (await resp.json())["ready"] is True
    router.state.draining = True
    async with http.get(router.url + "/health/ready") as resp:
        assert resp.status == 503 and (await resp.json())["ready"] is False


async def test_one_access_line_per_request_without_secrets(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(_config(upstream))
    caplog.set_level(logging.INFO, logger="llm_router.access")
    secret_prompt = "my very private prompt"
    body = {"model": "g", "messages": [{"role": "user", "content": secret_prompt}]}
    async with http.post(router.url + "/v1/chat/completions", json=body,
                         headers={**AUTH, "X-Request-Id": "req-123"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req-123"
    async with http.post(router.url + "/v1/chat/completions", json=body,
                         headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401
        generated = resp.headers["X-Request-Id"]
    lines = [r.getMessage() for r in caplog.records if r.name == "llm_router.access"]
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["request_id"] == "req-123" and first["status"] == 200
    assert first["group"] == "g" and first["provider"] == "up" and first["model"] == "m"
    assert first["prompt_tokens"] > 0 and first["completion_tokens"] == 16
    assert first["attempts"] == 1 and first["latency_ms"] > 0 and first["bytes"] > 0
    assert second["request_id"] == generated and second["status"] == 401
    joined = "\n".join(lines)
    assert secret_prompt not in joined and "sk-secret" not in joined and "nope" not in joined


def _team_config(up: Upstream) -> dict[str, Any]:
    """bob: rpm 1; carol: a tiny budget and only group g; dave: no budget, no limits."""
    return {
        "providers": [openai_provider("up", up, ["sk-secret-one"]),
                      openai_provider("cool", up, ["sk-secret-cool"])],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]},
                   {"name": "h", "models": [{"provider": "up", "name": "m"}]},
                   {"name": "c", "models": [{"provider": "cool", "name": "m"}]}],
        "users": [
            {"name": "bob", "keys": [{"key": "sk-bob", "name": "laptop"}],
             "limits": {"rpm": 1, "tpm": 100000, "daily_requests": 50}},
            {"name": "carol", "keys": [{"key": "sk-carol", "name": "ci"}], "models": ["g", "c"],
             "budget": {"usd": 0.00001, "period": "monthly"}},
            {"name": "dave", "keys": [{"key": "sk-dave", "name": "box"}]},
        ],
        "pricing": {"m": {"input": 1.0, "output": 2.0}},
    }


async def _status(http: aiohttp.ClientSession, router: Router, key: str, model: str) -> int:
    async with http.post(router.url + "/v1/chat/completions",
                         headers={"Authorization": f"Bearer {key}"},
                         json={"model": model, "messages": HELLO}) as resp:
        await resp.read()
        return resp.status


async def test_refusals_are_counted_by_reason_and_user(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_team_config(upstream))
    assert await _status(http, router, "sk-bob", "g") == 200
    assert await _status(http, router, "sk-bob", "g") == 429  # rpm 1
    assert await _status(http, router, "sk-carol", "g") == 200  # spends past the budget
    assert await _status(http, router, "sk-carol", "g") == 402
    assert await _status(http, router, "sk-carol", "h") == 403  # not in her allowlist
    assert await _status(http, router, "sk-nobody", "g") == 401
    upstream.fake.add_fault(Fault(status=429, retry_after="30", key="sk-secret-cool"))
    assert await _status(http, router, "sk-dave", "c") == 429  # upstream 429: not a refusal
    assert await _status(http, router, "sk-dave", "c") == 503  # the only key cools down

    s = await metric_samples(router.url)
    rej = "llm_router_rejections_total"
    assert total(s, rej, user="bob", reason="rpm", group="g") == 1
    assert total(s, rej, user="carol", reason="budget") == 1
    assert total(s, rej, user="carol", reason="model_not_allowed", group="h") == 1
    assert total(s, rej, user="anonymous", reason="auth") == 1
    assert total(s, rej, user="dave", reason="cooling_down", group="c") == 1
    assert total(s, rej) == 5  # nothing else, and never the upstream's own 429
    req = "llm_router_requests_total"
    assert total(s, req, user="bob", status="200") == 1
    assert total(s, req, user="bob", status="429") == 1
    assert total(s, req, user="carol", status="402") == 1
    # Served and refused requests land in different duration series.
    dur = "llm_router_request_duration_seconds_count"
    assert total(s, dur, group="g", model="m", status="2xx") == 2
    assert total(s, dur, group="g", status="4xx") == 2  # bob's 429, carol's 402
    assert total(s, dur, status="4xx") == 5  # the 403, the 401 (no group yet), the 429
    assert total(s, dur, group="c", status="5xx") == 1


async def test_budgets_and_limits_left_are_gauges_per_user(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_team_config(upstream))
    assert await _status(http, router, "sk-bob", "g") == 200
    assert await _status(http, router, "sk-carol", "g") == 200
    s = await metric_samples(router.url)
    report = router.state.ledger.admin_usage(router.state.config)
    carol = next(u for u in report["users"] if u["name"] == "carol")
    assert s["llm_router_budget_usd{user=carol}"] == 0.00001
    assert s["llm_router_budget_remaining_usd{user=carol}"] == carol["budget"]["remaining_usd"]
    assert s["llm_router_budget_remaining_usd{user=carol}"] == 0.0  # spent past it
    reset = s["llm_router_budget_reset_timestamp_seconds{user=carol}"]
    assert datetime.fromtimestamp(reset, UTC).day == 1  # a monthly budget renews on the 1st
    assert reset > time.time()
    assert s["llm_router_limit_remaining{limit=rpm,user=bob}"] == 0
    assert s["llm_router_limit_remaining{limit=daily_requests,user=bob}"] == 49
    assert 0 < s["llm_router_limit_remaining{limit=tpm,user=bob}"] < 100000
    assert not any(k.startswith("llm_router_budget_usd{user=bob") for k in s)  # no budget
    assert not any("user=dave" in k and k.startswith("llm_router_limit_remaining") for k in s)


async def test_build_info_and_process_collectors(start_router: StartRouter, upstream: Upstream
                                                 ) -> None:
    router = await start_router(_config(upstream))
    s = await metric_samples(router.url)
    build = [k for k in s if k.startswith("llm_router_build_info{")]
    assert build == [f"llm_router_build_info{{python={platform.python_version()},"
                     f"version={__version__}}}"]
    assert s["process_resident_memory_bytes{}"] > 0
    assert s["process_cpu_seconds_total{}"] > 0
    assert any(k.startswith("python_info{") for k in s)
    assert any(k.startswith("python_gc_collections_total{") for k in s)


async def test_time_per_output_token_of_streams(start_router: StartRouter,
                                                make_upstream: MakeUpstream) -> None:
    paced = await make_upstream(tokens_per_second=100)  # an event every 10 ms
    router = await start_router(_config(paced))
    client = router.openai()
    for _ in range(2):
        chunks = [c async for c in await client.chat.completions.create(
            model="g", messages=HELLO, stream=True, max_tokens=4)]  # type: ignore[arg-type]
        assert chunks
    await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    s = await metric_samples(router.url)
    labels = "group=g,model=m,provider=up"
    count = s[f"llm_router_time_per_output_token_seconds_count{{{labels}}}"]
    assert count == 2  # streams only
    mean = s[f"llm_router_time_per_output_token_seconds_sum{{{labels}}}"] / count
    assert mean >= 0.01  # never faster than the upstream paced its tokens


def _closed(up: Upstream, **metrics: Any) -> dict[str, Any]:
    return {**_config(up), "metrics": metrics,
            "users": [{"name": "ops", "role": "admin", "keys": [{"key": "sk-ops"}]},
                      {"name": "dev", "keys": [{"key": "sk-dev"}]}]}


async def _scrape_status(http: aiohttp.ClientSession, router: Router,
                         key: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.get(router.url + "/metrics", headers=headers) as resp:
        return resp.status, await resp.read()


async def test_metrics_can_require_an_admin_key(start_router: StartRouter, upstream: Upstream,
                                                http: aiohttp.ClientSession) -> None:
    router = await start_router(_closed(upstream, require_key=True))
    status, body = await _scrape_status(http, router)
    assert status == 401 and orjson.loads(body)["error"]["code"] == "missing_api_key"
    assert (await _scrape_status(http, router, "sk-wrong"))[0] == 401
    status, body = await _scrape_status(http, router, "sk-dev")  # a user, not an admin
    assert status == 403 and orjson.loads(body)["error"]["code"] == "admin_only"
    status, body = await _scrape_status(http, router, "sk-ops")
    assert status == 200 and b"llm_router_requests_total" in body
    # The rest of the router's public surface stays open.
    async with http.get(router.url + "/health/ready") as resp:
        assert resp.status == 200


async def test_metrics_can_be_limited_to_client_networks(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_closed(upstream, allow_networks=["10.0.0.0/8", "fd00::/8"]))
    status, body = await _scrape_status(http, router, "sk-ops")  # from 127.0.0.1
    assert status == 403 and orjson.loads(body)["error"]["code"] == "metrics_forbidden"
    router2 = await start_router(_closed(upstream, allow_networks=["127.0.0.1"]),
                                 name="open.yaml")
    assert (await _scrape_status(http, router2))[0] == 200  # no key needed


def test_metrics_and_otel_settings_are_validated() -> None:
    from llm_router.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config("metrics: {require_key: yes please, allow_networks: [10.0.0.0/33]}\n"
                     "otel: {endpoint: collector:4318, sample: 1}\n")
    assert sorted(info.value.problems) == sorted([
        "metrics.require_key: expected true or false, got a string",
        "metrics.allow_networks[0]: '10.0.0.0/33' is not an address or network (write e.g. "
        "10.0.0.0/8 or 127.0.0.1)",
        "otel.sample: unknown key",
        "otel.endpoint: must be an http:// or https:// URL (OTLP/HTTP, e.g. "
        "http://localhost:4318)",
    ])
    cfg = parse_config("otel: {endpoint: 'http://c:4318'}\n")
    assert cfg.otel is not None and cfg.otel.service_name == "llm-router"
    assert not cfg.otel.capture_content and parse_config("{}").otel is None
