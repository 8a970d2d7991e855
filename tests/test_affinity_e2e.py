"""Prompt-cache affinity end to end: real SDKs -> router -> fake upstream with a prompt cache.

The fake caches prompt prefixes per API key (fake_prompt_cache.py), as providers do, so a
conversation that stays on its key reports cached tokens, and one that wanders does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import orjson
import pytest
import yaml

from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .conversations import PRICE, SYSTEM, Conversation, group_config, keys_per_turn, warm
from .helpers import metric_samples, total


async def _cached_upstream(make_upstream: MakeUpstream) -> Upstream:
    return await make_upstream(prompt_cache_ttl_s=600)


async def test_turns_of_a_conversation_stay_on_one_key_and_hit_its_cache(
        start_router: StartRouter, make_upstream: MakeUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    up = await _cached_upstream(make_upstream)
    router = await start_router(group_config(up))
    caplog.set_level(logging.INFO, logger="llm_router.access")
    # Five alike conversations fit weights 1, 1, 2 exactly (2 + 2 + 1 of them), so
    # every turn after the first stays within the default slack.
    convs = [Conversation(n) for n in range(5)]
    cached_seen = 0
    for turn in range(4):
        for conv in convs:
            raw = await conv.turn(router)
            usage = raw.parse().usage
            cached = usage.prompt_tokens_details.cached_tokens
            assert (cached > 0) == (turn > 0)
            cached_seen += cached
            cost = ((usage.prompt_tokens - cached) * PRICE["input"] + cached
                    * PRICE["cached_input"] + usage.completion_tokens * PRICE["output"]) / 1e6
            assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(cost, rel=1e-12)
    keys_of: dict[str, set[str | None]] = defaultdict(set)
    cache_keys_of: dict[str, set[str]] = defaultdict(set)
    for r in up.fake.requests:
        assert r.body is not None
        opening = r.body["messages"][1]["content"]
        keys_of[opening].add(r.api_key)
        cache_keys_of[opening].add(r.body["prompt_cache_key"])
    assert all(len(keys) == 1 for keys in keys_of.values())
    assert Counter(next(iter(k)) for k in keys_of.values()) == {"sk-a1": 2, "sk-a2": 2,
                                                                "sk-b1": 1}
    # The upstream is told the same prompt_cache_key for a conversation, another for each.
    assert all(len(k) == 1 for k in cache_keys_of.values())
    assert len(set().union(*cache_keys_of.values())) == 5
    samples = await metric_samples(router.url)
    assert samples["llm_router_affinity_total{group=g,result=new}"] == 5
    assert samples["llm_router_affinity_total{group=g,result=hit}"] == 15
    assert "llm_router_affinity_total{group=g,result=moved}" not in samples
    cached_metric = total(samples, "llm_router_tokens_total", kind="cached")
    assert cached_metric == cached_seen
    lines = [orjson.loads(r.getMessage()) for r in caplog.records
             if r.name == "llm_router.access"]
    assert Counter(line["affinity"] for line in lines) == {"new": 5, "hit": 15}


async def test_a_streamed_turn_counts_its_cached_tokens(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    router = await start_router(group_config(up))
    conv = Conversation(0)
    await conv.turn(router)
    stream = await router.openai().chat.completions.create(
        model="g", messages=conv.messages, max_tokens=4, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    usage = [c.usage async for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached and cached > 0
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", kind="cached") == cached


def _moves(keys: list[str | None]) -> int:
    return sum(1 for a, b in pairwise(keys) if a != b)


async def test_a_pinned_key_that_cools_down_moves_the_conversation_once(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    # A wide slack: this test is about the pin following a failure, not about weights.
    router = await start_router(group_config(up, {"slack": 100}))
    await warm(router)
    conv = Conversation(0)
    await conv.turn(router)
    (pinned,) = set(keys_per_turn(up, "Plan trip 0."))
    assert pinned is not None
    up.fake.add_fault(Fault(status=429, key=pinned, retry_after="60"))
    raw = await conv.turn(router)
    assert raw.headers["X-Router-Attempts"] == "2"  # the pin first, then another key
    for _ in range(3):
        await conv.turn(router)
    keys = keys_per_turn(up, "Plan trip 0.")
    assert keys[:2] == [pinned, pinned] and len(set(keys[2:])) == 1 and keys[2] != pinned
    assert _moves(keys) == 1
    samples = await metric_samples(router.url)
    assert samples["llm_router_affinity_total{group=g,result=hit}"] == 4


async def test_a_pinned_key_that_leaves_the_config_moves_once_and_re_pins(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    router = await start_router(group_config(up, {"slack": 100}))
    await warm(router)
    conv = Conversation(0)
    await conv.turn(router)
    await conv.turn(router)
    (pinned,) = set(keys_per_turn(up, "Plan trip 0."))
    config = group_config(up, {"slack": 100})
    for provider in config["providers"]:
        provider["api_keys"] = [k for k in provider["api_keys"] if k != pinned]
    config["providers"] = [p for p in config["providers"] if p["api_keys"]]
    config["groups"][0]["models"] = [m for m in config["groups"][0]["models"]
                                     if m["provider"] in {p["name"] for p in config["providers"]}]
    router.config_path.write_text(yaml.safe_dump({**config, "api_key": "sk-test-router"}))
    await router.reload()
    moved = await conv.turn(router)
    for _ in range(3):
        await conv.turn(router)
    keys = keys_per_turn(up, "Plan trip 0.")
    assert keys[:2] == [pinned, pinned] and pinned not in keys[2:]
    assert _moves(keys) == 1
    # The move loses the cache once; the turns after it hit the new key's cache.
    assert moved.parse().usage.prompt_tokens_details.cached_tokens == 0
    samples = await metric_samples(router.url)
    assert samples["llm_router_affinity_total{group=g,result=moved}"] == 1
    assert samples["llm_router_affinity_total{group=g,result=hit}"] == 4


async def test_explicit_keys_beat_the_prefix_hash(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    router = await start_router(group_config(up, {"slack": 100}))
    await warm(router)
    client = router.openai()
    one = [{"role": "user", "content": "first topic"}]
    other = [{"role": "user", "content": "something else entirely"}]
    for messages in (one, other, one, other):
        await client.chat.completions.create(  # type: ignore[call-overload]
            model="g", messages=messages, extra_headers={"X-Router-Session": "s-1"})
    # Four bodies, two different prompts, one session: one key.
    assert len({r.api_key for r in up.fake.requests[-4:]}) == 1
    # The client's own prompt_cache_key is passed on as sent, and it steers too.
    await client.chat.completions.create(  # type: ignore[call-overload]
        model="g", messages=one, extra_body={"prompt_cache_key": "tenant-7"})
    assert up.fake.requests[-1].body is not None
    assert up.fake.requests[-1].body["prompt_cache_key"] == "tenant-7"
    # Anthropic's metadata.user_id is a key too (here through the chat translation).
    anthropic = router.anthropic()
    for text in ("hello", "a different question", "and a third"):
        await anthropic.messages.create(model="g", max_tokens=4, metadata={"user_id": "u-9"},
                                        messages=[{"role": "user", "content": text}])
    assert len({r.api_key for r in up.fake.requests[-3:]}) == 1
    samples = await metric_samples(router.url)
    # warm-up (3 new), s-1 (new, 3 hits), tenant-7 (new), u-9 (new, 2 hits).
    assert samples["llm_router_affinity_total{group=g,result=new}"] == 6
    assert samples["llm_router_affinity_total{group=g,result=hit}"] == 5


async def test_session_mode_ignores_the_prefix_and_off_restores_inverse_weight(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    config = group_config(up, {"mode": "off"})
    config["groups"].append({**config["groups"][0], "name": "s",
                             "affinity": {"mode": "session"}})
    router = await start_router(config)
    client = router.openai()
    hello = [{"role": "user", "content": "hello there"}]
    for _ in range(40):
        await client.chat.completions.create(model="g", messages=hello)  # type: ignore[arg-type]
    # Plain inverse weight: the same prompt 40 times splits 16 / 16 / 8 (±1 for ties),
    # and no prompt_cache_key is invented.
    per_key = Counter(r.api_key for r in up.fake.requests)
    assert abs(per_key["sk-a1"] - 16) <= 1 and abs(per_key["sk-a2"] - 16) <= 1
    assert abs(per_key["sk-b1"] - 8) <= 1
    assert all(r.body is not None and "prompt_cache_key" not in r.body
               for r in up.fake.requests)
    await client.chat.completions.create(model="s", messages=hello)  # type: ignore[arg-type]
    samples = await metric_samples(router.url)
    assert samples["llm_router_affinity_total{group=g,result=off}"] == 40
    assert samples["llm_router_affinity_total{group=s,result=off}"] == 1


async def test_anthropic_upstream_keeps_cache_control_and_counts_cache_reads(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    router = await start_router({
        "providers": [{"name": "an", "type": "anthropic", "base_url": up.root,
                       "api_keys": ["sk-an1", "sk-an2"]}],
        "groups": [{"name": "g", "models": [{"provider": "an", "name": "claude"}]}],
        "pricing": {"claude": PRICE}})
    await _warm_anthropic(router)
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    messages: list[Any] = [{"role": "user", "content": "Plan trip 0."}]
    client = router.anthropic()
    first = await client.messages.create(model="g", max_tokens=4, system=system,
                                         messages=messages)
    messages += [{"role": "assistant", "content": first.content[0].text},  # type: ignore[union-attr]
                 {"role": "user", "content": "And then?"}]
    raw = await client.messages.with_raw_response.create(model="g", max_tokens=4,
                                                         system=system, messages=messages)
    second = await raw.parse()
    sent = up.fake.requests[-2:]
    assert sent[0].api_key == sent[1].api_key  # the second turn went back to the cache
    for r in sent:
        assert r.body is not None and r.body["system"] == system  # cache_control as sent
        assert "prompt_cache_key" not in r.body  # an OpenAI field: not for Anthropic
    cached = second.usage.cache_read_input_tokens
    assert cached and cached > 0
    prompt = second.usage.input_tokens + cached
    cost = ((prompt - cached) * PRICE["input"] + cached * PRICE["cached_input"]
            + second.usage.output_tokens * PRICE["output"]) / 1e6
    assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(cost, rel=1e-12)
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", kind="cached") == cached


async def _warm_anthropic(router: Router) -> None:
    for n in range(2):
        await router.anthropic().messages.create(
            model="g", max_tokens=4, messages=[{"role": "user", "content": f"warm-up {n} "
                                                + SYSTEM}])


async def test_a_responses_chain_stays_on_one_key_by_previous_response_id(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    router = await start_router(group_config(up, {"slack": 100}))
    await warm(router)
    client = router.openai()
    first = await client.responses.create(model="g", instructions=SYSTEM,
                                          input="Plan trip 0.", max_output_tokens=8)
    previous = first.id
    cached = []
    prompts = [first.usage.input_tokens if first.usage else 0]
    for question in ("And then?", "And after that?", "Finally?"):
        # Instructions do not carry over a previous_response_id: clients send them again.
        answer = await client.responses.create(model="g", input=question,
                                               instructions=SYSTEM,
                                               previous_response_id=previous,
                                               max_output_tokens=8)
        assert answer.usage is not None
        cached.append(answer.usage.input_tokens_details.cached_tokens)
        prompts.append(answer.usage.input_tokens)
        previous = answer.id
    assert len({r.api_key for r in up.fake.requests[-4:]}) == 1
    # Each turn finds the whole previous prompt cached: the router renders the kept
    # history the same way every time, so the prefix matches to the token.
    assert cached == prompts[:-1]
    samples = await metric_samples(router.url)
    assert samples["llm_router_affinity_total{group=g,result=hit}"] == 3


async def test_a_session_header_that_is_not_utf8_is_a_key_like_any_other(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await _cached_upstream(make_upstream)
    router = await start_router(group_config(up))
    body = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "hi"}]})
    statuses = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer sk-test-router\r\n"
                     b"Content-Type: application/json\r\nX-Router-Session: \xff\xfeab\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
        await writer.drain()
        statuses.append((await reader.read()).split(b" ", 2)[1])
        writer.close()
        await writer.wait_closed()
    assert statuses == [b"200", b"200"]
    samples = await metric_samples(router.url)
    assert samples["llm_router_affinity_total{group=g,result=new}"] == 1
    assert samples["llm_router_affinity_total{group=g,result=hit}"] == 1
