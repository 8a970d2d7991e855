"""Anthropic both ways, end to end over real sockets.

Inbound: the real ``anthropic`` SDK → ``/v1/messages`` → an OpenAI-compatible fake
upstream (translated) or an Anthropic-type provider (passed through natively).
Outbound: the real ``openai`` SDK → ``/v1/chat/completions`` → an Anthropic-type
provider (translated). Usage, cost, metrics and errors are checked in each direction,
and so is the exact upstream request the fake received.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from llm_router.config import ConfigError, parse_config
from llm_router.dialects import anthropic as anthropic_in
from llm_router.testing.upstream import Fault, count_prompt_tokens

from .conftest import MakeUpstream, StartRouter, Upstream
from .helpers import HELLO, ROUTER_KEY, metric_samples, openai_provider, total

PRICE = {"input": 3.0, "output": 15.0}  # USD per 1M tokens
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                     "required": ["location"]},
}
OPENAI_WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather for a city",
                 "parameters": WEATHER_TOOL["input_schema"]},
}
def via_openai(up: Upstream) -> dict[str, Any]:
    """Group ``g`` served by an OpenAI-compatible upstream (type openai)."""
    return {
        "providers": [openai_provider("oa", up)],
        "groups": [{"name": "g", "models": [{"provider": "oa", "name": "gpt-up"}]}],
        "pricing": {"gpt-up": PRICE},
    }


def via_anthropic(up: Upstream, **extra: Any) -> dict[str, Any]:
    """Group ``g`` served by an Anthropic-type provider at the fake's root."""
    return {
        "providers": [{"name": "an", "type": "anthropic", "base_url": up.root,
                       "api_keys": ["sk-ant-up"], **extra}],
        "groups": [{"name": "g", "models": [{"provider": "an", "name": "claude-up"}]}],
        "pricing": {"claude-up": PRICE},
    }


def sdk_version(client: anthropic.AsyncAnthropic) -> str:
    """The ``anthropic-version`` header this SDK sends."""
    return str(client.default_headers["anthropic-version"])


def cost(prompt: int, completion: int) -> float:
    return (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6


# ------------------------------------------------- anthropic SDK → OpenAI upstream


async def test_anthropic_sdk_message_from_openai_upstream(start_router: StartRouter,
                                                          upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    raw = await router.anthropic().messages.with_raw_response.create(
        model="g", max_tokens=5, system="Be terse.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "first part"},
                                               {"type": "text", "text": "second part"}]}])
    msg = await raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "g"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "lorem ipsum dolor sit amet"  # type: ignore[union-attr]
    assert msg.stop_reason == "max_tokens"
    (seen,) = upstream.fake.requests
    assert seen.path == "/v1/chat/completions" and seen.api_key == "sk-oa"
    # The router adds a prompt_cache_key for OpenAI upstreams (docs/affinity.md).
    assert seen.body is not None and seen.body.pop("prompt_cache_key").startswith("llmr-")
    assert seen.body == {"model": "gpt-up", "max_tokens": 5, "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "first part\nsecond part"}]}
    prompt = count_prompt_tokens(seen.body)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (prompt, 5)
    assert raw.headers["X-Router-Provider"] == "oa"
    assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(cost(prompt, 5))
    assert sum(router.state.counters.tokens.values()) == prompt + 5
    s = await metric_samples(router.url)
    assert total(s, "llm_router_tokens_total", provider="oa", kind="prompt") == prompt
    assert total(s, "llm_router_tokens_total", provider="oa", kind="completion") == 5
    assert total(s, "llm_router_cost_usd_total", provider="oa") == pytest.approx(cost(prompt, 5))
    assert total(s, "llm_router_requests_total", route="/v1/messages", status="200") == 1


async def test_anthropic_sdk_stream_from_openai_upstream(start_router: StartRouter,
                                                         upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    client = router.anthropic()
    async with client.messages.stream(model="g", max_tokens=4, system="Be terse.",
                                      messages=HELLO) as stream:  # type: ignore[arg-type]
        events = [e.type async for e in stream]
        final = await stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop",
            "message_delta"} <= set(events)
    assert final.content[0].text == "lorem ipsum dolor sit"  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens"
    (seen,) = upstream.fake.requests
    assert seen.body is not None and seen.stream
    assert seen.body["stream_options"] == {"include_usage": True}
    assert seen.body["messages"][0] == {"role": "system", "content": "Be terse."}
    prompt = count_prompt_tokens(seen.body)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, 4)
    assert sum(router.state.counters.tokens.values()) == prompt + 4
    s = await metric_samples(router.url)
    assert total(s, "llm_router_tokens_total", kind="prompt") == prompt
    assert total(s, "llm_router_tokens_total", kind="completion") == 4
    assert total(s, "llm_router_cost_usd_total") == pytest.approx(cost(prompt, 4))


