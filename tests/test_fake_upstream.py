"""The fake upstream: real requests over loopback, checked against the API shapes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import struct
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from llm_router.testing import upstream as fake_upstream
from llm_router.testing.upstream import (
    FakeUpstream,
    Fault,
    chat_completion,
    count_prompt_tokens,
    embeddings,
    messages_events,
    serve_fake_upstream,
)

from .helpers import eventually

Client = TestClient[Any, Any]
CHAT = "/v1/chat/completions"
HELLO: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
SIXTEEN_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit",
                 "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et"]
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, fake: FakeUpstream) -> Client:
    return await aiohttp_client(fake.app())


def sse_data(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


async def post_stream(client: Client, body: dict[str, Any], path: str = CHAT) -> list[str]:
    resp = await client.post(path, json={**body, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return sse_data(await resp.text())


# ---------------------------------------------------------------- generators


def test_prompt_tokens_are_a_quarter_of_the_characters_plus_three_per_message() -> None:
    body = {"messages": [
        {"role": "system", "content": "x" * 8},
        {"role": "user", "content": [{"type": "text", "text": "y" * 5}, {"type": "image_url"}]},
    ]}
    assert count_prompt_tokens(body) == (2 + 3) + (2 + 3)
    assert count_prompt_tokens({"system": "s" * 4, "messages": []}) == 1 + 3
    assert count_prompt_tokens({"prompt": ["abcd", "abcdefgh"]}) == 3
    assert count_prompt_tokens({"input": [1, 2, 3]}) == 3
    assert count_prompt_tokens({"input": ""}) == 1


def test_generators_are_deterministic() -> None:
    a, b = chat_completion(HELLO, "m"), chat_completion(HELLO, "m")
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
    body = {"model": "e", "input": ["one", "two"]}
    assert embeddings(body, "e")["data"] == embeddings(body, "e")["data"]


# ---------------------------------------------------------------- OpenAI routes


async def test_chat_completion_has_openai_shape_and_usage(client: Client) -> None:
    resp = await client.post(CHAT, json=HELLO)
    assert resp.status == 200
    data = await resp.json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert data["model"] == "m" and isinstance(data["created"], int)
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    assert choice["message"]["content"].split() == SIXTEEN_WORDS
    assert data["usage"] == {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22}


async def test_max_tokens_sets_length_and_finish_reason(client: Client) -> None:
    data = await (await client.post(CHAT, json={**HELLO, "max_tokens": 3})).json()
    assert data["choices"][0]["message"]["content"] == "lorem ipsum dolor"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    body = {**HELLO, "max_completion_tokens": 100_000}
    data = await (await client.post(CHAT, json=body)).json()
    assert data["usage"]["completion_tokens"] == 4096


async def test_chat_stream_sends_one_chunk_per_word_then_done(client: Client) -> None:
    events = await post_stream(client, {**HELLO, "max_tokens": 4})
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert words == ["lorem ", "ipsum ", "dolor ", "sit"]
    assert chunks[-1]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


async def test_chat_stream_include_usage_ends_with_usage_chunk(client: Client) -> None:
    body = {**HELLO, "stream_options": {"include_usage": True}}
    chunks = [orjson.loads(e) for e in (await post_stream(client, body))[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 16,
                                   "total_tokens": 22}


async def test_tools_make_a_tool_call_until_the_tool_answered(client: Client) -> None:
    body = {**HELLO, "tools": [WEATHER_TOOL]}
    data = await (await client.post(CHAT, json=body)).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}

    answered = {**body, "messages": [*HELLO["messages"], {"role": "assistant", "tool_calls": [
        call]}, {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]}
    data = await (await client.post(CHAT, json=answered)).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    data = await (await client.post(CHAT, json={**body, "tool_choice": "none"})).json()
    assert data["choices"][0]["message"]["content"]

    named = {**body, "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "b"}}],
             "tool_choice": {"type": "function", "function": {"name": "b"}}}
    data = await (await client.post(CHAT, json=named)).json()
    assert data["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "b"


async def test_tool_call_stream(client: Client) -> None:
    chunks = [orjson.loads(e) for e in (await post_stream(client, {
        **HELLO, "tools": [WEATHER_TOOL]}))[:-1]]
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    assert first["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    args = chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
    assert orjson.loads(args) == {"location": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_text_completions_plain_and_streamed(client: Client) -> None:
    body = {"model": "m", "prompt": "say", "max_tokens": 2}
    data = await (await client.post("/v1/completions", json=body)).json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert data["choices"][0]["text"] == "lorem ipsum"
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}

    body["stream_options"] = {"include_usage": True}
    events = await post_stream(client, body, "/v1/completions")
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "lorem ipsum"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 2 and events[-1] == "[DONE]"


async def test_embeddings_float_and_base64_agree(client: Client) -> None:
    body = {"model": "e", "input": ["a", "b"], "dimensions": 4}
    data = await (await client.post("/v1/embeddings", json=body)).json()
    assert [d["index"] for d in data["data"]] == [0, 1] and data["object"] == "list"
    vector = data["data"][0]["embedding"]
    assert len(vector) == 4 and sum(v * v for v in vector) == pytest.approx(1.0)
    assert data["usage"] == {"prompt_tokens": 2, "total_tokens": 2}

    b64 = await (await client.post("/v1/embeddings", json={
        **body, "encoding_format": "base64"})).json()
    decoded = struct.unpack("<4f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(vector, rel=1e-6)


async def test_models_list(client: Client, fake: FakeUpstream) -> None:
    data = await (await client.get("/v1/models", headers={"x-api-key": "k"})).json()
    assert data["object"] == "list"
    assert all(m["object"] == "model" and m["id"] for m in data["data"])
    assert fake.requests[-1].api_key == "k"
    fake.add_fault(Fault(status=503))
    assert (await client.get("/v1/models")).status == 503


async def test_models_list_in_vllms_and_openrouters_shapes(client: Client) -> None:
    resp = await client.post("/_fake/settings", json={"models_wire": "vllm", "models": [
        {"id": "small", "context_length": 2048, "input_modalities": ["text"],
         "supported_parameters": ["max_tokens"]}]})
    assert (await resp.json())["models"] == ["small"]
    (entry,) = (await (await client.get("/v1/models")).json())["data"]
    assert (entry["id"], entry["object"], entry["owned_by"], entry["max_model_len"]) == \
        ("small", "model", "vllm", 2048)
    await client.post("/_fake/settings", json={"models_wire": "openrouter"})
    doc = await (await client.get("/v1/models")).json()
    assert "object" not in doc
    (entry,) = doc["data"]
    assert entry["context_length"] == entry["top_provider"]["context_length"] == 2048
    assert entry["architecture"]["input_modalities"] == ["text"]
    assert entry["architecture"]["modality"] == "text->text"
    assert entry["supported_parameters"] == ["max_tokens"]
    assert isinstance(entry["pricing"]["prompt"], str)
    page = await (await client.get("/v1/models", headers={"anthropic-version": "x"})).json()
    claude = page["data"][0]
    assert claude["max_input_tokens"] == 200_000
    assert claude["capabilities"]["image_input"] == {"supported": True}


async def test_bad_requests_get_openai_shaped_400s(client: Client) -> None:
    resp = await client.post(CHAT, data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (await client.post(CHAT, json={"messages": []})).status == 400
    assert (await client.post(CHAT, json={"model": "m"})).status == 400
    assert (await client.post("/v1/embeddings", json={"model": "m"})).status == 400


async def test_every_response_carries_ratelimit_headers_and_request_id(client: Client) -> None:
    first = await client.post(CHAT, json=HELLO)
    second = await client.post(CHAT, json=HELLO)
    error = await client.post(CHAT, json={})
    for resp in (first, second, error):
        assert resp.headers["x-request-id"].startswith("req_")
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in (first, second)]
    assert remaining[1] < remaining[0]
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < int(
        first.headers["x-ratelimit-remaining-tokens"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_requests_are_recorded_with_key_model_and_stream(
    client: Client, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.post(CHAT, json=HELLO, headers={"Authorization": "Bearer sk-a"})
    await post_stream(client, HELLO)
    await client.post("/v1/messages", json=HELLO, headers={"x-api-key": "sk-b"})
    first, second, third = fake.requests
    assert (first.path, first.api_key, first.model, first.stream) == (CHAT, "sk-a", "m", False)
    assert first.body == HELLO and first.headers["authorization"] == "Bearer sk-a"
    assert second.stream and second.api_key is None
    assert third.api_key == "sk-b"

    monkeypatch.setattr(fake_upstream, "_RECORD_CAP", 10)
    for _ in range(12):
        await client.post(CHAT, json=HELLO)
    assert len(fake.requests) <= 11 and fake.total_requests == 15


# ---------------------------------------------------------------- faults


async def test_fault_applies_the_given_number_of_times(client: Client, fake: FakeUpstream) -> None:
    fake.add_fault(Fault(status=429, times=2, retry_after="3"))
    statuses = []
    for _ in range(3):
        resp = await client.post(CHAT, json=HELLO)
        statuses.append(resp.status)
        if resp.status == 429:
            assert resp.headers["Retry-After"] == "3"
            assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
    assert statuses == [429, 429, 200]


async def test_fault_only_hits_its_key_and_path(client: Client, fake: FakeUpstream) -> None:
    fake.add_fault(Fault(status=401, times=None, key="bad", path=CHAT))
    assert (await client.post(CHAT, json=HELLO, headers={"x-api-key": "good"})).status == 200
    assert (await client.post(CHAT, json=HELLO, headers={"x-api-key": "bad"})).status == 401
    assert (await client.post(CHAT, json=HELLO, headers={"Authorization": "Bearer bad"})
            ).status == 401
    body = {"model": "m", "prompt": "p"}
    headers = {"x-api-key": "bad"}
    assert (await client.post("/v1/completions", json=body, headers=headers)).status == 200
    fake.clear_faults()
    assert (await client.post(CHAT, json=HELLO, headers={"x-api-key": "bad"})).status == 200


async def test_fault_with_raw_body_sends_it_verbatim(client: Client, fake: FakeUpstream) -> None:
    fake.add_fault(Fault(status=200, body=b'{"choices": [tru'))
    resp = await client.post(CHAT, json=HELLO)
    assert resp.status == 200 and await resp.read() == b'{"choices": [tru'


async def test_cut_stream_drops_the_connection_without_done(
    client: Client, fake: FakeUpstream
) -> None:
    fake.add_fault(Fault(status=0, cut_after_chunks=3))
    # A cut is for streams: a plain request passes untouched and leaves it armed.
    assert (await client.post(CHAT, json=HELLO)).status == 200
    resp = await client.post(CHAT, json={**HELLO, "stream": True})
    assert resp.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for piece in resp.content.iter_any():
            received += piece
    events = sse_data(received.decode())
    assert len(events) == 3 and "[DONE]" not in events
    assert len(await post_stream(client, HELLO)) == 19  # the fault was used up


async def test_hang_fault_delays_the_headers(client: Client, fake: FakeUpstream) -> None:
    fake.add_fault(Fault(status=0, hang_s=0.3))
    with pytest.raises(asyncio.TimeoutError):
        await client.post(CHAT, json=HELLO, timeout=aiohttp.ClientTimeout(total=0.05))
    assert (await client.post(CHAT, json=HELLO)).status == 200


async def test_shutdown_does_not_wait_for_a_hung_request(aiohttp_server: AiohttpServer) -> None:
    fake = FakeUpstream()
    fake.add_fault(Fault(status=0, hang_s=60))
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(session.post(server.make_url(CHAT), json=HELLO))
        await eventually(lambda: bool(fake.requests))
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 1
        (await pending).close()


async def test_client_leaving_mid_stream_logs_nothing(
    client: Client, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fake.tokens_per_second = 100
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    resp = await client.post(CHAT, json={**HELLO, "stream": True})
    await resp.content.readline()
    resp.close()
    await asyncio.sleep(0.25)  # the server keeps writing into the closed connection
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_latency_and_pacing(client: Client, fake: FakeUpstream) -> None:
    fake.latency_ms, fake.tokens_per_second = 50, 200
    started = time.monotonic()
    await post_stream(client, {**HELLO, "max_tokens": 10})
    # 50 ms latency + 12 paced frames after the first at 5 ms each
    assert time.monotonic() - started >= 0.1


# ---------------------------------------------------------------- control routes


async def test_control_routes_drive_faults_settings_and_requests(
    client: Client, fake: FakeUpstream
) -> None:
    resp = await client.post("/_fake/faults", json={"status": 502, "body": "oops", "times": 1})
    assert resp.status == 200 and (await resp.json()) == {"faults": 1}
    resp = await client.post(CHAT, json=HELLO)
    assert resp.status == 502 and await resp.read() == b"oops"
    assert (await client.post("/_fake/faults", json={"stauts": 500})).status == 400
    assert (await client.post("/_fake/faults", json={"status": "500"})).status == 400
    every_field = {"status": 0, "times": 1, "key": "k", "retry_after": 2, "hang_s": 0,
                   "cut_after_chunks": 1, "body": "", "path": "/x"}
    assert set(every_field) == {f.name for f in dataclasses.fields(Fault)}
    assert (await client.post("/_fake/faults", json=every_field)).status == 200
    await client.post("/_fake/faults", json={"status": 500, "times": None})
    assert (await client.delete("/_fake/faults")).status == 200
    assert (await client.post(CHAT, json=HELLO)).status == 200

    resp = await client.post("/_fake/settings", json={"latency_ms": 5, "tokens_per_second": 0})
    settings = await resp.json()
    assert (settings["latency_ms"], settings["tokens_per_second"]) == (5.0, 0.0)
    assert fake.latency_ms == 5.0
    assert (await client.post("/_fake/settings", json={"latency_ms": -1})).status == 400
    for bad in ({"models_wire": "ollama"}, {"models": []}, {"models": [{"id": 1}]},
                {"models": [{"id": "m", "context_length": "big"}]}):
        assert (await client.post("/_fake/settings", json=bad)).status == 400
    assert fake.models_wire == "openai" and fake.latency_ms == 5.0

    listing = await (await client.get("/_fake/requests")).json()
    assert listing["count"] == 2
    assert listing["recent"][-1] == {"path": CHAT, "api_key": None, "model": "m",
                                     "stream": False}


# ---------------------------------------------------------------- Anthropic routes


ANTHROPIC: dict[str, Any] = {"model": "claude", "max_tokens": 5, "system": "be brief",
             "messages": [{"role": "user", "content": "hello there"}]}


async def test_anthropic_message_shape(client: Client) -> None:
    data = await (await client.post("/v1/messages", json=ANTHROPIC)).json()
    assert data["id"].startswith("msg_") and data["type"] == "message"
    assert data["role"] == "assistant" and data["model"] == "claude"
    assert data["content"] == [{"type": "text", "text": "lorem ipsum dolor sit amet"}]
    assert data["stop_reason"] == "max_tokens" and data["stop_sequence"] is None
    assert data["usage"] == {"input_tokens": 11, "output_tokens": 5}
    count = await (await client.post("/v1/messages/count_tokens", json=ANTHROPIC)).json()
    assert count == {"input_tokens": 11}


async def test_anthropic_tool_use_until_a_tool_result(client: Client) -> None:
    body = {**ANTHROPIC, "tools": [{"name": "get_weather", "input_schema": {}}]}
    data = await (await client.post("/v1/messages", json=body)).json()
    block = data["content"][0]
    assert data["stop_reason"] == "tool_use" and block["type"] == "tool_use"
    assert block["id"].startswith("toolu_") and block["name"] == "get_weather"
    assert block["input"] == {"location": "Paris"}
    body["messages"] = [*body["messages"], {"role": "assistant", "content": [block]},
                        {"role": "user", "content": [{"type": "tool_result",
                                                      "tool_use_id": block["id"],
                                                      "content": "sunny"}]}]
    data = await (await client.post("/v1/messages", json=body)).json()
    assert data["stop_reason"] == "max_tokens" and data["content"][0]["type"] == "text"


async def test_anthropic_stream_event_order(client: Client) -> None:
    resp = await client.post("/v1/messages", json={**ANTHROPIC, "stream": True})
    frames = [f.split("\n") for f in (await resp.text()).split("\n\n") if f]
    names = [f[0].removeprefix("event: ") for f in frames]
    datas = [orjson.loads(f[1].removeprefix("data: ")) for f in frames]
    assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 5,
                     "content_block_stop", "message_delta", "message_stop"]
    assert [d["type"] for d in datas] == names
    assert datas[0]["message"]["content"] == []
    assert datas[0]["message"]["usage"] == {"input_tokens": 11, "output_tokens": 1}
    assert "".join(d["delta"]["text"] for d in datas[3:8]) == "lorem ipsum dolor sit amet"
    assert datas[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert datas[-2]["usage"] == {"output_tokens": 5}


def test_anthropic_tool_stream_streams_the_input_as_json() -> None:
    body = {**ANTHROPIC, "tools": [{"name": "get_weather", "input_schema": {}}]}
    events = messages_events(body, "claude")
    assert events[1][1]["content_block"]["input"] == {}
    deltas = [d for name, d in events if name == "content_block_delta"]
    assert {d["delta"]["type"] for d in deltas} == {"input_json_delta"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    partial = "".join(d["delta"]["partial_json"] for d in deltas)
    assert orjson.loads(partial) == {"location": "Paris"}


async def test_anthropic_errors_are_anthropic_shaped(client: Client, fake: FakeUpstream) -> None:
    resp = await client.post("/v1/messages", json={"messages": []})
    assert resp.status == 400
    assert (await resp.json())["type"] == "error"
    fake.add_fault(Fault(status=529))
    data = await (await client.post("/v1/messages", json=ANTHROPIC)).json()
    assert data == {"type": "error", "error": {"type": "overloaded_error",
                                               "message": "injected fault (529)"}}


# ---------------------------------------------------------------- real SDKs and the CLI entry


async def test_openai_sdk_reads_chat_stream_and_embeddings(aiohttp_server: AiohttpServer) -> None:
    import openai

    server = await aiohttp_server(FakeUpstream().app())
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k") as sdk:
        chat = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert chat.choices[0].message.content == "lorem ipsum dolor"
        stream = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        pieces, usage = [], None
        async for chunk in stream:
            pieces += [c.delta.content or "" for c in chunk.choices]
            usage = chunk.usage or usage
        assert "".join(pieces).split() == SIXTEEN_WORDS
        assert usage is not None and usage.completion_tokens == 16
        vectors = await sdk.embeddings.create(model="e", input=["a", "b"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8


async def test_anthropic_sdk_reads_the_message_stream(aiohttp_server: AiohttpServer) -> None:
    import anthropic

    server = await aiohttp_server(FakeUpstream().app())
    sdk = anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="k")
    async with sdk, sdk.messages.stream(
        model="claude", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = await stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == "lorem ipsum dolor"
    assert message.usage.output_tokens == 3 and message.stop_reason == "max_tokens"


async def test_serve_fake_upstream_announces_its_address(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = asyncio.create_task(serve_fake_upstream("127.0.0.1", 0, 0.0, 0.0))
    out = ""

    def announced() -> bool:
        nonlocal out
        out += capsys.readouterr().out
        return bool(out)

    try:
        await eventually(announced)
        assert out.startswith("fake-upstream listening on http://127.0.0.1:")
        url = out.strip().rsplit(" ", 1)[1]
        async with aiohttp.ClientSession() as session, session.get(url + "/v1/models") as resp:
            assert resp.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------- per-key prompt cache


async def _chat_usage(client: Client, key: str, messages: list[dict[str, Any]],
                      stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": messages}
    headers = {"Authorization": f"Bearer {key}"}
    if not stream:
        resp = await client.post(CHAT, json=body, headers=headers)
        usage: dict[str, Any] = (await resp.json())["usage"]
        return usage
    resp = await client.post(CHAT, headers=headers, json={
        **body, "stream": True, "stream_options": {"include_usage": True}})
    datas = sse_data(await resp.text())
    last: dict[str, Any] = orjson.loads(datas[-2])["usage"]
    return last


async def test_prompt_cache_reports_the_prefix_the_same_key_sent_before(
        aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(FakeUpstream(prompt_cache_ttl_s=60).app())
    turn1 = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "q" * 40}]
    first = await _chat_usage(client, "sk-a", turn1)
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    turn2 = [*turn1, {"role": "assistant", "content": "a" * 40},
             {"role": "user", "content": "r" * 40}]
    second = await _chat_usage(client, "sk-a", turn2, stream=True)
    # All of turn 1 (103 + 13 tokens) is cached; the two new messages are not.
    assert second["prompt_tokens_details"] == {"cached_tokens": 116}
    assert second["prompt_tokens"] == 116 + 13 + 13
    # Another key has its own cache, and so does the same key once the prefix changes.
    assert (await _chat_usage(client, "sk-b", turn2))["prompt_tokens_details"] == {
        "cached_tokens": 0}
    edited = [{"role": "system", "content": "t" * 400}, *turn2[1:]]
    assert (await _chat_usage(client, "sk-a", edited))["prompt_tokens_details"] == {
        "cached_tokens": 0}


async def test_prompt_cache_entries_expire_after_the_ttl(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(FakeUpstream(prompt_cache_ttl_s=0.05).app())
    turn = [{"role": "user", "content": "q" * 40}]
    await _chat_usage(client, "sk-a", turn)
    await asyncio.sleep(0.2)
    assert (await _chat_usage(client, "sk-a", turn))["prompt_tokens_details"] == {
        "cached_tokens": 0}


async def test_prompt_cache_in_anthropic_usage(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(FakeUpstream(prompt_cache_ttl_s=60).app())
    body = {"model": "m", "max_tokens": 5, "system": "s" * 400,
            "messages": [{"role": "user", "content": "q" * 40}]}
    headers = {"x-api-key": "sk-a"}
    await client.post("/v1/messages", json=body, headers=headers)
    body["messages"] = [*body["messages"], {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "more"}]
    resp = await client.post("/v1/messages", json=body, headers=headers)
    usage = (await resp.json())["usage"]
    # Anthropic's input_tokens leaves out the cache read.
    assert usage == {"input_tokens": 8, "cache_read_input_tokens": 116, "output_tokens": 5}
    resp = await client.post("/v1/messages", json={**body, "stream": True}, headers=headers)
    start = orjson.loads(sse_data(await resp.text())[0].split("data: ", 1)[1])
    assert start["message"]["usage"]["cache_read_input_tokens"] == 124


async def test_prompt_cache_is_off_unless_asked(client: Client) -> None:
    usage = await _chat_usage(client, "sk-a", HELLO["messages"])
    assert "prompt_tokens_details" not in usage
