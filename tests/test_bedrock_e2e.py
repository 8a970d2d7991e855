"""AWS Bedrock as an upstream, end to end over real sockets.

The real ``openai`` and ``anthropic`` SDKs talk to the router; the router talks to the
fake Bedrock (:mod:`llm_router.testing.bedrock`), which recomputes every SigV4 signature
from its own secrets, frames ConverseStream itself and refuses what Bedrock refuses.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
import yaml

from llm_router.config import parse_config
from llm_router.providers.bedrock.models import models_url
from llm_router.providers.registry import provider_type
from llm_router.testing.bedrock import (
    DEMO_ACCESS_KEY_ID,
    DEMO_API_KEY,
    DEMO_SECRET_ACCESS_KEY,
    BedrockFault,
)

from .conftest import Router, StartRouter, Upstream
from .helpers import AUTH, eventually, metric_samples

PROFILE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
ARN = ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
       "us.meta.llama3-3-70b-instruct-v1:0")
SIGV4 = {"access_key_id": DEMO_ACCESS_KEY_ID, "secret_access_key": DEMO_SECRET_ACCESS_KEY,
         "name": "main"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}
# A 1x1 PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


def bedrock(up: Upstream, keys: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "aws", "type": "bedrock", "region": "us-east-1", "base_url": up.root,
            "api_keys": keys if keys is not None else [SIGV4], **extra}


def config(up: Upstream, model: str = PROFILE, **provider: Any) -> dict[str, Any]:
    return {"providers": [bedrock(up, **provider)],
            "groups": [{"name": "claude", "models": [{"provider": "aws", "name": model}]}]}


async def start(start_router: StartRouter, up: Upstream, **kw: Any) -> Router:
    return await start_router(config(up, **kw))


def last(up: Upstream) -> Any:
    return up.fake.bedrock.requests[-1]


async def test_chat_reaches_converse_signed_and_comes_back_as_a_completion(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    answer = await router.openai().chat.completions.create(
        model="claude", max_tokens=5, temperature=0.5, stop=["END"],
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "hello"},
                  {"role": "user", "content": [{"type": "text", "text": "   "},
                                               {"type": "text", "text": "there"}]}])
    assert answer.choices[0].message.content == "lorem ipsum dolor sit amet"
    assert answer.choices[0].finish_reason == "length"  # maxTokens reached
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    seen = last(upstream)
    # One path segment, encoded the way the AWS SDKs encode it; the fake verified the
    # signature over exactly that path.
    assert seen.model_segment == "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
    assert seen.model_id == PROFILE and not seen.stream
    assert seen.access_key == DEMO_ACCESS_KEY_ID
    assert seen.body == {
        "messages": [{"role": "user", "content": [{"text": "hello"}, {"text": "there"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 5, "temperature": 0.5, "stopSequences": ["END"]},
    }


async def test_chat_stream_arrives_as_chunks_with_usage_last(
        start_router: StartRouter, upstream: Upstream) -> None:
    upstream.fake.bedrock.write_size = 77  # frames split across the router's reads
    router = await start(start_router, upstream)
    stream = await router.openai().chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(["lorem", "ipsum", "dolor", "sit", "amet", "consectetur",
                             "adipiscing", "elit", "sed", "do", "eiusmod", "tempor",
                             "lorem", "ipsum", "dolor", "sit"])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16
    assert last(upstream).stream and last(upstream).model_segment.endswith("%3A0")


async def test_a_tool_round_trip(start_router: StartRouter, upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    client = router.openai()
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = await client.chat.completions.create(model="claude", messages=messages,
                                                 tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"location": "Paris"}
    assert last(upstream).body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather for a city",
                                "inputSchema": {"json": WEATHER["function"]["parameters"]}}}],
        "toolChoice": {"any": {}}}

    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
                 {"role": "user", "content": "and tomorrow?"}]
    second = await client.chat.completions.create(model="claude", messages=messages,
                                                  tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    sent = last(upstream).body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [{"toolUse": {"toolUseId": call.id, "name": "get_weather",
                                               "input": {"location": "Paris"}}}]
    # The tool result and the next user text are one user turn (Converse alternates).
    assert sent[2]["content"] == [
        {"toolResult": {"toolUseId": call.id, "content": [{"text": "18C and sunny"}]}},
        {"text": "and tomorrow?"}]


async def test_a_streamed_tool_call_arrives_in_fragments(start_router: StartRouter,
                                                         upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    stream = await router.openai().chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER],
        stream=True)
    chunks = [c async for c in stream]
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and calls[0].id.startswith("tooluse_")
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"location": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_an_image_goes_as_bytes_and_an_image_url_is_refused(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    client = router.openai()
    await client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert last(upstream).body["messages"][0]["content"][1] == {
        "image": {"format": "png", "source": {"bytes": PNG}}}

    before = len(upstream.fake.bedrock.requests)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="claude", messages=[{
            "role": "user", "content": [{"type": "image_url", "image_url": {
                "url": "https://example.com/cat.png"}}]}])
    assert err.value.code == "unsupported_image"
    assert "data: URL" in err.value.message
    assert len(upstream.fake.bedrock.requests) == before  # refused before AWS


async def test_usage_counts_cache_reads_and_writes_in_the_prompt(
        start_router: StartRouter, upstream: Upstream) -> None:
    upstream.fake.bedrock.cache_read_tokens = 6
    upstream.fake.bedrock.cache_write_tokens = 2
    router = await start(start_router, upstream)
    client = router.openai()
    prompt = [{"role": "user", "content": "x" * 80}]  # 20 + 3 prompt tokens at the fake
    answer = await client.chat.completions.create(model="claude", messages=prompt)
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 23  # inputTokens 15 + cacheRead 6 + cacheWrite 2
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 6

    stream = await client.chat.completions.create(model="claude", messages=prompt,
                                                  stream=True,
                                                  stream_options={"include_usage": True})
    usage = [c.usage async for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens == 23 and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 6
    samples = await metric_samples(router.url)
    cached = [v for k, v in samples.items()
              if k.startswith("llm_router_tokens_total{") and "kind=cached" in k]
    assert cached == [12.0]


async def test_a_throttled_key_cools_down_and_the_next_key_answers(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.fake.bedrock.credentials["AKIAFAKEBEDROCK00002"] = ("second-secret-key", "")
    second = {"access_key_id": "AKIAFAKEBEDROCK00002", "secret_access_key": "second-secret-key",
              "name": "second"}
    router = await start(start_router, upstream, keys=[SIGV4, second])
    upstream.fake.bedrock.faults.append(BedrockFault(status=429, times=None,
                                                     access_key=DEMO_ACCESS_KEY_ID))
    served = set()
    for _ in range(3):
        async with http.post(router.url + "/v1/chat/completions", headers=AUTH, json={
                "model": "claude", "messages": [{"role": "user", "content": "hi"}]}) as resp:
            assert resp.status == 200
            served.add(resp.headers["X-Router-Key"])
    assert served == {"second"}  # the first key, throttled once, cools down
    throttled = [r for r in upstream.fake.bedrock.requests
                 if r.access_key == DEMO_ACCESS_KEY_ID]
    assert len(throttled) == 1


async def test_every_key_throttled_is_a_429_for_the_client(start_router: StartRouter,
                                                           upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    upstream.fake.bedrock.faults.append(BedrockFault(status=429, times=None))
    with pytest.raises(openai.RateLimitError):
        await router.openai().chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}])


async def test_a_wrong_secret_is_refused_by_aws_and_never_shown(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    wrong = {**SIGV4, "secret_access_key": "not-the-right-secret-key"}
    router = await start(start_router, upstream, keys=[wrong])
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "claude", "messages": [{"role": "user", "content": "hi"}]}) as resp:
        body = await resp.text()
        assert resp.status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_auth_failed"
    assert "not-the-right-secret-key" not in body
    assert router.state.health.label("aws", "main") == "bad"  # as after a 401


async def test_a_bedrock_api_key_is_sent_as_a_bearer_token(start_router: StartRouter,
                                                           upstream: Upstream) -> None:
    router = await start(start_router, upstream, keys=[{"key": DEMO_API_KEY, "name": "apikey"}])
    answer = await router.openai().chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert last(upstream).access_key == DEMO_API_KEY


async def test_temporary_credentials_send_their_session_token(start_router: StartRouter,
                                                              upstream: Upstream) -> None:
    token = "FwoGZXIvYXdzEXAMPLEsessiontoken//////////"
    upstream.fake.bedrock.credentials["ASIAFAKEBEDROCK00003"] = ("temp-secret-key", token)
    key = {"access_key_id": "ASIAFAKEBEDROCK00003", "secret_access_key": "temp-secret-key",
           "session_token": token}
    router = await start(start_router, upstream, keys=[key])
    await router.openai().chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}])
    assert last(upstream).headers["x-amz-security-token"] == token


async def test_an_arn_model_id_is_one_encoded_path_segment(start_router: StartRouter,
                                                           upstream: Upstream) -> None:
    router = await start(start_router, upstream, model=ARN)
    await router.openai().chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}])
    assert last(upstream).model_segment == (
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.meta.llama3-3-70b-instruct-v1%3A0")
    assert last(upstream).model_id == ARN


async def test_a_mid_stream_exception_ends_the_stream_with_that_error(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start(start_router, upstream)
    upstream.fake.bedrock.faults.append(BedrockFault(
        stream_exception="throttlingException", after_events=4,
        message="Too many tokens, please wait before trying again."))
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "claude", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status == 200
        events = (await resp.read()).split(b"\n\n")
    data = [e.removeprefix(b"data: ") for e in events if e]
    assert data[-1] == b"[DONE]"
    errors = [orjson.loads(d)["error"] for d in data[:-1] if b'"error"' in d]
    assert errors == [{"message": "Too many tokens, please wait before trying again.",
                       "type": "rate_limit_error", "param": None,
                       "code": "ThrottlingException"}]
    samples = await metric_samples(router.url)
    assert samples["llm_router_upstream_errors_total{key=main,provider=aws,"
                   "reason=stream_error}"] == 1


@pytest.mark.parametrize(("exception", "state"), [
    ("throttlingException", "cooldown"), ("modelStreamErrorException", "ok")])
async def test_a_mid_stream_throttle_cools_the_key_as_a_429_does(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        exception: str, state: str) -> None:
    """A stream Bedrock cuts with a throttlingException took the key's quota: the key
    cools (the next request goes to the other key) as after a 429 before the stream.
    Another mid-stream exception only counts as a failure."""
    second = {"access_key_id": "AKIAFAKEBEDROCK00002", "secret_access_key": "second-secret-key",
              "name": "second"}
    upstream.fake.bedrock.credentials["AKIAFAKEBEDROCK00002"] = ("second-secret-key", "")
    router = await start(start_router, upstream, keys=[SIGV4, second])
    upstream.fake.bedrock.faults.append(BedrockFault(
        stream_exception=exception, after_events=4, access_key=DEMO_ACCESS_KEY_ID))
    stream = {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    # Until a request lands on the faulted key: selection is by weight, not by order.
    for _ in range(10):
        async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                             json=stream) as resp:
            body = await resp.read()
        if b'"error"' in body:
            break
    else:
        pytest.fail("no request reached the faulted key")
    assert router.state.health.label("aws", "main") == state
    if state == "cooldown":
        for _ in range(4):
            async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                                 json=stream) as resp:
                assert resp.headers["X-Router-Key"] == "second"


async def test_the_openai_sdk_raises_the_mid_stream_error(start_router: StartRouter,
                                                          upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    upstream.fake.bedrock.faults.append(BedrockFault(
        stream_exception="modelStreamErrorException", after_events=3,
        message="The model stopped unexpectedly."))
    stream = await router.openai().chat.completions.create(
        model="claude", stream=True, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIError, match=r"The model stopped unexpectedly\."):
        async for _ in stream:
            pass


async def test_a_validation_exception_is_the_clients_400_with_the_message_scrubbed(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    upstream.fake.bedrock.faults.append(BedrockFault(
        status=400, error_type="ValidationException",
        message="Malformed input request for AKIAFAKEBEDROCK00001 on "
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/x: "
                f"{DEMO_SECRET_ACCESS_KEY}"))
    with pytest.raises(openai.BadRequestError) as err:
        await router.openai().chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}])
    message = err.value.message
    assert message.endswith("Malformed input request for [redacted] on "
                            "arn:aws:bedrock:us-east-1:[account]:inference-profile/x: "
                            "[redacted]")
    assert DEMO_SECRET_ACCESS_KEY not in message and "123456789012" not in message
    assert err.value.code == "ValidationException"


async def test_response_format_is_answered_through_a_forced_tool(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    schema = {"type": "object", "properties": {"location": {"type": "string"}}}
    answer = await router.openai().chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "where?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "place",
                                                                "schema": schema}})
    assert orjson.loads(answer.choices[0].message.content or "") == {"location": "Paris"}
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    assert last(upstream).body["toolConfig"]["toolChoice"] == {"tool": {"name": "place"}}


async def test_anthropic_sdk_messages_reach_bedrock(start_router: StartRouter,
                                                    upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    client = router.anthropic()
    msg = await client.messages.create(model="claude", max_tokens=3, system="terse",
                                       messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "lorem ipsum dolor"
    assert msg.stop_reason == "max_tokens"
    assert last(upstream).body["system"] == [{"text": "terse"}]
    async with client.messages.stream(model="claude", max_tokens=4,
                                      messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join([t async for t in s.text_stream])
        final = await s.get_final_message()
    assert text == "lorem ipsum dolor sit"
    assert final.usage.output_tokens == 4


async def test_responses_clients_reach_bedrock(start_router: StartRouter,
                                               upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    r = await router.openai().responses.create(model="claude", input="hi",
                                               instructions="be brief", max_output_tokens=2)
    assert r.output_text == "lorem ipsum"
    assert last(upstream).body["system"] == [{"text": "be brief"}]


async def test_an_anthropic_stream_ends_with_bedrocks_mid_stream_error(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    upstream.fake.bedrock.faults.append(BedrockFault(
        stream_exception="throttlingException", after_events=3,
        message="Too many tokens, please wait before trying again."))
    client = router.anthropic()
    with pytest.raises(anthropic.APIStatusError, match="Too many tokens") as err:
        async with client.messages.stream(model="claude", max_tokens=8,
                                          messages=[{"role": "user", "content": "hi"}]) as s:
            async for _ in s.text_stream:
                pass
    assert err.value.body == {"type": "error", "error": {
        "type": "rate_limit_error",
        "message": "Too many tokens, please wait before trying again."}}


async def test_faults_can_be_armed_over_http(upstream: Upstream,
                                             http: aiohttp.ClientSession) -> None:
    async with http.post(upstream.root + "/_fake/bedrock/faults",
                         json={"status": 503, "error_type": "ServiceUnavailableException",
                               "times": 2}) as resp:
        assert resp.status == 200 and await resp.json() == {"faults": 1}
    async with http.post(upstream.root + "/_fake/bedrock/faults", json={"nope": 1}) as resp:
        assert resp.status == 400
    [fault] = upstream.fake.bedrock.faults
    assert (fault.status, fault.error_type, fault.times) == (503, "ServiceUnavailableException", 2)


async def test_routes_converse_lacks_are_refused_naming_what_bedrock_serves(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start(start_router, upstream)
    with pytest.raises(openai.BadRequestError) as err:
        await router.openai().embeddings.create(model="claude", input="hi")
    assert err.value.code == "unsupported_route"
    assert "(bedrock serves chat, messages, responses)" in err.value.message
    assert not upstream.fake.bedrock.requests


@pytest.mark.parametrize("key", [SIGV4, {"key": DEMO_API_KEY}], ids=["sigv4", "api-key"])
async def test_the_model_list_is_the_text_foundation_models(
        upstream: Upstream, http: aiohttp.ClientSession, key: dict[str, str]) -> None:
    cfg = parse_config(yaml.safe_dump(config(upstream, keys=[key])), env={})
    provider = cfg.providers["aws"]
    models = await provider_type("bedrock").list_models(http, provider, provider.keys[0])
    assert models is not None
    assert [m.id for m in models] == ["anthropic.claude-sonnet-4-5-20250929-v1:0",
                                      "amazon.nova-lite-v1:0",
                                      "meta.llama3-3-70b-instruct-v1:0"]


async def test_the_model_list_with_a_wrong_secret_is_refused(
        upstream: Upstream, http: aiohttp.ClientSession) -> None:
    wrong = {**SIGV4, "secret_access_key": "not-the-right-secret-key"}
    cfg = parse_config(yaml.safe_dump(config(upstream, keys=[wrong])), env={})
    provider = cfg.providers["aws"]
    with pytest.raises(aiohttp.ClientResponseError) as err:
        await provider_type("bedrock").list_models(http, provider, provider.keys[0])
    assert err.value.status == 403


def test_the_model_list_is_on_the_control_plane_host() -> None:
    cfg = parse_config(yaml.safe_dump({
        "providers": [{"name": "aws", "type": "bedrock", "region": "eu-west-3",
                       "api_keys": ["bedrock-api-key-1234"]}],
        "groups": [{"name": "g", "models": [{"provider": "aws", "name": "m"}]}]}), env={})
    assert models_url(cfg.providers["aws"]) == \
        "https://bedrock.eu-west-3.amazonaws.com/foundation-models"


async def test_a_secret_access_key_from_a_file_signs_and_rotates_without_restart(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    """``secret_access_key_file``: the secret half of a key pair from a mounted Secret.
    A wrong one is refused by AWS; writing the right one reloads the config and signs."""
    secret = tmp_path / "aws-secret"
    secret.write_text("not-the-right-secret-key\n")
    key = {"access_key_id": DEMO_ACCESS_KEY_ID, "secret_access_key_file": str(secret),
           "name": "main"}
    router = await start(start_router, upstream, keys=[key])
    client = router.openai()
    with pytest.raises(openai.APIStatusError) as refused:
        await client.chat.completions.create(model="claude", messages=[
            {"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502
    tmp = tmp_path / "aws-secret.tmp"
    tmp.write_text(DEMO_SECRET_ACCESS_KEY + "\n")
    os.rename(tmp, secret)

    async def signed() -> bool:
        try:
            await client.chat.completions.create(model="claude", messages=[
                {"role": "user", "content": "hi"}])
        except openai.APIStatusError:
            return False
        return True

    await eventually(signed)
    assert last(upstream).access_key == DEMO_ACCESS_KEY_ID