@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
async def test_cache_reads_of_an_openai_upstream_reach_anthropic_clients_apart(
        start_router: StartRouter, make_upstream: MakeUpstream, stream: bool) -> None:
    """OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic reports
    them as ``cache_read_input_tokens`` beside ``input_tokens``. The second identical
    request hits the fake's prompt cache, and the client sees Anthropic's split: the two
    add up to the prompt, as they do on Anthropic's own API."""
    up = await make_upstream(prompt_cache_ttl_s=600)
    router = await start_router(via_openai(up))
    client = router.anthropic()
    system = "You answer questions about trains, briefly and exactly. " * 40

    async def ask() -> Any:
        if not stream:
            return await client.messages.create(model="g", max_tokens=4, system=system,
                                                messages=HELLO)  # type: ignore[arg-type]
        async with client.messages.stream(model="g", max_tokens=4, system=system,
                                          messages=HELLO) as s:  # type: ignore[arg-type]
            return await s.get_final_message()

    first = await ask()
    assert first.usage.cache_read_input_tokens in (None, 0)
    second = await ask()
    prompt = count_prompt_tokens(up.fake.requests[-1].body)
    cached = second.usage.cache_read_input_tokens
    assert cached and 0 < cached <= prompt
    assert second.usage.input_tokens + cached == prompt
    assert first.usage.input_tokens == prompt


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_sdk_tool_use_round_trip_via_openai_upstream(
        start_router: StartRouter, upstream: Upstream, stream: bool) -> None:
    router = await start_router(via_openai(upstream))
    client = router.anthropic()
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    async def create(messages: list[Any]) -> anthropic.types.Message:
        if not stream:
            return await client.messages.create(model="g", max_tokens=50, messages=messages,
                                                tools=[WEATHER_TOOL])  # type: ignore[list-item]
        async with client.messages.stream(model="g", max_tokens=50, messages=messages,
                                          tools=[WEATHER_TOOL]) as s:  # type: ignore[list-item]
            return await s.get_final_message()

    first = await create(ask)
    assert first.stop_reason == "tool_use"
    (call,) = first.content
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"location": "Paris"} and call.id
    up_tools = upstream.fake.requests[0].body["tools"]  # type: ignore[index]
    assert up_tools == [OPENAI_WEATHER_TOOL]

    second = await create([
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "18 C and sunny"}]},
    ])
    # The fake answers a tool result in text, as long as max_tokens allows.
    assert second.stop_reason == "max_tokens" and second.content[0].type == "text"
    sent = upstream.fake.requests[1].body
    assert sent is not None
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
    assert orjson.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {
        "location": "Paris"}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id,
                                   "content": "18 C and sunny"}


