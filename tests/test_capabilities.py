"""Capability-aware selection end to end (llm_router/gateway/capabilities.py).

The router in front of one FakeUpstream, each member on its own provider with its own
key, so the fake's record of keys says which member was called. Real SDKs: openai for
chat and responses, anthropic for messages.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest

from llm_router.config import ConfigError, parse_config
from llm_router.testing.upstream import Fault

from .capability_inputs import CONTEXT_ERROR, IMAGE, TEXT_IMAGE_CHAT
from .conftest import StartRouter, Upstream
from .helpers import AUTH, metric_samples, openai_provider, total


def _config(up: Upstream, members: list[dict[str, Any]], name: str = "g",
            **group: Any) -> dict[str, Any]:
    """Group ``name`` of the given members, each on its own provider ``<member name>``
    with key ``sk-<member name>``."""
    return {
        "providers": [openai_provider(m["name"], up) for m in members],
        "groups": [{"name": name, **group,
                    "models": [{"provider": m["name"], **m} for m in members]}],
    }


# text: preferred by weight (0) but declares no vision; vision: takes images.
MEMBERS = [
    {"name": "text", "weight": 0, "capabilities": ["tools"], "context_window": 2000},
    {"name": "vision", "weight": 1, "capabilities": ["vision", "tools", "json_schema"],
     "context_window": 100_000},
]


def _called(up: Upstream) -> list[str | None]:
    return up.keys_seen()


async def test_images_go_only_to_vision_members_through_chat_messages_and_responses(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, MEMBERS))
    client = router.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=TEXT_IMAGE_CHAT)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "vision"
    msg = await router.anthropic().messages.with_raw_response.create(
        model="g", max_tokens=50, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}},
            {"type": "text", "text": "what is this?"}]}])
    assert msg.headers["X-Router-Provider"] == "vision"
    assert (await msg.parse()).content
    resp = await client.responses.with_raw_response.create(
        model="g", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": IMAGE}]}])  # type: ignore[list-item]
    assert resp.headers["X-Router-Provider"] == "vision"
    assert _called(upstream) == ["sk-vision"] * 3
    # Without an image the weight-0 text member is preferred, as before.
    plain = await client.chat.completions.with_raw_response.create(
        model="g", messages=[{"role": "user", "content": "hi"}])
    assert plain.headers["X-Router-Provider"] == "text"


async def test_tools_and_json_schema_need_members_that_declare_them(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, MEMBERS))
    client = router.openai()
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=[{"role": "user", "content": "hi"}], tools=[tool])  # type: ignore[list-item]
    assert raw.headers["X-Router-Provider"] == "text"  # both take tools: weight decides
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}})
    assert raw.headers["X-Router-Provider"] == "vision"
    assert _called(upstream) == ["sk-text", "sk-vision"]


async def test_a_long_prompt_skips_a_small_member(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, MEMBERS))
    client = router.openai()
    long = "word " * 2000  # ~10 kB: ~2,500 tokens by the router's estimate, over 2,000
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=[{"role": "user", "content": long}])
    assert raw.headers["X-Router-Provider"] == "vision"
    # max_tokens counts too: a short prompt asking for 5,000 tokens does not fit 2,000.
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    assert raw.headers["X-Router-Provider"] == "vision"
    assert _called(upstream) == ["sk-vision", "sk-vision"]


async def test_no_capable_member_is_a_400_naming_it_with_no_upstream_call(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, [MEMBERS[0]], name="fast"))
    with pytest.raises(openai.BadRequestError) as err:
        await router.openai().chat.completions.create(model="fast", messages=TEXT_IMAGE_CHAT)  # type: ignore[arg-type]
    assert err.value.status_code == 400
    assert "no member of group 'fast' accepts images" in err.value.message
    assert err.value.code == "no_capable_member"
    with pytest.raises(anthropic.BadRequestError) as aerr:
        await router.anthropic().messages.create(
            model="fast", max_tokens=50, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}}]}])
    assert "accepts images" in str(aerr.value)
    assert aerr.value.body["type"] == "error"  # type: ignore[index]  # Anthropic-shaped
    with pytest.raises(openai.BadRequestError) as err:
        await router.openai().chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "x " * 6000}])
    assert err.value.code == "context_length_exceeded"
    assert "largest window is 2,000" in err.value.message
    assert _called(upstream) == []
    samples = await metric_samples(router.url)
    rejected = total(samples, "llm_router_rejections_total", reason="no_capable_member")
    assert rejected == 3


async def test_a_context_length_error_fails_over_and_is_learnt(
        start_router: StartRouter, upstream: Upstream) -> None:
    members = [{"name": "small", "weight": 0}, {"name": "big", "weight": 1}]
    # Affinity off: its pin would follow 'big' after the failover, learnt or not.
    router = await start_router(_config(upstream, members, affinity="off"))
    upstream.fake.add_fault(Fault(status=400, key="sk-small", body=CONTEXT_ERROR, times=None))
    client = router.openai()
    long = [{"role": "user", "content": "word " * 2000}]
    raw = await client.chat.completions.with_raw_response.create(model="g", messages=long)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "big"
    assert raw.headers["X-Router-Attempts"] == "2"
    assert _called(upstream) == ["sk-small", "sk-big"]
    # Learnt: the next prompt as long skips 'small' without trying it.
    raw = await client.chat.completions.with_raw_response.create(model="g", messages=long)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "big"
    assert raw.headers["X-Router-Attempts"] == "1"
    assert _called(upstream)[2:] == ["sk-big"]
    # Not cooled down: the key is healthy, and a short prompt still goes to 'small'.
    upstream.fake.clear_faults()
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["X-Router-Provider"] == "small"


async def test_a_context_error_with_no_larger_member_is_the_upstreams_400(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, [{"name": "small"}]))
    upstream.fake.add_fault(Fault(status=400, key="sk-small", body=CONTEXT_ERROR))
    with pytest.raises(openai.BadRequestError) as err:
        await router.openai().chat.completions.create(
            model="g", messages=[{"role": "user", "content": "word " * 2000}])
    assert err.value.code == "context_length_exceeded"
    assert _called(upstream) == ["sk-small"]


async def test_weights_hold_among_the_capable_members(
        start_router: StartRouter, upstream: Upstream) -> None:
    # 'text' and 'v0' are both weight 0 (always preferred): without the filter they
    # would share the requests; with it, 'v0' takes every image and 'v1' none. Affinity
    # off: it would keep the repeated prompt on its first pick either way.
    members = [{"name": "text", "weight": 0, "capabilities": []},
               {"name": "v0", "weight": 0, "capabilities": ["vision"]},
               {"name": "v1", "weight": 1, "capabilities": ["vision"]}]
    router = await start_router(_config(upstream, members, affinity="off"))
    client = router.openai()
    for _ in range(6):
        await client.chat.completions.create(model="g", messages=TEXT_IMAGE_CHAT)  # type: ignore[arg-type]
    assert _called(upstream) == ["sk-v0"] * 6


async def test_the_access_log_says_what_the_filter_did(
        start_router: StartRouter, upstream: Upstream, caplog: pytest.LogCaptureFixture,
        http: Any) -> None:
    router = await start_router(_config(upstream, MEMBERS))
    caplog.set_level("INFO", logger="llm_router.access")
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": TEXT_IMAGE_CHAT}) as resp:
        assert resp.status == 200
    lines = [orjson.loads(r.getMessage()) for r in caplog.records
             if r.name == "llm_router.access"]
    assert lines[-1]["capability"]["needs"] == ["vision"]
    assert lines[-1]["capability"]["kept"] == 1
    assert lines[-1]["capability"]["of"] == 2


def test_an_unknown_capability_is_a_config_error() -> None:
    text = """
