"""Windows and capabilities from discovery, the floor and lapse of learnt bounds, and the
images of a stored Responses conversation (gateway/capabilities.py, catalog.py).

The fake upstream lists its models as vLLM, OpenRouter and Anthropic write them on the
wire (llm_router/testing/model_lists.py); the router discovers them and routes by what
they say. Each member is on its own provider with key ``sk-<name>``, so the fake's
record of keys says which member was called.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest

from llm_router.testing.model_lists import FakeModel
from llm_router.testing.upstream import Fault

from .capability_inputs import CONTEXT_ERROR, IMAGE, TEXT_IMAGE_CHAT
from .conftest import StartRouter, Upstream
from .helpers import (
    AUTH,
    RELOAD_OK,
    ROUTER_KEY,
    eventually,
    metric_samples,
    openai_provider,
    save_by_rename,
)

LONG = [{"role": "user", "content": "word " * 2000}]  # ~2,500 tokens by the estimate
HI = [{"role": "user", "content": "hi"}]


def _called(up: Upstream) -> list[str | None]:
    """The keys of the model calls the fake received (not its model listings)."""
    return [r.api_key for r in up.fake.requests if r.path != "/v1/models"]


def _discovering(up: Upstream, members: list[dict[str, Any]], **group: Any
                 ) -> dict[str, Any]:
    """Group 'g' of ``members``, each on its own discovering provider named after it."""
    return {"api_key": ROUTER_KEY,
            "providers": [openai_provider(m["name"], up, discover=True) for m in members],
            "groups": [{"name": "g", "affinity": "off", **group,
                        "models": [{"provider": m["name"], **m} for m in members]}]}


async def _status(router: Any, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(router.url + "/admin/status", headers=AUTH) as resp:
        assert resp.status == 200
        return orjson.loads(await resp.read())  # type: ignore[no-any-return]


async def _members(router: Any, http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    doc = await _status(router, http)
    return {m["provider"]: m for g in doc["groups"] if g["name"] == "g" for m in g["members"]}


async def _listed(router: Any, http: aiohttp.ClientSession, *names: str) -> None:
    async def done() -> bool:
        catalogs = {p["name"]: p["catalog"] for p in (await _status(router, http))["providers"]}
        return all(catalogs[n] and catalogs[n]["described"] for n in names)
    await eventually(done)


async def _provider(client: openai.AsyncOpenAI, messages: Any, **extra: Any) -> str:
    raw = await client.chat.completions.with_raw_response.create(
        model="g", messages=messages, **extra)
    return raw.headers["X-Router-Provider"]


async def test_a_window_vllm_reports_makes_a_long_prompt_skip_the_member(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.fake.models_wire = "vllm"
    upstream.fake.listed_models = (FakeModel("small", context_length=2048),
                                   FakeModel("big", context_length=32768))
    router = await start_router(_discovering(upstream, [
        {"name": "small", "weight": 0}, {"name": "big", "weight": 1}]))
    await _listed(router, http, "small", "big")
    client = router.openai()
    assert await _provider(client, LONG) == "big"
    assert await _provider(client, HI) == "small"  # weight decides when both fit
    assert _called(upstream) == ["sk-big", "sk-small"]
    members = await _members(router, http)
    assert (members["small"]["context_window"], members["small"]["context_window_from"]) \
        == (2048, "discovered")
    assert members["small"]["capabilities"] is None  # vLLM does not say: anything


async def test_the_members_own_declaration_wins_over_discovery(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.fake.models_wire = "vllm"
    upstream.fake.listed_models = (FakeModel("small", context_length=2048),)
    router = await start_router(_discovering(upstream, [
        {"name": "small", "weight": 0, "context_window": 100_000}, {"name": "big"}]))
    await _listed(router, http, "small")
    assert await _provider(router.openai(), LONG) == "small"
    members = await _members(router, http)
    assert (members["small"]["context_window"], members["small"]["context_window_from"]) \
        == (100_000, "declared")


async def test_openrouters_modalities_and_parameters_keep_images_and_tools_off_a_text_model(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.fake.models_wire = "openrouter"
    upstream.fake.listed_models = (
        FakeModel("text", input_modalities=("text",),
                  supported_parameters=("max_tokens", "temperature")),
        FakeModel("seeing", input_modalities=("text", "image", "file")))
    router = await start_router(_discovering(upstream, [
        {"name": "text", "weight": 0}, {"name": "seeing", "weight": 1}]))
    await _listed(router, http, "text", "seeing")
    client = router.openai()
    assert await _provider(client, TEXT_IMAGE_CHAT) == "seeing"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert await _provider(client, HI, tools=[tool]) == "seeing"
    assert await _provider(client, HI, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}) \
        == "seeing"
    assert await _provider(client, HI) == "text"
    assert _called(upstream) == ["sk-seeing"] * 3 + ["sk-text"]
    members = await _members(router, http)
    assert members["text"]["capabilities"] == []
    assert members["text"]["capabilities_from"] == "discovered"
    assert members["seeing"]["capabilities"] == ["json_schema", "tools", "vision"]
    assert members["seeing"]["context_window"] == 128_000
    # With only the text member left, an image is the client's 400, no upstream called.
    asked = len(_called(upstream))
    save_by_rename(router.config_path, _discovering(upstream, [{"name": "text"}]))
    await eventually(lambda: _reloaded(http, router.url))
    await _listed(router, http, "text")
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="g", messages=TEXT_IMAGE_CHAT)  # type: ignore[arg-type]
    assert "accepts images" in err.value.message and err.value.code == "no_capable_member"
    assert len(_called(upstream)) == asked


async def _reloaded(http: aiohttp.ClientSession, url: str) -> bool:
    return (await metric_samples(url)).get(RELOAD_OK) == 1


async def test_anthropics_and_geminis_lists_give_windows_and_capabilities(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router({
        "providers": [
            {"name": "an", "type": "anthropic", "base_url": upstream.root,
             "api_keys": ["sk-an"], "discover": True},
            {"name": "gem", "type": "gemini", "base_url": upstream.root,
             "api_keys": ["gk-1"], "discover": True}],
        "groups": [{"name": "g", "models": [
            {"provider": "an", "name": "claude-sonnet-4-5"},
            {"provider": "gem", "name": "gemini-2.5-flash", "capabilities": ["tools"]}]}]})
    await _listed(router, http, "an", "gem")
    members = await _members(router, http)
    claude, gemini = members["an"], members["gem"]
    assert (claude["context_window"], claude["context_window_from"]) == (200_000, "discovered")
    assert claude["capabilities"] == ["json_schema", "tools", "vision"]
    assert (gemini["context_window"], gemini["context_window_from"]) == (1_048_576,
                                                                         "discovered")
    assert (gemini["capabilities"], gemini["capabilities_from"]) == (["tools"], "declared")
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=TEXT_IMAGE_CHAT)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "an"


async def test_a_context_error_on_a_short_request_fails_over_but_is_not_learnt(
        start_router: StartRouter, upstream: Upstream) -> None:
    members = [{"name": "small", "weight": 0}, {"name": "big", "weight": 1}]
    router = await start_router({
        "providers": [openai_provider(m["name"], upstream) for m in members],
        "groups": [{"name": "g", "affinity": "off",
                    "models": [{"provider": m["name"], **m} for m in members]}]})
    # A misleading "maximum context length" answer to a 'hi': below the floor.
    upstream.fake.add_fault(Fault(status=400, key="sk-small", body=CONTEXT_ERROR, times=2))
    client = router.openai()
    raw = await client.chat.completions.with_raw_response.create(model="g", messages=HI)  # type: ignore[arg-type]
    assert (raw.headers["X-Router-Provider"], raw.headers["X-Router-Attempts"]) == ("big", "2")
    # Not learnt: the next short request tries 'small' again.
    raw = await client.chat.completions.with_raw_response.create(model="g", messages=HI)  # type: ignore[arg-type]
    assert (raw.headers["X-Router-Provider"], raw.headers["X-Router-Attempts"]) == ("big", "2")
    assert _called(upstream) == ["sk-small", "sk-big"] * 2
    assert not router.state.context_bounds.too_long


async def test_no_bound_below_half_the_known_window_and_a_reload_forgets_bounds(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    members: list[dict[str, Any]] = [
        {"name": "small", "weight": 0, "context_window": 4000}, {"name": "big", "weight": 1}]
    config = {"api_key": ROUTER_KEY,
              "providers": [openai_provider(m["name"], upstream) for m in members],
              "groups": [{"name": "g", "affinity": "off",
                          "models": [{"provider": m["name"], **m} for m in members]}]}
    router = await start_router(config)
    upstream.fake.add_fault(Fault(status=400, key="sk-small", body=CONTEXT_ERROR, times=None))
    client = router.openai()
    short = [{"role": "user", "content": "word " * 1000}]  # ~1,250 tokens: under 4,000 / 2
    assert await _provider(client, short) == "big"
    assert not router.state.context_bounds.too_long
    assert await _provider(client, LONG) == "big"  # ~2,500: within reason, learnt
    assert (await _members(router, http))["small"]["context_window_from"] == "learnt"
    upstream.fake.clear_faults()
    assert await _provider(client, LONG) == "big"  # skips 'small' without trying it
    assert _called(upstream) == ["sk-small", "sk-big", "sk-small", "sk-big", "sk-big"]
    config["groups"][0]["models"][0]["context_window"] = 4500
    save_by_rename(router.config_path, config)
    await eventually(lambda: _reloaded(http, router.url))
    assert await _provider(client, LONG) == "small"  # the reload forgot the bound
    assert (await _members(router, http))["small"]["context_window"] == 4500


async def test_an_image_in_the_stored_conversation_still_needs_a_vision_member(
        start_router: StartRouter, upstream: Upstream) -> None:
    members = [{"name": "text", "weight": 0, "capabilities": ["tools"]},
               {"name": "vision", "weight": 1, "capabilities": ["vision", "tools"]}]
    router = await start_router({
        "providers": [openai_provider(m["name"], upstream) for m in members],
        "groups": [{"name": "g", "affinity": "off",
                    "models": [{"provider": m["name"], **m} for m in members]}]})
    client = router.openai()
    first = await client.responses.with_raw_response.create(
        model="g", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": IMAGE}]}])  # type: ignore[list-item]
    assert first.headers["X-Router-Provider"] == "vision"
    follow = await client.responses.with_raw_response.create(
        model="g", input="and what colour is it?", previous_response_id=first.parse().id)
    assert follow.headers["X-Router-Provider"] == "vision"
    # The image went upstream again, in the history sent with the follow-up.
    assert b"input_image" in orjson.dumps(upstream.fake.requests[-1].body) or \
        b"image_url" in orjson.dumps(upstream.fake.requests[-1].body)
    # A new conversation without images goes to the preferred text member.
    plain = await client.responses.with_raw_response.create(model="g", input="hello")
    assert plain.headers["X-Router-Provider"] == "text"


def test_a_list_entry_says_only_what_it_says() -> None:
    from llm_router.providers.listing import listed_models

    doc = {"data": [
        {"id": "plain", "object": "model"},
        {"id": "odd", "max_model_len": True, "context_length": -5},
        {"id": "half", "context_length": 4096, "architecture": {"input_modalities": ["image"]}},
        {"id": "routed", "top_provider": {"context_length": 8192},
         "architecture": {"input_modalities": ["text", "audio"]},
         "supported_parameters": ["response_format"]},
        {"id": "claude", "max_input_tokens": 200000,
         "capabilities": {"image_input": {"supported": False}}},
        {"object": "model"}, "junk"]}
    models = {m.id: m for m in listed_models(doc) or []}
    assert set(models) == {"plain", "odd", "half", "routed", "claude"}
    assert models["plain"].context_window is None and models["plain"].capabilities is None
    assert models["odd"].context_window is None  # a bool or a negative is no window
    # Modalities without the parameter list: tools unknown, so nothing is claimed.
    assert (models["half"].context_window, models["half"].capabilities) == (4096, None)
    assert models["routed"] == ("routed", 8192, frozenset({"audio", "json_schema"}))
    assert models["claude"].capabilities == frozenset({"tools"})
    assert listed_models({"models": []}) is None