async def test_anthropic_image_block_reaches_openai_upstream_as_data_url(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    await router.anthropic().messages.create(model="g", max_tokens=3, messages=[{
        "role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}},
            {"type": "text", "text": "what is this?"}]}])
    (seen,) = upstream.fake.requests
    assert seen.body is not None
    assert seen.body["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "text", "text": "what is this?"}]}]


# ------------------------------------------------- anthropic SDK → Anthropic upstream


async def test_anthropic_sdk_passthrough_to_anthropic_provider(start_router: StartRouter,
                                                               upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream, anthropic_version="2023-01-01",
                                              headers={"anthropic-beta": "tools-2024"}))
    client = router.anthropic()
    content = [{"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
               {"type": "text", "text": "two"}]
    msg = await client.messages.create(model="g", max_tokens=3, system="sys",
                                       messages=[{"role": "user", "content": content}],
                                       extra_body={"top_k": 5})
    assert msg.content[0].text == "lorem ipsum dolor"  # type: ignore[union-attr]
    assert msg.model == "claude-up"  # passthrough: the upstream's answer, untouched
    (seen,) = upstream.fake.requests
    assert seen.path == "/v1/messages" and seen.api_key == "sk-ant-up"
    assert seen.headers["x-api-key"] == "sk-ant-up"
    assert seen.headers["anthropic-version"] == sdk_version(client)  # the client's own
    assert seen.headers["anthropic-beta"] == "tools-2024"
    assert "Authorization" not in seen.headers and ROUTER_KEY not in str(dict(seen.headers))
    # Native: the body goes through as the client sent it, but for the model.
    assert seen.body == {"model": "claude-up", "max_tokens": 3, "system": "sys", "top_k": 5,
                         "messages": [{"role": "user", "content": content}]}
    prompt = count_prompt_tokens(seen.body)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (prompt, 3)
    assert sum(router.state.counters.tokens.values()) == prompt + 3

    async with client.messages.stream(model="g", max_tokens=50, messages=HELLO,  # type: ignore[arg-type]
                                      tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"location": "Paris"}  # type: ignore[union-attr]
    streamed = upstream.fake.requests[1]
    assert streamed.path == "/v1/messages" and streamed.stream
    assert streamed.body is not None and "stream_options" not in streamed.body
    assert streamed.headers["anthropic-version"] == sdk_version(client)
    s = await metric_samples(router.url)
    prompt2 = count_prompt_tokens(streamed.body)
    assert total(s, "llm_router_tokens_total", provider="an", kind="prompt") == prompt + prompt2
    assert total(s, "llm_router_tokens_total", provider="an", kind="completion") == 3 + 8
    assert total(s, "llm_router_cost_usd_total", provider="an") == pytest.approx(
        cost(prompt + prompt2, 11))


# ------------------------------------------------- openai SDK → Anthropic upstream


async def test_openai_sdk_chat_from_anthropic_provider(start_router: StartRouter,
                                                       upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream, max_tokens_default=7))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", temperature=1.5, stop=["END"], messages=[  # type: ignore[arg-type]
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b"}]}])
    resp = raw.parse()
    assert resp.object == "chat.completion" and resp.model == "g"
    assert resp.choices[0].message.content == "lorem ipsum dolor sit amet consectetur adipiscing"
    assert resp.choices[0].finish_reason == "length"  # max_tokens_default was the limit
    (seen,) = upstream.fake.requests
    assert seen.path == "/v1/messages" and seen.api_key == "sk-ant-up"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen.headers
    assert seen.body == {"model": "claude-up", "max_tokens": 7, "system": "Be terse.",
                         "temperature": 1.0, "stop_sequences": ["END"], "messages": [
                             {"role": "user", "content": [{"type": "text", "text": "a"},
                                                          {"type": "text", "text": "b"}]}]}
    prompt = count_prompt_tokens(seen.body)
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt, 7)
    assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(cost(prompt, 7))
    s = await metric_samples(router.url)
    assert total(s, "llm_router_tokens_total", provider="an", kind="prompt") == prompt
    assert total(s, "llm_router_tokens_total", provider="an", kind="completion") == 7
    assert total(s, "llm_router_cost_usd_total", provider="an") == pytest.approx(cost(prompt, 7))


