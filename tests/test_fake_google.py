"""The fake's Google side, spoken to in Google's wire format directly (no router): it
must refuse what Google refuses, or the router's tests against it prove nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from llm_router.providers.vertex.token import assertion, load_account
from llm_router.testing.upstream import FakeUpstream

from .google_keys import service_account

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
KEY = {"x-goog-api-key": "gk-test"}
HELLO = {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}
TOOL = {"functionDeclarations": [{"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}]}


async def _post(client: Any, path: str, body: Any, headers: dict[str, str] | None = None
                ) -> tuple[int, Any]:
    resp = await client.post(path, data=orjson.dumps(body), headers=headers or KEY)
    return resp.status, orjson.loads(await resp.read())


async def test_an_answer_has_candidates_and_usage(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(FakeUpstream().app())
    status, doc = await _post(client, GENERATE, HELLO)
    assert status == 200
    candidate = doc["candidates"][0]
    assert candidate["finishReason"] == "STOP" and candidate["content"]["role"] == "model"
    assert set(doc["usageMetadata"]) == {"promptTokenCount", "candidatesTokenCount",
                                         "thoughtsTokenCount", "totalTokenCount"}


@pytest.mark.parametrize(("body", "message"), [
    ({**HELLO, "temperature": 1}, 'Unknown name "temperature"'),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
    ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png",
                                                              "data": "not base64!"}}]}]},
     "Base64 decoding failed"),
    ({**HELLO, "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}},
        "additionalProperties": False}}]}]}, 'Unknown name "additionalProperties"'),
    ({**HELLO, "generationConfig": {"max_tokens": 5}}, 'Unknown name "max_tokens"'),
    ({**HELLO, "generationConfig": {"responseSchema": {"type": "object", "properties": {
        "a": {"type": "string"}}}}}, "needs responseMimeType"),
    ({"contents": [{"role": "user", "parts": [{"functionResponse": {
        "name": "weather", "response": {"temp": 1}}}]}]}, "answers no function call"),
], ids=["unknown-field", "assistant-role", "empty-parts", "no-contents", "bad-base64",
        "schema-keyword", "openai-name", "schema-without-json", "orphan-response"])
async def test_what_google_refuses_is_refused(aiohttp_client: AiohttpClient,
                                              body: dict[str, Any], message: str) -> None:
    client = await aiohttp_client(FakeUpstream().app())
    status, doc = await _post(client, GENERATE, body)
    assert status == 400 and doc["error"]["status"] == "INVALID_ARGUMENT"
    assert message in doc["error"]["message"]


async def test_a_function_call_must_come_back_with_its_signature(
        aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(FakeUpstream().app())
    status, doc = await _post(client, GENERATE, {**HELLO, "tools": [TOOL]})
    part = doc["candidates"][0]["content"]["parts"][0]
    assert status == 200 and part["functionCall"]["name"] == "weather"
    result = {"role": "user", "parts": [{"functionResponse": {"name": "weather",
                                                              "response": {"temp": 21}}}]}
    unsigned = {"role": "model", "parts": [{"functionCall": part["functionCall"]}]}
    status, doc = await _post(client, GENERATE, {
        "contents": [*HELLO["contents"], unsigned, result], "tools": [TOOL]})
    assert status == 400 and "missing a thought_signature" in doc["error"]["message"]
    signed = {"role": "model", "parts": [part]}
    status, doc = await _post(client, GENERATE, {
        "contents": [*HELLO["contents"], signed, result], "tools": [TOOL]})
    assert status == 200 and "text" in doc["candidates"][0]["content"]["parts"][0]


async def test_a_stream_is_whole_responses_with_running_usage_and_no_done(
        aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(FakeUpstream().app())
    resp = await client.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                             data=orjson.dumps(HELLO), headers=KEY)
    raw = await resp.read()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [orjson.loads(e[6:]) for e in raw.split(b"\r\n\r\n") if e]
    assert b"[DONE]" not in raw and len(events) > 1
    totals = [e["usageMetadata"]["candidatesTokenCount"] for e in events]
    assert totals == sorted(totals) and totals[-1] == 12  # a running total, not deltas
    assert [e["candidates"][0].get("finishReason") for e in events][-1] == "STOP"


async def test_models_are_listed_page_by_page(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(FakeUpstream().app())
    names: list[str] = []
    token = ""
    for _ in range(10):
        resp = await client.get(f"/v1beta/models?pageSize=4&pageToken={token}", headers=KEY)
        doc = await resp.json()
        names += [m["name"] for m in doc["models"]]
        token = doc.get("nextPageToken", "")
        if not token:
            break
    assert len(names) == 6 and all(n.startswith("models/") for n in names)


async def test_vertex_needs_a_token_from_a_trusted_assertion(
        aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    fake = FakeUpstream()
    client = await aiohttp_client(fake.app())
    vertex = ("/v1/projects/p/locations/us-central1/publishers/google/models/"
              "gemini-2.5-flash:generateContent")
    status, _ = await _post(client, vertex, HELLO, {"Authorization": "Bearer made-up"})
    assert status == 401
    token_uri = str(client.make_url("/token"))
    path, _ = service_account(tmp_path, fake, token_uri)
    jwt = assertion(load_account(str(path)), int(fake.google.clock()))
    tampered = jwt[:-4] + ("AAAA" if not jwt.endswith("AAAA") else "BBBB")
    for bad, reason in ((tampered, "Invalid JWT Signature"),):
        resp = await client.post("/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": bad})
        assert resp.status == 400 and reason in (await resp.json())["error_description"]
    resp = await client.post("/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt})
    token = (await resp.json())["access_token"]
    status, doc = await _post(client, vertex, HELLO, {"Authorization": f"Bearer {token}"})
    assert status == 200 and doc["candidates"]
    assert fake.google.token_requests == 2


async def test_vertex_claude_takes_messages_without_model(aiohttp_client: AiohttpClient,
                                                          tmp_path: Path) -> None:
    fake = FakeUpstream()
    client = await aiohttp_client(fake.app())
    path, _ = service_account(tmp_path, fake, str(client.make_url("/token")))
    jwt = assertion(load_account(str(path)), int(fake.google.clock()))
    resp = await client.post("/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt})
    auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    raw_predict = ("/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
                   "claude-sonnet-4-5@20250929:rawPredict")
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20}
    status, doc = await _post(client, raw_predict, {**body, "model": "claude"}, auth)
    assert status == 400 and "model" in doc["error"]["message"]
    status, doc = await _post(client, raw_predict, body, auth)
    assert status == 400 and "anthropic_version" in doc["error"]["message"]
    status, doc = await _post(client, raw_predict,
                              {**body, "anthropic_version": "vertex-2023-10-16"}, auth)
    assert status == 200 and doc["type"] == "message"


async def test_another_process_can_register_a_trusted_key(aiohttp_client: AiohttpClient,
                                                          tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    fake = FakeUpstream()
    client = await aiohttp_client(fake.app())
    stranger = FakeUpstream()  # trusts the new account: this fake does not, yet
    path, key = service_account(tmp_path, stranger, str(client.make_url("/token")))
    jwt = assertion(load_account(str(path)), int(fake.google.clock()))
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt}
    assert (await client.post("/token", data=form)).status == 400
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    resp = await client.post("/_fake/google/trust", json={
        "client_email": "router@test-project.iam.gserviceaccount.com",
        "public_key": pem.decode()})
    assert resp.status == 200
    assert (await client.post("/token", data=form)).status == 200