providers: [{name: p, type: openai, base_url: "http://127.0.0.1:1/v1", api_keys: [k]}]
groups: [{name: g, models: [{provider: p, name: m, capabilities: [visoin]}]}]
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, env={})
    assert "did you mean 'vision'" in str(err.value)


async def test_the_status_json_shows_capabilities_and_the_window_learnt(
        start_router: StartRouter, upstream: Upstream, http: Any) -> None:
    members = [{"name": "small", "weight": 0, "context_window": 4000},
               {"name": "big", "capabilities": ["vision"]}]
    router = await start_router(_config(upstream, members, affinity="off"))
    upstream.fake.add_fault(Fault(status=400, key="sk-small", body=CONTEXT_ERROR))
    await router.openai().chat.completions.create(
        model="g", messages=[{"role": "user", "content": "word " * 2000}])
    async with http.get(router.url + "/admin/status", headers=AUTH) as resp:
        assert resp.status == 200
        doc = orjson.loads(await resp.read())
    group = next(g for g in doc["groups"] if g["name"] == "g")
    shown = {m["provider"]: (m["capabilities"], m["context_window"]) for m in group["members"]}
    assert shown["big"] == (["vision"], None)
    caps, window = shown["small"]
    assert caps is None and window is not None and window < 4000  # learnt below declared