async def test_openai_sdk_stream_from_anthropic_provider(start_router: StartRouter,
                                                         upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    client = router.openai()
    chunks = [c async for c in await client.chat.completions.create(
        model="g", messages=HELLO, stream=True, max_tokens=4)]  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "lorem ipsum dolor sit"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)  # not asked for
    seen = upstream.fake.requests[0]
    assert seen.path == "/v1/messages" and seen.stream and seen.body is not None
    assert "stream_options" not in seen.body and seen.body["max_tokens"] == 4
    prompt = count_prompt_tokens(seen.body)
    assert sum(router.state.counters.tokens.values()) == prompt + 4  # counted anyway

    asked = [c async for c in await client.chat.completions.create(
        model="g", messages=HELLO, stream=True, max_tokens=2,  # type: ignore[arg-type]
        stream_options={"include_usage": True})]
    usage = asked[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (prompt, 2)
    s = await metric_samples(router.url)
    assert total(s, "llm_router_tokens_total", kind="prompt") == 2 * prompt
    assert total(s, "llm_router_tokens_total", kind="completion") == 6
    assert total(s, "llm_router_cost_usd_total") == pytest.approx(cost(2 * prompt, 6))
    assert total(s, "llm_router_time_to_first_token_seconds_count", provider="an") == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_tool_calls_from_anthropic_provider(
        start_router: StartRouter, upstream: Upstream, stream: bool) -> None:
    router = await start_router(via_anthropic(upstream))
    client = router.openai()
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    async def create(messages: list[Any]) -> tuple[str, str | None, list[dict[str, Any]]]:
        """(finish_reason, text, tool calls as dicts)"""
        if not stream:
            r = await client.chat.completions.create(model="g", messages=messages, max_tokens=20,
                                                     tools=[OPENAI_WEATHER_TOOL])  # type: ignore[list-item]
            m = r.choices[0].message
            calls = [c.model_dump() for c in m.tool_calls or []]
            return r.choices[0].finish_reason, m.content, calls
        text, reason, calls = "", "", {}  # type: ignore[var-annotated]
        async for c in await client.chat.completions.create(
                model="g", messages=messages, tools=[OPENAI_WEATHER_TOOL],  # type: ignore[list-item]
                stream=True, max_tokens=20):
            d = c.choices[0].delta
            text += d.content or ""
            for tc in d.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "type": "function",
                                                    "function": {"name": "", "arguments": ""}})
                entry["id"] = tc.id or entry["id"]
                if tc.function is not None:
                    entry["function"]["name"] += tc.function.name or ""
                    entry["function"]["arguments"] += tc.function.arguments or ""
            reason = c.choices[0].finish_reason or reason
        return reason, text or None, list(calls.values())

    reason, text, calls = await create(ask)
    assert reason == "tool_calls" and not text
    (call,) = calls
    assert call["function"]["name"] == "get_weather" and call["id"]
    assert orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}
    first = upstream.fake.requests[0].body
    assert first is not None and first["tools"] == [WEATHER_TOOL]

    reason, text, calls = await create([
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"},
    ])
    assert reason == "length" and text and not calls  # the fake fills max_tokens
    sent = upstream.fake.requests[1].body
    assert sent is not None and sent["max_tokens"] == 20
    assert sent["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": call["id"], "name": "get_weather",
         "input": {"location": "Paris"}}]}
    assert sent["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call["id"], "content": "18 C and sunny"}]}


# ------------------------------------------------- count_tokens


async def test_count_tokens_asks_an_anthropic_upstream(start_router: StartRouter,
                                                       upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    body: Any = {"model": "g", "system": "Be terse.", "messages": HELLO}
    counted = await router.anthropic().messages.count_tokens(**body)
    (seen,) = upstream.fake.requests
    assert seen.path == "/v1/messages/count_tokens" and seen.api_key == "sk-ant-up"
    assert seen.headers["anthropic-version"] == sdk_version(router.anthropic())
    assert seen.body == {**body, "model": "claude-up"}
    assert counted.input_tokens == count_prompt_tokens(body)
    assert sum(router.state.counters.tokens.values()) == 0  # counting is not serving


async def test_count_tokens_estimates_for_an_openai_upstream(start_router: StartRouter,
                                                             upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    body: Any = {"model": "g", "system": "Be terse.", "tools": [WEATHER_TOOL],
                 "messages": [{"role": "user", "content": "x" * 400}]}
    raw = await router.anthropic().messages.with_raw_response.count_tokens(**body)
    counted = await raw.parse()
    assert counted.input_tokens == anthropic_in.estimate_input_tokens(body)
    assert counted.input_tokens > 100
    assert raw.headers["X-Router-Count"] == "estimate"
    assert upstream.fake.requests == []


async def test_count_tokens_estimates_when_the_anthropic_upstream_fails(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    upstream.fake.add_fault(Fault(status=500, times=None))
    body: Any = {"model": "g", "messages": HELLO}
    raw = await router.anthropic().messages.with_raw_response.count_tokens(**body)
    assert (await raw.parse()).input_tokens == anthropic_in.estimate_input_tokens(body)
    assert raw.headers["X-Router-Count"] == "estimate"
    assert len(upstream.fake.requests) >= 1  # it did ask first
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total") >= 1
    # A caller's own mistake is still an error, not an estimate.
    with pytest.raises(anthropic.NotFoundError):
        await router.anthropic().messages.count_tokens(model="nope", messages=HELLO)  # type: ignore[arg-type]


# ------------------------------------------------- errors in the caller's shape


async def test_messages_errors_are_anthropic_shaped(start_router: StartRouter,
                                                    upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    with pytest.raises(anthropic.AuthenticationError) as auth:
        await router.anthropic(key="wrong").messages.create(model="g", max_tokens=3,
                                                            messages=HELLO)  # type: ignore[arg-type]
    assert auth.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": auth.value.body["error"]["message"]}}  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await router.anthropic().messages.create(model="nope", max_tokens=3,
                                                 messages=HELLO)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    async with aiohttp.ClientSession() as http, http.post(
            router.url + "/v1/messages", data=b"{not json",
            headers={"x-api-key": ROUTER_KEY, "anthropic-version": "2023-06-01",
                     "Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        doc = await resp.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert "JSON" in doc["error"]["message"]
    assert upstream.fake.requests == []


# (route, body, the field the 400 must name): issue 23's cases first, then neighbours.
WRONGLY_TYPED = [
    pytest.param("/v1/messages", {"messages": [{"role": "user", "content": 1.5}]},
                 "messages[0].content", id="content-number"),
    pytest.param("/v1/messages", {"system": [{"type": "text", "text": 1}], "messages": HELLO},
                 "system[0].text", id="system-block-text-number"),
    pytest.param("/v1/messages/count_tokens", {"messages": 1.5}, "messages",
                 id="count-tokens-messages-number"),
    pytest.param("/v1/messages", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": {"nested": "object"}}]}]},
                 "messages[0].content[0].text", id="text-block-object"),
    pytest.param("/v1/messages", {"max_tokens": "five", "messages": HELLO}, "max_tokens",
                 id="max-tokens-string"),
    pytest.param("/v1/messages/count_tokens", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text",
                                                                 "text": ["x"]}]}]}]},
                 "messages[0].content[0].content[0].text", id="tool-result-text-list"),
    pytest.param("/v1/messages", {"messages": [{"role": ["user"], "content": "hi"}]},
                 "messages[0].role", id="role-list"),
    pytest.param("/v1/messages", {"messages": HELLO, "tools": [{"name": "f",
                                                                "input_schema": "{}"}]},
                 "tools[0].input_schema", id="tool-schema-string"),
    pytest.param("/v1/messages", {"messages": HELLO, "tool_choice": {"type": {}}},
                 "tool_choice.type", id="tool-choice-type-object"),
    pytest.param("/v1/messages", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "data": 5}}]}]},
                 "messages[0].content[0].source.media_type", id="image-source-fields"),
    # After turns and blocks that pass in one step each: the index is still the right one.
    pytest.param("/v1/messages", {"messages": [*HELLO, {"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": 1}]}]},
                 "messages[1].content[1].text", id="second-block-after-a-good-one"),
    pytest.param("/v1/messages", {"messages": [*HELLO, {"role": "robot", "content": "x"}]},
                 "messages[1].role", id="unknown-role-with-text"),
]


