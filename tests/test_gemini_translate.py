"""The Gemini translators, data in and data out (no sockets): hub request → Gemini
request, Gemini answers and streams → hub, Google errors, embeddings, model pages."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from llm_router.providers.gemini.answer import StreamToChat, chat_completion, chat_usage
from llm_router.providers.gemini.embed import embeddings_answer, embeddings_request
from llm_router.providers.gemini.errors import google_error, retry_delay_s
from llm_router.providers.gemini.models import models_page, models_url
from llm_router.providers.gemini.request import (
    Refused,
    call_id,
    generate_request,
    split_call_id,
)

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


# ---------------------------------------------------------------- requests


def test_roles_system_and_merging() -> None:
    body = generate_request({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": [{"type": "text", "text": "there"}]},
        {"role": "developer", "content": "Use French."},
        {"role": "assistant", "content": "Salut"},
    ]})
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nUse French."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}]},
        {"role": "model", "parts": [{"text": "Salut"}]},
    ]


def test_images_data_url_inline_and_http_url_file() -> None:
    body = generate_request({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?x=1"}},
        {"type": "image_url", "image_url": "gs://bucket/dog.jpg"},
    ]}]})
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?x=1"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/dog.jpg"}},
    ]


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "ftp://host/x.png"}},
    {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}},
    {"type": "file", "file": {"file_id": "file-123"}},
    {"type": "refusal", "refusal": "no"},
], ids=["ftp-url", "non-base64-data-url", "file-id", "unknown-part"])
def test_parts_gemini_cannot_take_are_refused(part: dict[str, Any]) -> None:
    with pytest.raises(Refused) as caught:
        generate_request({"messages": [{"role": "user", "content": [part]}]})
    assert caught.value.param == "messages[0].content[0]"


def test_tool_round_trip_keeps_the_signature_and_finds_the_name() -> None:
    signature = base64.b64encode(b"\x01\xfe\xff" * 11).decode()  # has '/' and '+'
    ident = call_id(signature)
    assert set(ident) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert split_call_id(ident)[1] == signature
    body = generate_request({"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": ident, "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_plain", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Lyon"}'}}]},
        {"role": "tool", "tool_call_id": ident, "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_plain", "content": "rainy"},
    ]})
    model, results = body["contents"][1], body["contents"][2]
    assert model["parts"] == [
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
         "thoughtSignature": signature},
        {"functionCall": {"name": "weather", "args": {"city": "Lyon"}}},
    ]
    assert results == {"role": "user", "parts": [
        {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
        {"functionResponse": {"name": "weather", "response": {"output": "rainy"}}},
    ]}


def test_a_request_left_without_content_is_refused() -> None:
    with pytest.raises(Refused, match="No message has content") as caught:
        generate_request({"messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": ""}]})
    assert caught.value.param == "messages"


def test_a_tool_result_for_no_known_call_is_refused() -> None:
    with pytest.raises(Refused, match="matches no earlier assistant tool call"):
        generate_request({"messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "call_nowhere", "content": "42"}]})


def test_plain_schemas_go_as_parameters_others_as_json_schema() -> None:
    strict = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "const": "x"}},
        "additionalProperties": False, "$defs": {}}}}
    nullable = {"type": "function", "function": {"name": "maybe", "parameters": {
        "type": "object", "properties": {"q": {"type": ["string", "null"]}}}}}
    bare = {"type": "function", "function": {"name": "now", "parameters": {
        "type": "object", "properties": {}}}}
    body = generate_request({"messages": [{"role": "user", "content": "x"}],
                             "tools": [WEATHER, strict, nullable, bare],
                             "tool_choice": {"type": "function",
                                             "function": {"name": "lookup"}}})
    first, second, third, fourth = body["tools"][0]["functionDeclarations"]
    assert first["parameters"] == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert "parametersJsonSchema" not in first
    assert second["parametersJsonSchema"] == strict["function"]["parameters"]  # type: ignore[index]
    assert "parameters" not in second
    assert "parametersJsonSchema" in third
    assert fourth == {"name": "now"}  # Gemini refuses an OBJECT with empty properties
    assert body["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["lookup"]}}


@pytest.mark.parametrize(("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"),
                                              ("required", "ANY")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    body = generate_request({"messages": [{"role": "user", "content": "x"}],
                             "tools": [WEATHER], "tool_choice": choice})
    assert body["toolConfig"]["functionCallingConfig"] == {"mode": mode}


def test_non_function_tools_are_refused() -> None:
    with pytest.raises(Refused) as caught:
        generate_request({"messages": [{"role": "user", "content": "x"}],
                          "tools": [{"type": "web_search"}]})
    assert caught.value.param == "tools[0]"


def test_generation_config_and_json_modes() -> None:
    body = generate_request({
        "messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "top_p": 0.9,
        "max_completion_tokens": 77, "stop": "END", "seed": 7, "n": 2,
        "reasoning_effort": "low", "response_format": {"type": "json_object"}})
    assert body["generationConfig"] == {
        "temperature": 0.2, "topP": 0.9, "seed": 7, "maxOutputTokens": 77,
        "stopSequences": ["END"], "candidateCount": 2,
        "thinkingConfig": {"thinkingBudget": 1024}, "responseMimeType": "application/json"}
    plain = {"type": "object", "properties": {"name": {"type": "string"}}}
    rich = {**plain, "additionalProperties": False}
    for schema, field in ((plain, "responseSchema"), (rich, "responseJsonSchema")):
        cfg = generate_request({"messages": [{"role": "user", "content": "x"}],
                                "response_format": {"type": "json_schema", "json_schema": {
                                    "name": "n", "schema": schema}}})["generationConfig"]
        assert cfg == {"responseMimeType": "application/json", field: schema}


# ---------------------------------------------------------------- answers


def _usage_meta(**counts: int) -> dict[str, int]:
    return {f"{name}TokenCount": n for name, n in counts.items()}


def test_usage_counts_thoughts_as_completion_and_cached_from_cached_content() -> None:
    usage = chat_usage({"promptTokenCount": 100, "cachedContentTokenCount": 60,
                        "candidatesTokenCount": 20, "thoughtsTokenCount": 30,
                        "toolUsePromptTokenCount": 5, "totalTokenCount": 155})
    assert usage == {"prompt_tokens": 105, "completion_tokens": 50, "total_tokens": 155,
                     "prompt_tokens_details": {"cached_tokens": 60},
                     "completion_tokens_details": {"reasoning_tokens": 30}}


def test_answer_with_text_thought_and_function_call() -> None:
    signature = base64.b64encode(b"sig-bytes").decode()
    doc = {"responseId": "r1", "candidates": [{"index": 0, "finishReason": "STOP", "content": {
        "role": "model", "parts": [
            {"text": "thinking...", "thought": True},
            {"text": "Let me check."},
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
             "thoughtSignature": signature}]}}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4}}
    answer = chat_completion(doc, "gemini-2.5-flash")
    choice = answer["choices"][0]
    assert answer["id"] == "chatcmpl-r1" and answer["model"] == "gemini-2.5-flash"
    assert choice["message"]["content"] == "Let me check."
    assert choice["finish_reason"] == "tool_calls"  # Gemini says STOP when it calls
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert split_call_id(call["id"])[1] == signature


@pytest.mark.parametrize(("reason", "mapped"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("RECITATION", "stop"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("SOMETHING_NEW", "stop")])
def test_finish_reasons(reason: str, mapped: str) -> None:
    doc = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    assert chat_completion(doc, "m")["choices"][0]["finish_reason"] == mapped


def test_a_blocked_prompt_is_an_empty_content_filter_answer() -> None:
    answer = chat_completion({"promptFeedback": {"blockReason": "SAFETY"},
                              "usageMetadata": {"promptTokenCount": 5}}, "m")
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": None},
                                  "finish_reason": "content_filter", "logprobs": None}]
    assert answer["usage"]["prompt_tokens"] == 5


def _event(text: str, candidates: int, finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]},
                                 "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "responseId": "r9", "usageMetadata": {
        "promptTokenCount": 10, "candidatesTokenCount": candidates, "thoughtsTokenCount": 7,
        "cachedContentTokenCount": 4}}


def test_stream_usage_is_the_last_running_total_never_the_sum() -> None:
    chat = StreamToChat("m")
    chunks = [c for e in (_event("Hel", 1), _event("lo", 2), _event("!", 3, "STOP"))
              for c in chat.feed(e)]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Hel", "lo", "!"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    (last,) = chat.finish()
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 10
    assert last["usage"]["completion_tokens"] == 3 + 7
    assert last["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


def test_a_stream_of_two_candidates_ends_when_both_have_finished() -> None:
    chat = StreamToChat("m")
    both = {"candidates": [{"index": 0, "content": {"parts": [{"text": "a"}]}},
                           {"index": 1, "content": {"parts": [{"text": "b"}]}}]}
    chat.feed(both)
    chat.feed({"candidates": [{"index": 0, "finishReason": "STOP",
                               "content": {"parts": [{"text": "."}]}}]})
    assert not chat.finished
    chat.feed({"candidates": [{"index": 1, "finishReason": "MAX_TOKENS",
                               "content": {"parts": [{"text": "!"}]}}]})
    assert chat.finished


def test_a_stream_without_finish_reason_gets_no_ending() -> None:
    chat = StreamToChat("m")
    chat.feed(_event("partial", 1))
    assert chat.finish() == []


def test_stream_function_calls_are_indexed_and_finish_as_tool_calls() -> None:
    chat = StreamToChat("m")
    calls = {"candidates": [{"index": 0, "content": {"parts": [
        {"functionCall": {"name": "a", "args": {}}},
        {"functionCall": {"name": "b", "args": {"x": 1}}}]}}]}
    more = {"candidates": [{"index": 0, "finishReason": "STOP", "content": {"parts": [
        {"functionCall": {"name": "c", "args": {}}}]}}]}
    first, second = chat.feed(calls), chat.feed(more)
    assert [c["index"] for c in first[0]["choices"][0]["delta"]["tool_calls"]] == [0, 1]
    assert [c["index"] for c in second[0]["choices"][0]["delta"]["tool_calls"]] == [2]
    assert second[0]["choices"][0]["finish_reason"] == "tool_calls"


def test_an_error_event_becomes_an_in_band_error_and_ends_the_stream() -> None:
    chat = StreamToChat("m")
    chat.feed(_event("Hel", 1))
    usage, chunk = chat.feed({"error": {"code": 503, "message": "The model is overloaded.",
                                        "status": "UNAVAILABLE"}})
    # The running total reported before the error, for the router to count.
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == 10
    assert chunk == {"error": {"message": "The model is overloaded.", "type": "upstream_error",
                               "param": None, "code": "UNAVAILABLE"}}
    assert chat.finish() == []


# ---------------------------------------------------------------- errors


def test_rate_limit_error_gives_retry_delay() -> None:
    raw = orjson.dumps({"error": {"code": 429, "message": "Quota exceeded",
                                  "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "35s"}]}})
    err = google_error(429, raw)
    assert err.status == 429 and err.retry_after_s == 35.0
    assert err.body["error"]["type"] == "rate_limit_error"
    assert err.body["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert err.body["error"]["message"] == "Quota exceeded"


def test_an_invalid_api_key_reads_as_401() -> None:
    raw = orjson.dumps({"error": {"code": 400, "message": "API key not valid.",
                                  "status": "INVALID_ARGUMENT", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}})
    assert google_error(400, raw).status == 401
    plain = orjson.dumps({"error": {"code": 400, "message": "bad field",
                                    "status": "INVALID_ARGUMENT"}})
    assert google_error(400, plain).status == 400


def test_a_non_google_error_body_still_gives_a_message() -> None:
    err = google_error(502, b"<html>Bad Gateway</html>")
    assert err.status == 502 and "Bad Gateway" in err.body["error"]["message"]
    assert err.body["error"]["type"] == "server_error"


@pytest.mark.parametrize(("delay", "seconds"), [("35s", 35.0), ("1.5s", 1.5), ("0s", 0.0),
                                                ("35", None), ("soon", None)])
def test_retry_delay_formats(delay: str, seconds: float | None) -> None:
    assert retry_delay_s([{"retryDelay": delay}]) == seconds


# ---------------------------------------------------------------- embeddings, models


def test_embeddings_round_trip_with_base64() -> None:
    body, tokens = embeddings_request({"input": ["hello", "world!!"], "dimensions": 3},
                                      "text-embedding-004")
    assert body == {"requests": [
        {"model": "models/text-embedding-004", "outputDimensionality": 3,
         "content": {"parts": [{"text": "hello"}]}},
        {"model": "models/text-embedding-004", "outputDimensionality": 3,
         "content": {"parts": [{"text": "world!!"}]}}]}
    assert tokens == 4
    doc = {"embeddings": [{"values": [0.5, -1.0, 0.25]}, {"values": [1.0, 0.0, 2.0]}]}
    floats = embeddings_answer(doc, "text-embedding-004", None, tokens)
    assert floats["data"][1]["embedding"] == [1.0, 0.0, 2.0]
    assert floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    packed = embeddings_answer(doc, "text-embedding-004", "base64", tokens)
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (0.5, -1.0, 0.25)


def test_token_id_inputs_are_refused() -> None:
    with pytest.raises(Refused):
        embeddings_request({"input": [1, 2, 3]}, "m")


def test_model_pages() -> None:
    models, token = models_page({"models": [
        {"name": "models/gemini-2.5-flash", "inputTokenLimit": 1048576,
         "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent"]},
        {"displayName": "no name"}], "nextPageToken": "abc/="})
    assert [m.id for m in models] == ["gemini-2.5-flash"]
    assert models[0].input_tokens == 1048576 and models[0].methods == ("generateContent",)
    assert token == "abc/="
    assert models_url("https://g", token).endswith("pageSize=1000&pageToken=abc%2F%3D")
    assert models_page({"models": []}) == ([], None)
