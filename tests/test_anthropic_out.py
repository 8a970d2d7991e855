"""OpenAI chat clients on Anthropic upstreams: requests, answers, streams, errors."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson
import pytest

from llm_router.dialects.anthropic import chat_to_message, messages_to_chat
from llm_router.dialects.anthropic_wire import openai_error_to_anthropic
from llm_router.hub.sse import SSEParser, event_fields
from llm_router.providers.anthropic.translate import (
    MessagesStreamToChat,
    anthropic_error_to_openai,
    chat_to_messages,
    message_to_chat,
)

WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _request(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fast",
                            "messages": list(messages) or [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def _chunks(sse: bytes) -> list[Any]:
    """Each ``data:`` payload, parsed, with ``[DONE]`` kept as the string."""
    parser = SSEParser()
    out: list[Any] = []
    for raw in parser.feed(sse):
        event, data = event_fields(raw)
        assert event is None
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    assert parser.tail() == b""
    return out


def _feed_all(t: MessagesStreamToChat, events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(t.feed(kind, data) for kind, data in events)


def _message_start(input_tokens: int = 25, **usage: int) -> tuple[str, dict[str, Any]]:
    return ("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage}}})


def _text_events(*pieces: str) -> list[tuple[str, dict[str, Any]]]:
    start = {"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}
    events: list[tuple[str, dict[str, Any]]] = [("content_block_start", start),
                                                ("ping", {"type": "ping"})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": p}})
               for p in pieces]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    return events


def _message_end(stop_reason: str = "end_turn", output_tokens: int = 15
                 ) -> list[tuple[str, dict[str, Any]]]:
    return [("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": output_tokens}}),
            ("message_stop", {"type": "message_stop"})]


TOOL_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
]


# --- requests -------------------------------------------------------------------------

def test_system_and_developer_messages_become_the_system_prompt() -> None:
    body = _request({"role": "system", "content": "Be terse."},
                    {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                    {"role": "user", "content": "hi"})
    out = chat_to_messages(body, "claude-x")
    assert out == {"model": "claude-x", "max_tokens": 4096, "system": "Be terse.\n\nUse French.",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_consecutive_same_role_messages_are_merged() -> None:
    body = _request({"role": "user", "content": "one"}, {"role": "user", "content": "two"},
                    {"role": "assistant", "content": "ok"}, {"role": "assistant", "content": ""},
                    {"role": "user", "content": "three"})
    assert chat_to_messages(body, "c")["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"},
                                     {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]


def test_content_parts_and_images_become_blocks() -> None:
    body = _request({"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png",
                                            "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hello"}},
        {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}},
        {"type": "text", "text": ""},
    ]})
    assert chat_to_messages(body, "c")["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": "/9j/4AAQ"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]


def test_assistant_tool_calls_become_tool_use_blocks() -> None:
    body = _request(
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]})
    assert chat_to_messages(body, "c")["messages"][1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]}


def test_tool_messages_become_one_user_turn_of_tool_results() -> None:
    body = _request(
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12°C"},
        {"role": "tool", "tool_call_id": "call_2",
         "content": [{"type": "text", "text": "8°C"}]},
        {"role": "user", "content": "and tomorrow?"})
    messages = chat_to_messages(body, "c")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "12°C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "8°C"},
        {"type": "text", "text": "and tomorrow?"},
    ]


def test_tools_become_anthropic_tools() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    out = chat_to_messages(_request(tools=[WEATHER_FUNCTION, bare]), "c")
    assert out["tools"] == [
        {"name": "get_weather", "description": "Current weather for a city",
         "input_schema": WEATHER_FUNCTION["function"]["parameters"]},  # type: ignore[index]
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice_maps_to_anthropic(choice: Any, expected: dict[str, Any]) -> None:
    out = chat_to_messages(_request(tools=[WEATHER_FUNCTION], tool_choice=choice), "c")
    assert out["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    out = chat_to_messages(_request(tools=[WEATHER_FUNCTION], parallel_tool_calls=False), "c")
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = chat_to_messages(_request(tools=[WEATHER_FUNCTION], tool_choice="required",
                                    parallel_tool_calls=False), "c")
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_max_completion_tokens_wins_over_max_tokens_and_default_applies() -> None:
    assert chat_to_messages(_request(max_tokens=50, max_completion_tokens=70), "c")[
        "max_tokens"] == 70
    assert chat_to_messages(_request(max_tokens=50), "c")["max_tokens"] == 50
    assert chat_to_messages(_request(), "c", default_max_tokens=1234)["max_tokens"] == 1234


def test_sampling_fields_are_mapped_and_unmappable_ones_dropped() -> None:
    out = chat_to_messages(_request(
        temperature=1.6, top_p=0.5, stop="END", stream=True, user="u-42",
        n=1, seed=7, presence_penalty=0.3, frequency_penalty=0.3, logprobs=True,
        response_format={"type": "json_object"}, stream_options={"include_usage": True}), "c")
    assert out == {"model": "c", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}]}], "max_tokens": 4096, "temperature": 1.0,
        "top_p": 0.5, "stop_sequences": ["END"], "stream": True,
        "metadata": {"user_id": "u-42"}}
    assert chat_to_messages(_request(stop=["a", "b"]), "c")["stop_sequences"] == ["a", "b"]
    # Not ours to judge: the upstream's 400 explains a bad value better than we would.
    assert chat_to_messages(_request(temperature="hot"), "c")["temperature"] == "hot"


def test_anthropic_request_survives_a_round_trip_through_openai() -> None:
    original = {
        "model": "claude-x", "max_tokens": 300, "system": "Be terse.", "temperature": 0.3,
        "stop_sequences": ["END"], "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "description": "Weather",
                   "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather in Oslo?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12°C"},
                {"type": "text", "text": "thanks"}]},
        ],
    }
    assert chat_to_messages(messages_to_chat(original, "gpt-x"), "claude-x") == original


# --- answers --------------------------------------------------------------------------

def _message(content: list[dict[str, Any]], stop_reason: str = "end_turn",
             **usage: int) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, **usage}}


def test_message_becomes_chat_completion() -> None:
    out = message_to_chat(_message([{"type": "text", "text": "Hello"},
                                    {"type": "text", "text": " there"}]), "fast")
    assert out["id"] == "chatcmpl-msg_01"
    assert out["object"] == "chat.completion"
    assert isinstance(out["created"], int)
    assert out["model"] == "fast"
    assert out["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "Hello there",
                                           "refusal": None}}]
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_tool_use_becomes_tool_calls() -> None:
    msg = _message([{"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Oslo"}}], "tool_use")
    choice = message_to_chat(msg, "fast")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == (
        "toolu_1", "function", "get_weather")
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Oslo"}


def test_cache_tokens_count_as_prompt_tokens() -> None:
    out = message_to_chat(_message([], cache_read_input_tokens=100,
                                   cache_creation_input_tokens=20), "fast")
    assert out["usage"] == {"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135,
                            "prompt_tokens_details": {"cached_tokens": 100}}
    assert out["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("max_tokens", "length"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
    ("pause_turn", "stop"),
    ("model_context_window_exceeded", "length"),
])
def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish: str) -> None:
    msg = _message([{"type": "text", "text": "x"}], stop_reason)
    assert message_to_chat(msg, "fast")["choices"][0]["finish_reason"] == finish


def test_answer_survives_a_round_trip_through_openai() -> None:
    original = _message([{"type": "text", "text": "Checking."},
                         {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1]}}],
                        "tool_use")
    back = chat_to_message(message_to_chat(original, "fast"), "claude-x")
    assert back["content"] == original["content"]
    assert back["stop_reason"] == "tool_use"
    assert back["usage"] == {"input_tokens": 10, "output_tokens": 5}


# --- streams --------------------------------------------------------------------------

def test_text_stream_becomes_chunks_then_usage_then_done() -> None:
    t = MessagesStreamToChat("fast", include_usage=True)
    sse = _feed_all(t, [_message_start(), *_text_events("Hel", "lo"), *_message_end()])
    chunks = _chunks(sse)
    assert chunks[-1] == "[DONE]"
    first, *deltas, finish, usage, _ = chunks
    assert first["id"] == "chatcmpl-msg_01"
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "fast"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"]["content"] for c in deltas) == "Hello"
    assert len(deltas) == 2
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "stop"}
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}
    assert {c["id"] for c in chunks[:-1]} == {"chatcmpl-msg_01"}
    assert t.done and (t.usage.prompt, t.usage.completion) == (25, 15)
    assert t.finish() == b""


def test_usage_chunk_only_when_the_client_asked() -> None:
    t = MessagesStreamToChat("fast", include_usage=False)
    chunks = _chunks(_feed_all(t, [_message_start(), *_text_events("x"), *_message_end()]))
    assert chunks[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks[:-1])
    assert (t.usage.prompt, t.usage.completion) == (25, 15)


def test_tool_use_stream_becomes_tool_call_deltas() -> None:
    t = MessagesStreamToChat("fast", include_usage=False)
    events = [_message_start(), *_text_events("Checking."), *TOOL_EVENTS,
              *_message_end("tool_use")]
    chunks = _chunks(_feed_all(t, events))[:-1]
    tool_deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                   if "tool_calls" in c["choices"][0]["delta"]]
    assert tool_deltas[0] == {"index": 0, "id": "toolu_9", "type": "function",
                              "function": {"name": "get_weather", "arguments": ""}}
    assert len(tool_deltas) == 3  # the empty partial_json sends nothing
    assert {d["index"] for d in tool_deltas} == {0}
    arguments = "".join(d["function"]["arguments"] for d in tool_deltas)
    assert orjson.loads(arguments) == {"city": "Oslo"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_cache_tokens_in_message_start_count_as_prompt() -> None:
    t = MessagesStreamToChat("fast", include_usage=True)
    _feed_all(t, [_message_start(3, cache_read_input_tokens=40), *_message_end()])
    assert (t.usage.prompt, t.usage.completion) == (43, 15)


def test_later_usage_overwrites_only_the_fields_it_carries() -> None:
    t = MessagesStreamToChat("fast", include_usage=True)
    delta = ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"input_tokens": 5, "output_tokens": 30}})
    sse = _feed_all(t, [_message_start(3, cache_read_input_tokens=40), delta,
                        ("message_stop", {"type": "message_stop"})])
    assert (t.usage.prompt, t.usage.completion) == (45, 30)
    assert _chunks(sse)[-2]["usage"] == {
        "prompt_tokens": 45, "completion_tokens": 30, "total_tokens": 75,
        "prompt_tokens_details": {"cached_tokens": 40}}


def test_error_event_becomes_in_band_error_then_done() -> None:
    t = MessagesStreamToChat("fast", include_usage=True)
    head = _feed_all(t, [_message_start(), *_text_events("par")])
    tail = t.feed("error", {"type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert _chunks(tail) == [{"error": {"message": "Overloaded", "type": "server_error",
                                        "param": None, "code": "overloaded_error"}}, "[DONE]"]
    assert len(_chunks(head)) == 2
    assert t.done
    assert t.feed("message_stop", {"type": "message_stop"}) == b""
    assert t.finish() == b""


def test_finish_after_a_cut_stream_reports_an_error() -> None:
    t = MessagesStreamToChat("fast", include_usage=True)
    _feed_all(t, [_message_start(), *_text_events("half")])
    chunks = _chunks(t.finish())
    assert chunks[0]["error"]["type"] == "server_error"
    assert chunks[-1] == "[DONE]"
    assert t.done


def test_finish_after_finish_reason_closes_normally() -> None:
    t = MessagesStreamToChat("fast", include_usage=True)
    _feed_all(t, [_message_start(), *_message_end()[:1]])
    chunks = _chunks(t.finish())
    assert chunks[0]["usage"]["completion_tokens"] == 15
    assert chunks[-1] == "[DONE]"


def test_stream_parses_with_the_openai_sdk() -> None:
    t = MessagesStreamToChat("fast", include_usage=True)
    body = _feed_all(t, [_message_start(), *_text_events("It is ", "raining."), *TOOL_EVENTS,
                         *_message_end("tool_use")])

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with (
        httpx2.Client(transport=httpx2.MockTransport(handler)) as http,
        openai.OpenAI(api_key="k", base_url="http://router.test/v1", http_client=http) as client,
    ):
        stream = client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "weather?"}], stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    arguments = "".join(call.function.arguments or "" for c in chunks if c.choices
                        for call in c.choices[0].delta.tool_calls or [] if call.function)
    assert text == "It is raining."
    assert orjson.loads(arguments) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 40


# --- errors ---------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "anthropic_type", "openai_type"), [
    (400, "invalid_request_error", "invalid_request_error"),
    (401, "authentication_error", "authentication_error"),
    (403, "permission_error", "permission_error"),
    (404, "not_found_error", "invalid_request_error"),
    (429, "rate_limit_error", "rate_limit_error"),
    (500, "api_error", "server_error"),
    (529, "overloaded_error", "server_error"),
])
def test_anthropic_error_becomes_openai_error(status: int, anthropic_type: str,
                                              openai_type: str) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": anthropic_type, "message": "boom"}})
    assert anthropic_error_to_openai(status, body) == {"error": {
        "message": "boom", "type": openai_type, "param": None, "code": anthropic_type}}


def test_non_json_anthropic_error_keeps_its_text() -> None:
    out = anthropic_error_to_openai(502, b"<html>Bad Gateway</html>")
    assert out["error"]["message"] == "<html>Bad Gateway</html>"
    assert out["error"]["type"] == "server_error"
    assert anthropic_error_to_openai(503, b"")["error"]["message"] == "upstream returned HTTP 503"


@pytest.mark.parametrize(("status", "anthropic_type"), [
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (422, "invalid_request_error"),
    (429, "rate_limit_error"),
    (500, "api_error"),
    (529, "overloaded_error"),
])
def test_openai_error_becomes_anthropic_error(status: int, anthropic_type: str) -> None:
    body = orjson.dumps({"error": {"message": "boom", "type": "x", "param": None, "code": None}})
    assert openai_error_to_anthropic(status, body) == {
        "type": "error", "error": {"type": anthropic_type, "message": "boom"}}


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error": "plain string"}', "plain string"),
    (b'{"detail": "Not Found"}', "Not Found"),
    (b'{"message": "bad model"}', "bad model"),
    (b'{"detail": [{"loc": ["body"], "msg": "field required"}]}',
     '[{"loc":["body"],"msg":"field required"}]'),
    (b"upstream timed out", "upstream timed out"),
    (b"", "upstream returned HTTP 500"),
])
def test_openai_error_shapes_from_other_servers_are_tolerated(body: bytes, message: str) -> None:
    assert openai_error_to_anthropic(500, body)["error"]["message"] == message