@pytest.mark.parametrize(("route", "body", "field"), WRONGLY_TYPED)
async def test_wrongly_typed_fields_are_a_400_naming_the_field(
        route: str, body: dict[str, Any], field: str, start_router: StartRouter,
        upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(via_openai(upstream))
    body = {"model": "g", "max_tokens": 8, **body} if route == "/v1/messages" \
        else {"model": "g", **body}
    async with aiohttp.ClientSession() as http, http.post(
            router.url + route, json=body,
            headers={"x-api-key": ROUTER_KEY, "anthropic-version": "2023-06-01"}) as resp:
        assert resp.status == 400
        doc = await resp.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert doc["error"]["message"].startswith(f"'{field}' ")
    assert upstream.fake.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Chat bodies the Anthropic translator reads: (messages, the field the 400 names).
CHAT_WRONGLY_TYPED = [
    pytest.param([{"role": "assistant", "content": None, "tool_calls": [["not", "a call"]]}],
                 "messages[0].tool_calls[0]", id="tool-call-list"),
    pytest.param([{"role": "user", "content": [{"type": "text", "text": 1.5}]}],
                 "messages[0].content[0].text", id="text-part-number"),
    pytest.param([{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}],
                 "messages[0].tool_calls[0].function.arguments", id="arguments-object"),
    pytest.param([{"role": "user", "content": 7}], "messages[0].content", id="content-number"),
    pytest.param([{"role": "user", "content": [{"type": "text", "text": "a"}] * 2 + [
        {"type": "text", "text": None}, {"type": "text", "text": 5}]}],
                 "messages[0].content[3].text", id="fourth-part-after-good-ones"),
    pytest.param([{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": 2, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
                 "messages[0].tool_calls[1].id", id="second-call-id-number"),
]


@pytest.mark.parametrize(("messages", "field"), CHAT_WRONGLY_TYPED)
async def test_wrongly_typed_chat_fields_for_an_anthropic_member_are_a_400(
        messages: Any, field: str, start_router: StartRouter, upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(via_anthropic(upstream))
    with pytest.raises(openai.BadRequestError) as info:
        await router.openai().chat.completions.create(model="g", messages=messages)
    assert info.value.body["param"] == field  # type: ignore[index]
    assert info.value.body["message"].startswith(f"'{field}' ")  # type: ignore[index]
    assert upstream.fake.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("tools", "field"), [
    pytest.param([{"type": "function", "function": {"name": "f"}}, {"type": "function",
                  "function": {"name": "g", "parameters": "{}"}}],
                 "tools[1].function.parameters", id="second-tool-parameters-string"),
    pytest.param([{"type": "function", "function": {"name": "f"}}, ["not", "a tool"]],
                 "tools[1]", id="second-tool-list"),
    pytest.param([{"type": "function", "function": {"name": 3}}],
                 "tools[0].function.name", id="tool-name-number"),
])
async def test_wrongly_typed_chat_tools_are_a_400_naming_the_tool(
        tools: Any, field: str, start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    with pytest.raises(openai.BadRequestError) as info:
        await router.openai().chat.completions.create(model="g", messages=HELLO, tools=tools)
    assert info.value.body["param"] == field  # type: ignore[index]
    assert upstream.fake.requests == []


async def test_the_anthropic_sdk_gets_the_field_named(start_router: StartRouter,
                                                      upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    wrong: Any = [{"role": "user", "content": [{"type": "text", "text": 7}]}]
    with pytest.raises(anthropic.BadRequestError) as info:
        await router.anthropic().messages.create(model="g", max_tokens=8, messages=wrong)
    assert info.value.body == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "'messages[0].content[0].text' must be a string."}}


async def test_upstream_errors_reach_anthropic_clients_in_their_shape(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    client = router.anthropic()
    upstream.fake.add_fault(Fault(status=400, body=orjson.dumps({"error": {
        "message": "context too long", "type": "invalid_request_error"}})))
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="g", max_tokens=3, messages=HELLO)  # type: ignore[arg-type]
    assert bad.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "context too long"}}
    upstream.fake.add_fault(Fault(status=500, times=None))
    with pytest.raises(anthropic.APIStatusError) as down:
        await client.messages.create(model="g", max_tokens=3, messages=HELLO)  # type: ignore[arg-type]
    assert down.value.status_code == 502
    assert down.value.body["type"] == "error"  # type: ignore[index]
    assert down.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "sk-oa" not in str(down.value.body)


async def test_anthropic_upstream_errors_reach_openai_clients_in_their_shape(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    client = router.openai()
    upstream.fake.add_fault(Fault(status=400, body=orjson.dumps({"type": "error", "error": {
        "type": "invalid_request_error", "message": "messages: roles must alternate"}})))
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert bad.value.body == {"message": "messages: roles must alternate",
                              "type": "invalid_request_error", "param": None,
                              "code": "invalid_request_error"}
    upstream.fake.add_fault(Fault(status=404))  # e.g. the upstream model does not exist
    with pytest.raises(openai.NotFoundError) as gone:
        await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert gone.value.body["code"] == "not_found_error"  # type: ignore[index]
    upstream.fake.add_fault(Fault(status=529, times=None))
    with pytest.raises(openai.APIStatusError) as down:
        await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert down.value.status_code == 502
    assert set(down.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]


async def test_anthropic_passthrough_keeps_upstream_client_errors(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    upstream.fake.add_fault(Fault(status=429, retry_after="1"))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await router.anthropic().messages.create(model="g", max_tokens=3,
                                                 messages=HELLO)  # type: ignore[arg-type]
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limited.value.response.headers.get("Retry-After")


# ------------------------------------------------- streams cut mid-way


async def test_cut_stream_ends_with_in_band_error_event(start_router: StartRouter,
                                                        upstream: Upstream) -> None:
    for config in (via_openai(upstream), via_anthropic(upstream)):
        router = await start_router(config)
        upstream.fake.add_fault(Fault(status=0, cut_after_chunks=4))
        body = {"model": "g", "max_tokens": 30, "stream": True, "messages": HELLO}
        async with aiohttp.ClientSession() as http, http.post(
                router.url + "/v1/messages", json=body,
                headers={"x-api-key": ROUTER_KEY, "anthropic-version": "2023-06-01"}) as resp:
            assert resp.status == 200
            text = (await resp.read()).decode()
        blocks = [b for b in text.split("\n\n") if b.strip()]
        assert blocks[0].startswith("event: message_start")
        assert blocks[-1].startswith("event: error\n")
        error = orjson.loads(blocks[-1].split("data: ", 1)[1])
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        assert "message_stop" not in text

        upstream.fake.add_fault(Fault(status=0, cut_after_chunks=4))
        with pytest.raises(anthropic.APIStatusError) as cut:
            async with router.anthropic().messages.stream(
                    model="g", max_tokens=30, messages=HELLO) as stream:  # type: ignore[arg-type]
                async for _ in stream:
                    pass
        assert cut.value.body["error"]["type"] == "api_error"  # type: ignore[index]


async def test_cut_anthropic_stream_ends_openai_stream_with_error_chunk(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    upstream.fake.add_fault(Fault(status=0, cut_after_chunks=4))
    with pytest.raises(openai.APIError, match="interrupted"):
        async for _ in await router.openai().chat.completions.create(
                model="g", messages=HELLO, stream=True, max_tokens=30):  # type: ignore[arg-type]
            pass


# ------------------------------------------------- inbound headers


async def test_x_api_key_and_bearer_both_authenticate_messages(start_router: StartRouter,
                                                               upstream: Upstream) -> None:
    router = await start_router(via_openai(upstream))
    body = {"model": "g", "max_tokens": 2, "messages": HELLO}
    async with aiohttp.ClientSession() as http:
        for headers in ({"x-api-key": ROUTER_KEY, "anthropic-version": "2023-06-01",
                         "anthropic-beta": "prompt-caching-2024-07-31"},
                        {"Authorization": f"Bearer {ROUTER_KEY}"}):
            async with http.post(router.url + "/v1/messages", json=body,
                                 headers=headers) as resp:
                assert resp.status == 200
                doc = await resp.json()
                assert doc["type"] == "message" and doc["usage"]["output_tokens"] == 2
        async with http.post(router.url + "/v1/messages", json=body,
                             headers={"x-api-key": "wrong"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "authentication_error"
    # The client's own credentials and Anthropic headers never reach an OpenAI upstream.
    for seen in upstream.fake.requests:
        assert seen.api_key == "sk-oa"
        assert "anthropic-version" not in seen.headers and "x-api-key" not in seen.headers


async def test_passthrough_keeps_the_clients_anthropic_version_and_beta(
        start_router: StartRouter, upstream: Upstream) -> None:
    config = via_anthropic(upstream, anthropic_version="2023-01-01",
                           headers={"Anthropic-Beta": "configured-1"})
    router = await start_router(config)
    await router.anthropic().messages.create(
        model="g", max_tokens=2, messages=HELLO,  # type: ignore[arg-type]
        extra_headers={"anthropic-beta": "client-1, configured-1,client-2",
                       "anthropic-version": "2023-06-01"})
    # An OpenAI client's request is translated: the provider's own version and betas.
    await router.openai().chat.completions.create(model="g", max_tokens=2,
                                                  messages=HELLO)  # type: ignore[arg-type]
    native, translated = upstream.fake.requests
    assert native.headers.getall("anthropic-beta") == ["configured-1,client-1,client-2"]
    assert native.headers.getall("anthropic-version") == ["2023-06-01"]
    assert translated.headers.getall("Anthropic-Beta") == ["configured-1"]
    assert translated.headers.getall("anthropic-version") == ["2023-01-01"]


# ------------------------------------------------- errors reported inside a stream

_ANTHROPIC_THEN_ERROR = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "hi"}}),
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
]
_OPENAI_THEN_ERROR = [
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"},
                  "finish_reason": None}]},
    {"error": {"message": "backend crashed", "type": "server_error"}},
]


