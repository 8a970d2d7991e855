"""The response cache end to end (issue 29): the real openai and anthropic SDKs → the
router → the fake upstream on loopback, counting the calls that reach the upstream."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest

from llm_router.config import ConfigError, parse_config, sha256_hex
from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .helpers import HELLO, eventually, metric_samples, openai_provider, write_config
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

ALICE, BOB, ADMIN = "sk-alice", "sk-bob", "sk-admin"
T0 = {"temperature": 0}  # the anthropic SDK no longer declares temperature


def _config(up: Upstream, cache: Any = "exact", *, group: dict[str, Any] | None = None,
            bob: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up),
                      {"name": "claude", "type": "anthropic", "base_url": up.root,
                       "api_keys": ["sk-ant"]}],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "real-model"}],
                    **(group or {})},
                   {"name": "c", "models": [{"provider": "claude", "name": "claude-x"}]}],
        "users": [{"name": "alice", "keys": [{"key": ALICE}]},
                  {"name": "bob", "keys": [{"key": BOB}], **(bob or {})},
                  {"name": "root", "role": "admin", "keys": [{"sha256": sha256_hex(ADMIN)}]}],
        "pricing": {"real-model": {"input": 1.0, "output": 2.0}},
        "cache": cache,
        **top,
    }


def _calls(up: Upstream) -> int:
    return len(up.fake.requests)


async def _chat(router: Router, key: str = ALICE, content: str = "hello there",
                headers: dict[str, str] | None = None, **kw: Any) -> tuple[Any, Any]:
    """(the parsed completion, the response headers)."""
    kw.setdefault("temperature", 0)
    raw = await router.openai(key).chat.completions.with_raw_response.create(
        model="g", messages=[{"role": "user", "content": content}],  # type: ignore[arg-type]
        extra_headers=headers, **kw)
    return raw.parse(), raw.headers


async def test_a_stream_hit_replays_the_answer_through_the_openai_sdk(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    first, h1 = await _chat(router)
    assert h1["x-router-cache"] == "miss"
    raw = await router.openai(ALICE).chat.completions.with_raw_response.create(
        model="g", messages=HELLO, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    assert raw.headers["x-router-cache"] == "hit"
    assert int(raw.headers["age"]) >= 0
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    assert {c.id for c in chunks} == {first.id}
    assert _calls(upstream) == 1
    # Without include_usage the replay hides the usage chunk, as a relayed stream does.
    stream = await router.openai(ALICE).chat.completions.create(
        model="g", messages=HELLO, temperature=0, stream=True)  # type: ignore[arg-type]
    assert all(c.usage is None for c in [c async for c in stream])
    assert _calls(upstream) == 1


async def test_a_streamed_answer_is_kept_whole_tool_calls_included(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    tools = [{"type": "function", "function": {"name": "get_weather",
                                               "parameters": {"type": "object"}}}]
    stream = await router.openai(ALICE).chat.completions.create(
        model="g", messages=HELLO, temperature=0, stream=True, tools=tools)  # type: ignore
    args = "".join([c.choices[0].delta.tool_calls[0].function.arguments or ""
                    async for c in stream if c.choices and c.choices[0].delta.tool_calls])
    whole, headers = await _chat(router, tools=tools)
    assert headers["x-router-cache"] == "hit"
    call = whole.choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", args)
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.usage.total_tokens > 0
    assert _calls(upstream) == 1


async def test_anthropic_messages_hits_replay_as_a_messages_stream(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    client = router.anthropic(ALICE)
    async with client.messages.stream(model="c", max_tokens=20, extra_body=T0,
                                      messages=HELLO) as s:  # type: ignore[arg-type]
        first = await s.get_final_message()
    raw = await client.messages.with_raw_response.create(
        model="c", max_tokens=20, extra_body=T0, messages=HELLO)  # type: ignore[arg-type]
    assert raw.headers["x-router-cache"] == "hit"
    whole = await raw.parse()
    assert whole.content[0].text == first.content[0].text  # type: ignore[union-attr]
    assert whole.usage.output_tokens == first.usage.output_tokens
    async with client.messages.stream(model="c", max_tokens=20, extra_body=T0,
                                      messages=HELLO) as s:  # type: ignore[arg-type]
        again = await s.get_final_message()
    assert again.id == first.id and again.content == first.content
    assert again.usage.output_tokens == first.usage.output_tokens
    assert _calls(upstream) == 1


async def test_scope_user_never_serves_one_users_answer_to_another(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))  # scope: user is the default
    a1, _ = await _chat(router, ALICE)
    b1, hb = await _chat(router, BOB)
    assert hb["x-router-cache"] == "miss"
    a2, _ = await _chat(router, ALICE)
    b2, _ = await _chat(router, BOB)
    assert (a2.id, b2.id) == (a1.id, b1.id) and a1.id != b1.id
    assert _calls(upstream) == 2


async def test_scope_global_shares_answers_between_users(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, {"mode": "exact", "scope": "global"}))
    a1, _ = await _chat(router, ALICE)
    b1, hb = await _chat(router, BOB)
    assert hb["x-router-cache"] == "hit" and b1.id == a1.id
    assert _calls(upstream) == 1


async def test_cache_control_no_cache_skips_the_lookup_and_no_store_the_write(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    first, _ = await _chat(router)
    fresh, h = await _chat(router, headers={"Cache-Control": "no-cache"})
    assert h["x-router-cache"] == "skip" and fresh.id != first.id
    kept, h = await _chat(router)  # no-cache still stored the fresh answer
    assert h["x-router-cache"] == "hit" and kept.id == fresh.id
    _, h = await _chat(router, content="other", headers={"Cache-Control": "no-store"})
    assert h["x-router-cache"] == "miss"
    _, h = await _chat(router, content="other")
    assert h["x-router-cache"] == "miss"  # the no-store answer was not kept
    assert _calls(upstream) == 4


async def test_sampled_requests_are_skipped_unless_the_group_allows_them(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await make_upstream()
    router = await start_router(_config(up))
    for kw in ({"temperature": 0.7}, {"temperature": None}, {"n": 2}):
        for _ in range(2):
            kw2 = {k: v for k, v in kw.items() if v is not None}
            if "temperature" not in kw2 and "n" not in kw2:
                raw = await router.openai(ALICE).chat.completions.with_raw_response.create(
                    model="g", messages=HELLO)  # type: ignore[arg-type]
                headers = raw.headers
            else:
                _, headers = await _chat(router, **kw2)
            assert headers["x-router-cache"] == "skip"
    assert _calls(up) == 6
    up2 = await make_upstream()
    router2 = await start_router(_config(up2, group={"cache": {"nondeterministic": True}}),
                                 name="nd.yaml")
    for expected in ("miss", "hit"):
        raw = await router2.openai(ALICE).chat.completions.with_raw_response.create(
            model="g", messages=HELLO)  # type: ignore[arg-type]
        assert raw.headers["x-router-cache"] == expected
    assert _calls(up2) == 1


async def test_a_group_block_overrides_the_top_level_one_key_by_key(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, "off", group={"cache": {"mode": "exact",
                                                                          "scope": "global"}}))
    a, _ = await _chat(router, ALICE)
    b, h = await _chat(router, BOB)
    assert h["x-router-cache"] == "hit" and a.id == b.id
    # Group c takes the top-level block: off, so no header at all.
    raw = await router.anthropic(ALICE).messages.with_raw_response.create(
        model="c", max_tokens=5, extra_body=T0, messages=HELLO)  # type: ignore[arg-type]
    assert "x-router-cache" not in raw.headers
    # The same request to provider/model (no group) takes the top-level block too.
    async with http.post(router.url + "/v1/chat/completions",
                         headers={"Authorization": f"Bearer {ALICE}"},
                         json={"model": "up/real-model", "messages": HELLO,
                               "temperature": 0}) as resp:
        assert resp.status == 200 and "X-Router-Cache" not in resp.headers


async def test_the_lru_is_bounded_by_entries_and_by_bytes(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, {"mode": "exact", "max_entries": 2}))
    ids = {}
    for prompt in ("a", "b"):
        ids[prompt] = (await _chat(router, content=prompt))[0].id
    await _chat(router, content="a")  # a is now the most recently used
    await _chat(router, content="c")  # evicts b, the least recently used
    assert router.state.cache.store.entries == 2
    assert (await _chat(router, content="a"))[1]["x-router-cache"] == "hit"
    assert (await _chat(router, content="b"))[1]["x-router-cache"] == "miss"
    assert _calls(upstream) == 4

    small = await start_router(_config(upstream, {"mode": "exact", "max_bytes": 2048}),
                               name="small.yaml")
    for prompt in ("a", "b", "c", "d"):  # answers of about 780 bytes: two fit
        await _chat(small, content=prompt, max_tokens=60)
        assert small.state.cache.store.held_bytes <= 2048
    assert small.state.cache.store.entries == 2
    metrics = await metric_samples(small.url)
    assert 1024 < metrics["llm_router_cache_bytes{}"] <= 2048
    assert (await _chat(small, content="d", max_tokens=60))[1]["x-router-cache"] == "hit"
    assert (await _chat(small, content="a", max_tokens=60))[1]["x-router-cache"] == "miss"
    tiny = await start_router(_config(upstream, {"mode": "exact", "max_bytes": 1024}),
                              name="tiny.yaml")
    big = "word " * 400  # the fake echoes nothing, but asks for a long answer
    for _ in range(2):
        _, h = await _chat(tiny, content=big, max_tokens=400)
        assert h["x-router-cache"] == "miss"  # an answer over max_bytes is never kept


async def test_errors_and_cut_streams_are_not_kept(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    upstream.fake.add_fault(Fault(status=500))
    with pytest.raises(openai.APIStatusError):
        await _chat(router)
    upstream.fake.add_fault(Fault(status=400))
    with pytest.raises(openai.BadRequestError):
        await _chat(router)
    # An error in a 200 body (some upstreams do that) reaches the client as sent.
    upstream.fake.add_fault(Fault(status=200, body=b'{"error": {"message": "overloaded"}}'))
    raw = await router.openai(ALICE).chat.completions.with_raw_response.create(
        model="g", messages=HELLO, temperature=0)  # type: ignore[arg-type]
    assert raw.headers["x-router-cache"] == "miss"
    _, h = await _chat(router)
    assert h["x-router-cache"] == "miss"  # none of the three errors was kept
    upstream.fake.add_fault(Fault(status=0, cut_after_chunks=2))
    with pytest.raises(openai.APIError):
        stream = await router.openai(ALICE).chat.completions.create(
            model="g", messages=[{"role": "user", "content": "cut"}],  # type: ignore
            temperature=0, stream=True)
        async for _ in stream:
            pass
    _, h = await _chat(router, content="cut")
    assert h["x-router-cache"] == "miss"  # the cut stream was not kept
    _, h = await _chat(router, content="cut")
    assert h["x-router-cache"] == "hit"
    assert _calls(upstream) == 6


async def test_a_hit_costs_no_budget_but_counts_against_rpm(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream, bob={
        "budget": {"usd": 100.0, "period": "daily"}, "limits": {"rpm": 3}}))

    async def spent() -> tuple[float, int]:
        async with http.get(router.url + "/v1/usage",
                            headers={"Authorization": f"Bearer {BOB}"}) as resp:
            day = orjson.loads(await resp.read())["user"]["usage"]["daily"]
            return day["cost_usd"], day["total_tokens"]

    _, h = await _chat(router, BOB)
    assert h["x-router-cache"] == "miss"
    after_miss = await spent()
    assert after_miss[0] > 0
    _, h = await _chat(router, BOB)
    assert h["x-router-cache"] == "hit" and h["x-router-cost-usd"] == "0"
    assert await spent() == after_miss
    await _chat(router, BOB)  # a third request in the minute: still allowed
    with pytest.raises(openai.RateLimitError):
        await _chat(router, BOB)  # the fourth passes rpm 3, hits or not
    assert _calls(upstream) == 1
    metrics = await metric_samples(router.url)
    assert metrics["llm_router_cache_requests_total{group=g,result=hit}"] == 2
    assert metrics["llm_router_cache_savings_usd_total{group=g}"] == pytest.approx(
        2 * after_miss[0])


async def test_status_shows_the_hit_rate_and_embeddings_are_cached(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream))
    client = router.openai(ALICE)
    first = await client.embeddings.create(model="g", input="vector me")
    again = await client.embeddings.create(model="g", input="vector me")
    assert again.data[0].embedding == first.data[0].embedding
    await _chat(router)
    async with http.get(router.url + "/admin/status",
                        headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        cache = orjson.loads(await resp.read())["cache"]
    assert (cache["hits"], cache["misses"]) == (1, 2)
    assert cache["hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert cache["entries"] == 2 and cache["bytes"] > 0
    assert _calls(upstream) == 2


async def test_responses_are_not_cached(start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    for _ in range(2):
        raw = await router.openai(ALICE).responses.with_raw_response.create(
            model="g", input="hello", temperature=0)
        assert raw.headers["x-router-cache"] == "skip"
    assert _calls(upstream) == 2


async def test_replicas_sharing_redis_serve_each_others_answers(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    config = _config(upstream, state={"redis_url": redis_server.url, "prefix": "rc"})
    a = await start_router(config, name="a.yaml")
    b = await start_router(config, name="b.yaml")
    first, _ = await _chat(a)
    redis = redis_server.client()
    try:
        async def written() -> bool:  # the write goes in the background
            return bool([k async for k in redis.scan_iter(match="rc*cache:*")])

        await eventually(written)
        keys = [k async for k in redis.scan_iter(match="rc*cache:*")]
        assert len(keys) == 1
        assert 0 < await redis.pttl(keys[0]) <= 3_600_000  # every entry expires
    finally:
        await redis.aclose()
    again, h = await _chat(b)
    assert h["x-router-cache"] == "hit" and again.id == first.id
    assert _calls(upstream) == 1


async def test_a_reload_turns_the_cache_on_and_off(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, "off"))
    _, h = await _chat(router)
    assert "x-router-cache" not in h
    write_config(router.config_path, _config(upstream, {"mode": "exact", "ttl_s": 60}))
    await router.reload()
    assert [(await _chat(router))[1]["x-router-cache"] for _ in range(2)] == ["miss", "hit"]
    write_config(router.config_path, _config(upstream, "off"))
    await router.reload()
    _, h = await _chat(router)
    assert "x-router-cache" not in h
    assert _calls(upstream) == 3


def test_cache_settings_are_checked_with_their_location() -> None:
    base = "providers: [{name: p, type: mock}]\ngroups: [{name: g, models: [{provider: p, name: m}]"
    with pytest.raises(ConfigError) as info:
        parse_config(base + ", cache: {mode: exakt, ttl_s: 0}}]\ncache: {scope: everyone}\n")
    text = "\n".join(info.value.problems)
    assert "groups[0].cache.mode" in text and "exact" in text
    assert "groups[0].cache.ttl_s: must be >= 1" in text
    assert "cache.scope" in text and "global" in text
    with pytest.raises(ConfigError) as info:
        parse_config(base + ", cache: {max_bytes: 10}}]\n")
    assert "groups[0].cache.max_bytes: unknown key" in "\n".join(info.value.problems)
    cfg = parse_config(base + ", cache: off}]\ncache: exact\n")
    assert cfg.cache.mode == "exact" and cfg.groups["g"].cache is not None
    assert cfg.groups["g"].cache.mode == "off"
