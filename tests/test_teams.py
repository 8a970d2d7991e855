"""Users, limits, prices and budgets end to end: the openai SDK → router → fake upstream.

Recovery after a minute or a day is tested by moving the ledger's clock (its time
source), not by waiting; everything else is real traffic over loopback sockets.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_router.testing.upstream import Fault

from .conftest import Router, StartRouter, Upstream
from .helpers import HELLO, eventually, openai_provider
from .teams_config import ALICE, BOB, BOB_CI, chat, team

T0 = 1_717_243_210.0  # 2024-06-01T12:00:10Z: ten seconds into a minute


class Clock:
    """A settable time source for the ledger."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def rate_limited(router: Router, key: str, **kw: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as info:
        await chat(router, key, **kw)
    return info.value


def retry_after(err: openai.APIStatusError) -> int:
    return int(err.response.headers["Retry-After"])


async def get_json(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, Any]:
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, orjson.loads(await resp.read())


# ---------------------------------------------------------------- allowlists


async def test_allowlist_forbids_other_models_and_filters_the_model_list(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(team(upstream, bob={"models": ["g", "up/real-*"]},
                                     ci={"models": ["g"]}))

    async def ids(key: str) -> list[str]:
        return [m.id async for m in router.openai(key).models.list()]

    assert await ids(ALICE) == ["g", "h", "up/real-model", "up/other-model"]
    assert await ids(BOB) == ["g", "up/real-model"]
    assert await ids(BOB_CI) == ["g"]  # the key narrows its user's allowlist

    assert (await chat(router, BOB, "up/real-model")).choices
    for key, model in ((BOB, "h"), (BOB, "up/other-model"), (BOB_CI, "up/real-model")):
        with pytest.raises(openai.PermissionDeniedError) as info:
            await chat(router, key, model)
        assert info.value.status_code == 403
        assert info.value.code == "model_not_allowed"
        assert model in info.value.message
    assert len(upstream.fake.requests) == 1  # refused before anything was sent


# ---------------------------------------------------------------- limits


async def test_rpm_limit_gives_429_with_retry_after_and_recovers(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(team(upstream, bob={"limits": {"rpm": 2}}))
    clock = router.state.ledger.clock = Clock()
    await chat(router, BOB)
    await chat(router, BOB_CI)  # the user's limit counts all its keys
    err = await rate_limited(router, BOB)
    assert err.code == "rate_limit_exceeded"
    assert "user 'bob'" in err.message and "(rpm)" in err.message
    wait = retry_after(err)
    assert wait == 80  # 50 s to the next minute, then the two requests must fade to one
    assert (await chat(router, ALICE)).choices  # other users are not limited
    clock.t = T0 + wait - 1
    await rate_limited(router, BOB)
    clock.t = T0 + wait
    assert (await chat(router, BOB)).choices
    assert len(upstream.fake.requests) == 4


async def test_tpm_limit_counts_real_usage_and_recovers(start_router: StartRouter,
                                                        upstream: Upstream) -> None:
    router = await start_router(team(upstream, bob={"limits": {"tpm": 50}}))
    clock = router.state.ledger.clock = Clock()
    long = [{"role": "user", "content": "x" * 400}]
    # A request estimated above the whole limit still passes an empty window…
    first = await router.openai(BOB).chat.completions.create(
        model="g", messages=long, max_tokens=5)  # type: ignore[arg-type]
    assert first.usage is not None and first.usage.total_tokens > 50
    # …and what it really used fills the window.
    err = await rate_limited(router, BOB, max_tokens=5)
    assert "(tpm)" in err.message
    wait = retry_after(err)
    assert 50 < wait <= 110
    clock.t = T0 + wait
    assert (await chat(router, BOB, max_tokens=5)).choices


async def test_daily_request_limit_of_a_key_resets_at_utc_midnight(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(team(upstream, ci={"limits": {"daily_requests": 1}}))
    clock = router.state.ledger.clock = Clock()
    await chat(router, BOB_CI)
    err = await rate_limited(router, BOB_CI)
    assert "key 'ci' of user 'bob'" in err.message and "(daily_requests)" in err.message
    assert retry_after(err) == 12 * 3600 - 10  # T0 is 12:00:10 UTC
    assert (await chat(router, BOB)).choices  # bob's other key has no such limit
    clock.t = T0 + retry_after(err)
    assert (await chat(router, BOB_CI)).choices


async def test_limits_on_the_messages_route_answer_in_anthropic_shape(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(team(upstream, bob={"limits": {"rpm": 1}}))
    client = router.anthropic(BOB)
    await client.messages.create(model="g", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model="g", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
    assert int(info.value.response.headers["Retry-After"]) >= 1
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error" and "(rpm)" in body["error"]["message"]


async def test_max_concurrent_limit_frees_its_slot_when_a_request_ends(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(team(upstream, bob={"limits": {"max_concurrent": 1}}))
    upstream.fake.add_fault(Fault(status=0, hang_s=0.5))
    slow = asyncio.create_task(chat(router, BOB))
    await eventually(lambda: bool(upstream.fake.requests))
    err = await rate_limited(router, BOB_CI)
    assert "(max_concurrent)" in err.message and retry_after(err) == 1
    assert (await slow).choices
    # A failed request frees its slot too.
    upstream.fake.add_fault(Fault(status=500, times=None))
    with pytest.raises(openai.InternalServerError):
        await chat(router, BOB)
    upstream.fake.clear_faults()
    streamed = [c async for c in await chat(router, BOB, stream=True)]
    assert streamed
    assert (await chat(router, BOB)).choices
    assert router.state.ledger.usage(_caller(router, BOB))["user"]["concurrent"] == 0


def _caller(router: Router, key: str) -> Any:
    return router.state.keys.authenticate(key)


# ---------------------------------------------------------------- provider key quotas


async def test_provider_key_over_its_daily_quota_is_skipped_not_failed(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    keys = [{"key": "sk-capped", "name": "capped", "daily_request_limit": 1},
            {"key": "sk-free", "name": "free"}]
    cfg = team(upstream)
    cfg["providers"] = [openai_provider("up", upstream, keys)]
    router = await start_router(cfg)
    for _ in range(5):
        assert (await chat(router, ALICE)).choices
    seen = upstream.keys_seen()
    assert seen.count("sk-capped") == 1 and seen.count("sk-free") == 4
    status, report = await get_json(http, router.url + "/admin/usage", ALICE)
    assert status == 200
    capped = next(k for k in report["provider_keys"] if k["key"] == "capped")
    assert capped["requests_today"] == 1 and capped["daily_request_limit"] == 1
    assert capped["state"] == "ok"  # skipped, never counted as a failure


async def test_every_provider_key_over_quota_gives_429_until_utc_midnight(
        start_router: StartRouter, upstream: Upstream) -> None:
    cfg = team(upstream)
    cfg["providers"] = [openai_provider("up", upstream, [{"key": "sk-one",
                                                          "daily_request_limit": 1}])]
    router = await start_router(cfg)
    await chat(router, ALICE)
    err = await rate_limited(router, ALICE)
    assert err.code == "quota_exceeded"
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(retry_after(err) - (midnight - now).total_seconds()) < 5
    assert len(upstream.fake.requests) == 1


# ---------------------------------------------------------------- prices and cost


PRICES = {"real-model": {"input": 1.5, "output": 4.0, "cached_input": 0.5}}


def price(prompt: int, completion: int, cached: int = 0) -> float:
    return ((prompt - cached) * 1.5 + cached * 0.5 + completion * 4.0) / 1_000_000


async def test_cost_matches_the_price_table_streamed_and_not(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(team(upstream, pricing=PRICES))
    client = router.openai(BOB)
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None
    plain = price(usage.prompt_tokens, usage.completion_tokens)
    assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(plain, abs=1e-8)

    chunks = [c async for c in await client.chat.completions.create(
        model="g", messages=HELLO, stream=True, max_tokens=7,  # type: ignore[arg-type]
        stream_options={"include_usage": True})]
    su = chunks[-1].usage
    assert su is not None and su.completion_tokens == 7
    streamed = price(su.prompt_tokens, su.completion_tokens)

    # Upstream usage that reports cached prompt tokens is priced at the cached rate.
    cached_answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "real-model",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "hi"}}],
                     "usage": {"prompt_tokens": 1000, "completion_tokens": 10,
                               "total_tokens": 1010,
                               "prompt_tokens_details": {"cached_tokens": 800}}}
    upstream.fake.add_fault(Fault(status=200, body=orjson.dumps(cached_answer)))
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    cached = price(1000, 10, cached=800)
    assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(cached, abs=1e-8)

    status, mine = await get_json(http, router.url + "/v1/usage", BOB)
    assert status == 200
    total = mine["user"]["usage"]["total"]
    assert total["requests"] == 3
    assert total["cost_usd"] == pytest.approx(plain + streamed + cached, rel=1e-9)
    assert total["models"]["up/real-model"]["cost_usd"] == total["cost_usd"]


async def test_unpriced_model_costs_zero_and_is_reported_once(
        start_router: StartRouter, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(team(upstream, pricing=PRICES))
    with caplog.at_level(logging.WARNING, logger="llm_router.limits"):
        for _ in range(3):
            raw = await router.openai(ALICE).chat.completions.with_raw_response.create(
                model="h", messages=HELLO)  # type: ignore[arg-type]
            assert float(raw.headers["X-Router-Cost-USD"]) == 0.0
        await chat(router, ALICE, "g")
    warnings = [r for r in caplog.records if "pricing" in r.getMessage()]
    assert len(warnings) == 1 and "'other-model'" in warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING


# ---------------------------------------------------------------- budgets


async def test_budget_blocks_with_402_and_stays_blocked_across_a_restart(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    snapshot = tmp_path / "usage.json"
    cfg = team(upstream, bob={"budget": {"usd": 0.01, "period": "daily"}},
               pricing={"real-model": {"input": 1000.0, "output": 1000.0}},
               usage={"snapshot_path": str(snapshot)})
    first = await start_router(cfg)

    await chat(first, BOB)  # under budget when admitted; costs about $0.02
    with pytest.raises(openai.APIStatusError) as info:
        await chat(first, BOB_CI)  # the user's budget covers all its keys
    assert info.value.status_code == 402
    assert info.value.code == "budget_exhausted"
    assert "Budget exhausted for user 'bob'" in info.value.message
    assert "daily" in info.value.message and "renews" in info.value.message
    assert (await chat(first, ALICE)).choices  # alice has no budget
    await first.close()  # drains and writes the final snapshot
    assert orjson.loads(snapshot.read_bytes())["sections"]["ledger"]["users"]

    second = await start_router(cfg, name="config-restarted.yaml")  # loads the snapshot
    with pytest.raises(openai.APIStatusError) as info:
        await chat(second, BOB)
    assert info.value.status_code == 402
    assert len(upstream.fake.requests) == 2  # neither refusal reached the upstream
    report = second.state.ledger.usage(_caller(second, BOB))
    assert report["user"]["budget"]["exhausted"] is True
    assert report["user"]["budget"]["spent_usd"] > 0.01


async def test_key_budget_in_the_total_period_never_renews(start_router: StartRouter,
                                                           upstream: Upstream) -> None:
    cfg = team(upstream, ci={"budget": {"usd": 0.0, "period": "total"}}, pricing=PRICES)
    router = await start_router(cfg)
    with pytest.raises(openai.APIStatusError) as info:
        await chat(router, BOB_CI)
    assert info.value.status_code == 402
    assert "key 'ci' of user 'bob'" in info.value.message
    assert "does not renew" in info.value.message
    assert (await chat(router, BOB)).choices


# ---------------------------------------------------------------- visibility


async def _metric_totals(http: aiohttp.ClientSession, url: str
                         ) -> dict[tuple[str, str], dict[str, float]]:
    """(user, provider/model) → prompt, completion and cost, from /metrics."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "llm_router_tokens_total":
                row = out.setdefault((s.labels["user"], f"{s.labels['provider']}/"
                                      f"{s.labels['model']}"), {})
                row[s.labels["kind"]] = row.get(s.labels["kind"], 0.0) + s.value
            elif s.name == "llm_router_cost_usd_total":
                row = out.setdefault((s.labels["user"], f"{s.labels['provider']}/"
                                      f"{s.labels['model']}"), {})
                row["cost"] = row.get("cost", 0.0) + s.value
    return out


def _ledger_rows(user: str, usage: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    return {(user, model): {"prompt": t["prompt_tokens"], "completion": t["completion_tokens"],
                            "cost": t["cost_usd"]}
            for model, t in usage["total"]["models"].items()}


async def test_usage_reports_show_the_same_figures_as_the_metrics(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(team(upstream, pricing=PRICES,
                                     bob={"limits": {"rpm": 100, "daily_requests": 50},
                                          "budget": {"usd": 5.0, "period": "monthly"}}))
    await chat(router, ALICE)
    await chat(router, ALICE, "h")
    await chat(router, BOB)
    _ = [c async for c in await chat(router, BOB_CI, stream=True)]
    # A stream cut by the upstream is counted too, at what it reported or an estimate.
    upstream.fake.add_fault(Fault(status=0, cut_after_chunks=2))
    body = {"model": "g", "messages": HELLO, "stream": True}
    async with http.post(router.url + "/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {BOB}"}) as resp:
        assert resp.status == 200
        await resp.read()

    metrics = await _metric_totals(http, router.url)
    status, bob = await get_json(http, router.url + "/v1/usage", BOB)
    assert status == 200
    assert bob["user"]["name"] == "bob" and bob["key"]["name"] == "laptop"
    assert _ledger_rows("bob", bob["user"]["usage"]) == {
        k: {kind: pytest.approx(v) for kind, v in row.items()}
        for k, row in metrics.items() if k[0] == "bob"}
    assert bob["user"]["usage"]["daily"]["requests"] == 3
    assert bob["key"]["usage"]["daily"]["requests"] == 2  # one went through key 'ci'
    limits = bob["user"]["limits"]
    assert limits["rpm"]["limit"] == 100 and limits["rpm"]["remaining"] == 97
    assert limits["daily_requests"]["used"] == 3 and limits["daily_requests"]["remaining"] == 47
    budget = bob["user"]["budget"]
    assert budget["spent_usd"] == pytest.approx(bob["user"]["usage"]["monthly"]["cost_usd"])
    assert budget["remaining_usd"] == pytest.approx(5.0 - budget["spent_usd"])

    status, denied = await get_json(http, router.url + "/admin/usage", BOB)
    assert status == 403 and denied["error"]["code"] == "admin_only"
    status, admin = await get_json(http, router.url + "/admin/usage", ALICE)
    assert status == 200
    users = {u["name"]: u for u in admin["users"]}
    assert set(users) == {"alice", "bob"}
    assert [k["name"] for k in users["bob"]["keys"]] == ["laptop", "ci"]
    from_admin = {**_ledger_rows("alice", users["alice"]["usage"]),
                  **_ledger_rows("bob", users["bob"]["usage"])}
    assert from_admin == {k: {kind: pytest.approx(v) for kind, v in row.items()}
                          for k, row in metrics.items()}
    keys = {k["name"]: k for k in users["bob"]["keys"]}
    assert keys["ci"]["usage"]["total"]["requests"] == 1
    (pk,) = admin["provider_keys"]
    assert pk["provider"] == "up" and pk["requests_today"] == 5
    assert sum(pk["tokens"].values()) == sum(
        row["prompt"] + row["completion"] for row in metrics.values())


async def test_legacy_api_key_is_one_admin_user_with_every_model(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    cfg = team(upstream)
    del cfg["users"]
    router = await start_router(cfg)  # the fixture adds the legacy api_key
    key = "sk-test-router"
    assert [m.id async for m in router.openai(key).models.list()] == [
        "g", "h", "up/real-model", "up/other-model"]
    await chat(router, key)
    status, mine = await get_json(http, router.url + "/v1/usage", key)
    assert status == 200 and mine["user"]["name"] == "default"
    assert mine["user"]["usage"]["total"]["requests"] == 1
    status, admin = await get_json(http, router.url + "/admin/usage", key)
    assert status == 200
    assert [u["name"] for u in admin["users"]] == ["default"]
    assert not math.isnan(admin["users"][0]["usage"]["total"]["cost_usd"])