@pytest.fixture
async def erring_upstream(aiohttp_server: Any) -> str:
    """A real loopback server whose streams report an error in-band, as Anthropic
    (``event: error``, e.g. overloaded) and OpenAI-compatible servers (an error chunk,
    then ``[DONE]``) do; the FakeUpstream can only cut streams."""
    async def messages(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for name, data in _ANTHROPIC_THEN_ERROR:
            await resp.write(b"event: %b\ndata: %b\n\n" % (name.encode(), orjson.dumps(data)))
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in _OPENAI_THEN_ERROR:
            await resp.write(b"data: %b\n\n" % orjson.dumps(chunk))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def test_upstream_in_band_errors_reach_the_client_once_and_count_as_failures(
        start_router: StartRouter, erring_upstream: str) -> None:
    router = await start_router({
        "providers": [
            # Two keys: an overloaded_error cools the key that got it, as a 529 would,
            # so the third request goes to the other one.
            {"name": "an", "type": "anthropic", "base_url": erring_upstream,
             "api_keys": [{"key": "a", "name": "a1"}, {"key": "a-2", "name": "a2"}]},
            {"name": "oa", "type": "openai", "base_url": erring_upstream + "/v1",
             "api_keys": ["o"]}],
        "groups": [{"name": "an", "models": [{"provider": "an", "name": "m"}]},
                   {"name": "oa", "models": [{"provider": "oa", "name": "m"}]}],
    })
    body = {"max_tokens": 5, "stream": True, "messages": HELLO}
    got: dict[str, str] = {}
    keys_used: dict[str, list[str]] = {}
    async with aiohttp.ClientSession() as http:
        for route, group in (("/v1/messages", "an"), ("/v1/messages", "oa"),
                             ("/v1/chat/completions", "an")):
            async with http.post(router.url + route, json={**body, "model": group},
                                 headers={"x-api-key": ROUTER_KEY}) as resp:
                assert resp.status == 200
                got[f"{route} {group}"] = (await resp.read()).decode()
                keys = keys_used.setdefault(group, [])
                keys.append(resp.headers["X-Router-Key"])
    assert len(set(keys_used["an"])) == 2  # the overloaded key cooled
    assert {router.state.health.label("an", k) for k in ("a1", "a2")} == {"cooldown"}
    native = got["/v1/messages an"]
    assert native.count("event: error") == 1 and '"overloaded_error"' in native
    assert native.rstrip().endswith('"message":"Overloaded"}}')
    translated = got["/v1/messages oa"]
    assert translated.count("event: error") == 1 and "backend crashed" in translated
    assert "message_stop" not in translated
    chat = [b for b in got["/v1/chat/completions an"].split("\n\n") if b.strip()]
    assert chat[-1] == "data: [DONE]" and sum('"error"' in b for b in chat) == 1
    assert orjson.loads(chat[-2][6:])["error"]["code"] == "overloaded_error"
    s = await metric_samples(router.url)
    assert total(s, "llm_router_upstream_errors_total", reason="stream_error") == 3
    # Usage reported before the error is still counted.
    assert total(s, "llm_router_tokens_total", provider="an", kind="prompt") == 22


async def test_routes_an_anthropic_provider_cannot_serve_are_a_clear_400(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(via_anthropic(upstream))
    client = router.openai()
    with pytest.raises(openai.BadRequestError) as emb:
        await client.embeddings.create(model="g", input="hello")
    assert emb.value.body["code"] == "unsupported_route"  # type: ignore[index]
    assert emb.value.response.headers.get("Retry-After") is None  # waiting will not help
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model="g", prompt="hello")
    assert upstream.fake.requests == []


def test_an_anthropic_base_url_with_v1_is_refused_at_load() -> None:
    text = """
providers:
  - {name: claude, type: anthropic, base_url: "https://api.anthropic.com/v1", api_keys: [k]}
groups:
  - {name: g, models: [{provider: claude, name: m}]}
"""
    with pytest.raises(ConfigError) as exc:
        parse_config(text, fmt="yaml", env={})
    (problem,) = exc.value.problems
    assert problem.startswith("providers[0].base_url: ") and "without /v1" in problem
    ok = parse_config(text.replace("/v1", ""), fmt="yaml", env={})
    assert ok.providers["claude"].base_url == "https://api.anthropic.com"
