"""Gemini and Vertex AI upstreams end to end: the real openai and anthropic SDKs talk
to the router, the router talks to the fake's Google APIs over loopback. The fake
checks requests as Google does (tests/../testing/google.py), so a translation mistake
fails here as it would in production."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from llm_router.testing.google import google_error_body
from llm_router.testing.upstream import Fault

from .conftest import StartRouter, Upstream
from .google_keys import service_account

MODEL = "gemini-2.5-flash"
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"], "additionalProperties": False}}}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()


def gemini_config(upstream: Upstream, keys: list[Any] | None = None,
                  **extra: Any) -> dict[str, Any]:
    return {"providers": [{"name": "gem", "type": "gemini", "base_url": upstream.root,
                           "api_keys": keys or ["gk-1"]}],
            "groups": [{"name": "gem", "models": [{"provider": "gem", "name": MODEL}],
                        **extra}]}


def vertex_config(upstream: Upstream, credentials: list[Path],
                  model: str = MODEL) -> dict[str, Any]:
    return {"providers": [{"name": "vx", "type": "vertex", "project": "test-project",
                           "location": "europe-west4", "base_url": upstream.root,
                           "credentials": str(credentials[0]),
                           "api_keys": [str(p) for p in credentials[1:]]}],
            "groups": [{"name": "vx", "models": [{"provider": "vx", "name": model}]}]}


def wire_bodies(upstream: Upstream) -> list[dict[str, Any]]:
    return [r.body for r in upstream.fake.requests if r.body is not None]


# ---------------------------------------------------------------- chat


async def test_chat_reaches_generate_content_and_counts_thoughts(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="gem", messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hello there"}],
        temperature=0.3, max_tokens=50, stop=["END"])
    answer = raw.parse()
    (request,) = upstream.fake.requests
    assert request.path == f"/v1beta/models/{MODEL}:generateContent"
    assert request.api_key == "gk-1"
    assert request.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.3, "maxOutputTokens": 50,
                             "stopSequences": ["END"]}}
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == MODEL
    usage = answer.usage
    assert usage is not None
    # The fake reports 12 candidate tokens and 12 thought tokens: both are completion.
    assert usage.completion_tokens == 24
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 12
    assert raw.headers["X-Router-Provider"] == "gem"


async def test_stream_takes_the_last_running_total_of_usage(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    client = router.openai()
    messages = [{"role": "user", "content": "Tell me something"}]
    whole = await client.chat.completions.create(model="gem", messages=messages)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(
        model="gem", messages=messages, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert upstream.fake.requests[-1].path.endswith(":streamGenerateContent")
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    # Four events each repeat the running total: summing them would give far more.
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens)


async def test_a_stream_without_include_usage_hides_it(start_router: StartRouter,
                                                       upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    stream = await router.openai().chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "x"}], stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None for chunk in chunks)


async def test_tool_round_trip_of_two_turns(start_router: StartRouter,
                                            upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    client = router.openai()
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat.completions.create(model="gem", messages=messages,
                                                 tools=[WEATHER])  # type: ignore[list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"location": "Paris"}  # type: ignore[union-attr]
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'})
    second = await client.chat.completions.create(model="gem", messages=messages,
                                                  tools=[WEATHER])  # type: ignore[list-item]
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    turns = wire_bodies(upstream)[-1]["contents"]
    # The fake refuses a call without the signature it issued, and a result whose name
    # is not the call's: both made it.
    assert "thoughtSignature" in turns[1]["parts"][0]
    assert turns[2]["parts"] == [{"functionResponse": {"name": "weather",
                                                       "response": {"temp": 21}}}]
    # additionalProperties is outside Gemini's Schema subset: sent as JSON Schema.
    declaration = wire_bodies(upstream)[0]["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"] == WEATHER["function"]["parameters"]  # type: ignore[index]


async def test_streamed_tool_call(start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    stream = await router.openai().chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER], stream=True)  # type: ignore[list-item]
    chunks = [c async for c in stream]
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [(t.index, t.function.name) for t in calls] == [(0, "weather")]  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_images_go_inline_or_by_uri(start_router: StartRouter,
                                          upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    answer = await router.openai().chat.completions.create(model="gem", messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert answer.choices[0].message.content
    parts = wire_bodies(upstream)[0]["contents"][0]["parts"]
    assert parts[1:] == [{"inlineData": {"mimeType": "image/png", "data": PIXEL}},
                         {"fileData": {"mimeType": "image/jpeg",
                                       "fileUri": "https://example.com/cat.jpg"}}]
    assert answer.usage is not None and answer.usage.prompt_tokens > 2 * 258


async def test_json_mode_with_a_schema(start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"]}
    answer = await router.openai().chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "A big city, as JSON"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": schema}})
    assert json.loads(answer.choices[0].message.content or "") == {"city": "alpha",
                                                                   "population": 7}
    config = wire_bodies(upstream)[0]["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseSchema": schema}


async def test_cached_tokens_come_from_cached_content_token_count(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    client = router.openai()
    opening = [{"role": "system", "content": "You are a weather bot. " * 20},
               {"role": "user", "content": "Paris?"}]
    first = await client.chat.completions.create(model="gem", messages=opening)  # type: ignore[arg-type]
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    follow = [*opening, {"role": "assistant", "content": first.choices[0].message.content},
              {"role": "user", "content": "And Lyon?"}]
    stream = await client.chat.completions.create(
        model="gem", messages=follow, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    usage = [c async for c in stream][-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    # The system instruction and the first turn were sent before by this key.
    assert usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 12
    metrics = await (await router_get(router, "/metrics")).text()
    assert 'kind="cached"' in metrics


async def router_get(router: Any, path: str) -> Any:
    import aiohttp
    session = aiohttp.ClientSession()
    try:
        resp = await session.get(router.url + path)
        await resp.read()
        return resp
    finally:
        await session.close()


# ---------------------------------------------------------------- failures


async def test_429_with_retry_delay_fails_over_and_cools_the_key(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(
        upstream, [{"key": "gk-1", "name": "one"}, {"key": "gk-2", "name": "two"}],
        strategy="round-robin"))
    upstream.fake.add_fault(Fault(status=429, key="gk-1", retry_after="30"))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="gem", messages=[{"role": "user", "content": "x"}])
    assert raw.parse().choices[0].message.content
    assert raw.headers["X-Router-Attempts"] == "2"
    assert raw.headers["X-Router-Key"] == "two"
    assert upstream.keys_seen() == ["gk-1", "gk-2"]
    health = router.state.health
    assert health.label("gem", "one") == "cooldown"
    left = health.cooldowns()[("gem", "one")] - time.monotonic()
    assert 20 < left <= 30  # Google's retryDelay, not the default 5 s


async def test_retry_delay_is_capped_like_any_retry_after(start_router: StartRouter,
                                                          upstream: Upstream) -> None:
    router = await start_router({**gemini_config(upstream, ["gk-1", "gk-2"]),
                                 "circuit": {"cooldown_max_s": 10}})
    upstream.fake.add_fault(Fault(status=429, retry_after="3600"))
    await router.openai().chat.completions.create(model="gem",
                                                  messages=[{"role": "user", "content": "x"}])
    (until,) = router.state.health.cooldowns().values()
    assert until - time.monotonic() <= 10


async def test_every_key_rate_limited_is_a_429_with_the_delay(start_router: StartRouter,
                                                              upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    upstream.fake.add_fault(Fault(status=429, retry_after="20"))
    with pytest.raises(openai.RateLimitError) as caught:
        await router.openai().chat.completions.create(
            model="gem", messages=[{"role": "user", "content": "x"}])
    assert 15 <= float(caught.value.response.headers["Retry-After"]) <= 20


async def test_an_invalid_key_is_set_aside_and_the_other_serves(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(
        upstream, [{"key": "invalid-key", "name": "bad"}, {"key": "gk-2", "name": "good"}],
        strategy="round-robin"))
    answer = await router.openai().chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content
    assert router.state.health.label("gem", "bad") == "bad"


async def test_a_google_400_reaches_the_client_as_a_400(start_router: StartRouter,
                                                        upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream, ["gk-1", "gk-2"]))
    upstream.fake.add_fault(Fault(status=400, body=google_error_body(
        400, "* GenerateContentRequest.generation_config.temperature: must be <= 2")))
    with pytest.raises(openai.BadRequestError) as caught:
        await router.openai().chat.completions.create(
            model="gem", messages=[{"role": "user", "content": "x"}])
    assert "temperature: must be <= 2" in caught.value.message
    assert len(upstream.fake.requests) == 1  # the client's mistake: not tried elsewhere


async def test_what_gemini_cannot_take_is_refused_with_400(start_router: StartRouter,
                                                           upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    with pytest.raises(openai.BadRequestError) as caught:
        await router.openai().chat.completions.create(model="gem", messages=[
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}])
    assert "file_id" in caught.value.message
    assert caught.value.code == "unsupported_by_provider"
    assert upstream.fake.requests == []


async def test_a_mid_stream_error_ends_the_stream_in_band(start_router: StartRouter,
                                                          upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    upstream.fake.add_fault(Fault(status=0, cut_after_chunks=2, body=google_error_body(
        503, "The model is overloaded. Please try again later.")))
    stream = await router.openai().chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "x"}], stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert len(seen) == 2 and all(seen)
    assert "overloaded" in caught.value.message


async def test_a_cut_stream_is_not_a_success(start_router: StartRouter,
                                             upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    upstream.fake.add_fault(Fault(status=0, cut_after_chunks=1))
    stream = await router.openai().chat.completions.create(
        model="gem", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError, match="interrupted"):
        async for _ in stream:
            pass


# ---------------------------------------------------------------- other routes


async def test_embeddings_go_to_batch_embed_contents(start_router: StartRouter,
                                                     upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    answer = await router.openai().embeddings.create(model="gem", input=["hello", "world"])
    assert [len(d.embedding) for d in answer.data] == [8, 8]  # base64 by the SDK's default
    assert upstream.fake.requests[0].path == f"/v1beta/models/{MODEL}:batchEmbedContents"
    floats = await router.openai().embeddings.create(model="gem", input="hi", dimensions=4,
                                                     encoding_format="float")
    assert len(floats.data[0].embedding) == 4


async def test_anthropic_clients_reach_gemini_through_the_hub(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    client = router.anthropic()
    message = await client.messages.create(
        model="gem", max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}])
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens == 24
    async with client.messages.stream(model="gem", max_tokens=100, messages=[
            {"role": "user", "content": "Hello"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == message.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 24
    assert wire_bodies(upstream)[0]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


async def test_responses_clients_reach_gemini_through_the_hub(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(gemini_config(upstream))
    client = router.openai()
    first = await client.responses.create(model="gem", input="Hello",
                                          instructions="Be brief.")
    assert first.output_text
    assert first.usage is not None and first.usage.output_tokens == 24
    follow = await client.responses.create(model="gem", input="More",
                                           previous_response_id=first.id)
    assert follow.output_text
    contents = wire_bodies(upstream)[-1]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]


async def test_the_model_list_is_read_page_by_page(upstream: Upstream) -> None:
    import aiohttp

    from llm_router.config import parse_config
    from llm_router.providers.registry import provider_type

    cfg = parse_config(json.dumps(gemini_config(upstream)), fmt="json")
    provider = cfg.providers["gem"]
    async with aiohttp.ClientSession() as session:
        models = await provider_type("gemini").list_models(session, provider,
                                                            provider.keys[0])
    # The fake serves at most 4 a page (a server may return fewer than asked): 2 pages.
    assert models is not None and len(models) == 6
    flash = next(m for m in models if m.id == "gemini-2.5-flash")
    assert flash.context_window == 1048576  # inputTokenLimit


# ---------------------------------------------------------------- vertex


async def test_vertex_gemini_with_a_service_account(start_router: StartRouter,
                                                    upstream: Upstream,
                                                    tmp_path: Path) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    router = await start_router(vertex_config(upstream, [path]))
    client = router.openai()
    answer = await client.chat.completions.create(
        model="vx", messages=[{"role": "user", "content": "Hello"}])
    assert answer.choices[0].message.content
    stream = await client.chat.completions.create(
        model="vx", messages=[{"role": "user", "content": "Hello"}], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) \
        == answer.choices[0].message.content
    assert [r.path for r in upstream.fake.requests] == [
        f"/v1/projects/test-project/locations/europe-west4/publishers/google/models/{MODEL}:"
        f"{method}" for method in ("generateContent", "streamGenerateContent")]
    assert upstream.fake.google.token_requests == 1


async def test_a_token_that_expires_mid_run_is_refreshed_once(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    router = await start_router(vertex_config(upstream, [path]))
    client = router.openai()
    ask: dict[str, Any] = {"model": "vx", "messages": [{"role": "user", "content": "x"}]}
    await client.chat.completions.create(**ask)
    assert upstream.fake.google.token_requests == 1
    upstream.fake.google.expire_tokens()  # Google now refuses the cached token
    answers = await asyncio.gather(*(client.chat.completions.create(**ask)
                                     for _ in range(5)))
    assert all(a.choices[0].message.content for a in answers)
    await client.chat.completions.create(**ask)
    assert upstream.fake.google.token_requests == 2  # one refresh for all of them


async def test_a_failed_token_fetch_cools_the_key_and_fails_over(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    good, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token", "good")
    broken, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token", "broken")
    doc = orjson.loads(broken.read_bytes())
    doc["client_email"] = "stranger@elsewhere.iam.gserviceaccount.com"
    broken.write_bytes(orjson.dumps(doc))
    router = await start_router({**vertex_config(upstream, [broken, good]),
                                 "groups": [{"name": "vx", "strategy": "round-robin",
                                             "models": [{"provider": "vx", "name": MODEL}]}]})
    answers = [await router.openai().chat.completions.create(
        model="vx", messages=[{"role": "user", "content": "x"}]) for _ in range(3)]
    assert all(a.choices[0].message.content for a in answers)
    labels = {str(p): label for p, label in
              ((k.secret, k.label) for k in router.state.config.providers["vx"].keys)}
    assert router.state.health.label("vx", labels[str(broken)]) == "cooldown"
    assert {r.api_key for r in upstream.fake.requests} == {
        "good@test-project.iam.gserviceaccount.com"}


CLAUDE = "claude-sonnet-4-5@20250929"
RAW_PREDICT = ("/v1/projects/test-project/locations/europe-west4/publishers/anthropic/models/"
               f"{CLAUDE}")


async def test_vertex_claude_streams_to_an_anthropic_client_untouched(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    router = await start_router(vertex_config(upstream, [path], CLAUDE))
    client = router.anthropic()
    ask: dict[str, Any] = {
        "model": "vx", "max_tokens": 64, "system": "Be brief.",
        "metadata": {"user_id": "u-1"},
        "messages": [{"role": "user", "content": "Hello"}]}
    async with client.messages.stream(**ask, extra_headers={
            "anthropic-beta": "fine-grained-tool-streaming-2025-05-14"}) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    # The fake writes max_tokens words: the Anthropic stream arrived whole.
    assert text and final.stop_reason == "max_tokens" and final.usage.output_tokens == 64
    (request,) = upstream.fake.requests
    assert request.path == f"{RAW_PREDICT}:streamRawPredict"
    # Only model removed and anthropic_version added: everything else as the client sent.
    assert request.body == {
        "max_tokens": 64, "system": "Be brief.",
        "metadata": {"user_id": "u-1"}, "messages": [{"role": "user", "content": "Hello"}],
        "stream": True, "anthropic_version": "vertex-2023-10-16"}
    assert request.headers["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14"
    whole = await client.messages.create(**ask)
    assert whole.content[0].type == "text" and whole.content[0].text == text
    assert upstream.fake.requests[-1].path == f"{RAW_PREDICT}:rawPredict"


async def test_vertex_claude_serves_openai_clients_through_the_hub(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    router = await start_router(vertex_config(upstream, [path], CLAUDE))
    client = router.openai()
    answer = await client.chat.completions.create(
        model="vx", messages=[{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Hello"}])
    assert answer.choices[0].message.content and answer.usage is not None
    stream = await client.chat.completions.create(
        model="vx", messages=[{"role": "user", "content": "Hello"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    bodies = wire_bodies(upstream)
    assert bodies[0]["system"] == "Be brief." and "model" not in bodies[0]
    assert bodies[0]["anthropic_version"] == "vertex-2023-10-16"


async def test_a_vertex_error_reaches_a_claude_client_in_anthropics_shape(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    path, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token")
    router = await start_router(vertex_config(upstream, [path], CLAUDE))
    upstream.fake.add_fault(Fault(status=400, body=google_error_body(
        400, "Project is not allowed to use Publisher Model claude")))
    with pytest.raises(anthropic.BadRequestError) as caught:
        await router.anthropic().messages.create(
            model="vx", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "Project is not allowed to use Publisher Model claude"}}


async def test_a_claude_429_with_retry_delay_fails_over_to_the_next_key(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    first, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token", "first")
    second, _ = service_account(tmp_path, upstream.fake, upstream.root + "/token", "second")
    router = await start_router({**vertex_config(upstream, [first, second], CLAUDE),
                                 "groups": [{"name": "vx", "strategy": "round-robin",
                                             "models": [{"provider": "vx", "name": CLAUDE}]}]})
    upstream.fake.add_fault(Fault(status=429, retry_after="30",
                                  key="first@test-project.iam.gserviceaccount.com"))
    upstream.fake.add_fault(Fault(status=429, retry_after="30",
                                  key="second@test-project.iam.gserviceaccount.com"))
    client = router.anthropic()
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model="vx", max_tokens=10,
                                     messages=[{"role": "user", "content": "x"}])
    assert 20 < float(caught.value.response.headers["Retry-After"]) <= 30
    assert len(router.state.health.cooldowns()) == 2


def test_check_names_credentials_problems_without_printing_the_key(tmp_path: Path) -> None:
    from llm_router.config import ConfigError, load_config

    pem = "-----BEGIN PRIVATE KEY-----\nMIIEsecretsecret\n-----END PRIVATE KEY-----\n"
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"type": "authorized_user", "private_key": pem}))
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"providers": [
        {"name": "vx", "type": "vertex", "project": "p", "location": "us-central1",
         "credentials": str(user), "api_keys": [str(tmp_path / "missing.json")]}],
        "groups": []}))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.problems == [
        f"providers[0].credentials: the credentials file '{user}' is not a service-account "
        'key (its "type" must be "service_account"; user credentials from gcloud are not '
        "supported)",
        f"providers[0].api_keys[0]: cannot read the credentials file "
        f"'{tmp_path / 'missing.json'}': No such file or directory"]


def test_check_names_a_vertex_providers_missing_keys() -> None:
    from llm_router.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config(json.dumps({"providers": [{"name": "vy", "type": "vertex",
                                                "projekt": "p"}]}), fmt="json")
    assert caught.value.problems == [
        "providers[0].project: required for a vertex provider",
        "providers[0].location: required for a vertex provider",
        "providers[0].credentials: a service-account key file is required (credentials, or "
        "its path in api_keys)",
        "providers[0].projekt: unknown key (did you mean 'project'?)"]


# ---------------------------------------------------------------- unused guard


def test_google_error_body_is_googles_shape() -> None:
    doc = orjson.loads(google_error_body(429, "slow down", retry_delay_s=2.5))
    assert doc == {"error": {"code": 429, "message": "slow down",
                             "status": "RESOURCE_EXHAUSTED", "details": [
                                 {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                  "retryDelay": "2.5s"}]}}
    assert anthropic.__name__  # both SDKs are part of this suite


def test_without_the_google_extra_check_names_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"providers": [
        {"name": "vx", "type": "vertex", "project": "p", "location": "global",
         "credentials": str(tmp_path / "sa.json")}], "groups": []}))
    # As if cryptography were not installed: Python treats a None entry as not importable.
    run = subprocess.run([sys.executable, "-c", (
        "import sys; sys.modules['cryptography'] = None; sys.argv = ['llm-router', 'check', "
        f"{str(config)!r}]; from llm_router.cli import main; sys.exit(main())")],
        capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert ("providers[0].type: vertex providers sign service-account tokens with the "
            "'cryptography' package: install the google extra (pip install '.[google]' in "
            "the llm-router checkout)") in run.stdout + run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(("location", "host"), [
    ("global", "https://aiplatform.googleapis.com"),
    ("europe-west4", "https://europe-west4-aiplatform.googleapis.com")])
def test_vertex_hosts_follow_the_location(location: str, host: str) -> None:
    from llm_router.config import parse_config

    cfg = parse_config(json.dumps({"providers": [
        {"name": "vx", "type": "vertex", "project": "p", "location": location,
         "credentials": "/etc/gcp/sa.json"},
        {"name": "gem", "type": "gemini", "api_keys": ["k"]}]}), fmt="json")
    assert cfg.providers["vx"].base_url == host
    assert cfg.providers["gem"].base_url == "https://generativelanguage.googleapis.com"


def test_key_content_given_as_the_path_is_refused_without_echoing_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    inline = json.dumps({"type": "service_account", "client_email": "a@b.iam",
                         "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEsecret\n"
                                        "-----END PRIVATE KEY-----\n"})
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"providers": [
        {"name": "vx", "type": "vertex", "project": "p", "location": "global",
         "credentials": "${GCP_SA}"}], "groups": []}))
    run = subprocess.run([sys.executable, "-m", "llm_router", "check", str(config)],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "GCP_SA": inline})
    assert run.returncode == 1
    assert "looks like the file's content" in run.stdout + run.stderr
    assert "MIIEsecret" not in run.stdout + run.stderr
    assert "PRIVATE KEY" not in run.stdout + run.stderr
