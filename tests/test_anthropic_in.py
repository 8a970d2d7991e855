"""Anthropic Messages clients on OpenAI-compatible upstreams: requests, answers, streams."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from llm_router.dialects.anthropic import (
    ChatStreamToMessages,
    chat_to_message,
    estimate_input_tokens,
    messages_to_chat,
    tool_input_from_arguments,
)
from llm_router.hub.sse import SSEParser, event_fields

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}


def _request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fast", "max_tokens": 256,
                            "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def _events(sse: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event type, data) of every event, checking each frame's type matches its data."""
    parser = SSEParser()
    out: list[tuple[str, dict[str, Any]]] = []
    for raw in parser.feed(sse):
        event, data = event_fields(raw)
        doc = orjson.loads(data)
        assert event == doc["type"]
        out.append((doc["type"], doc))
    assert parser.tail() == b""
    return out


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
           usage: dict[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                             "created": 1, "model": "gpt-4o-mini"}
    chunk["choices"] = [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        chunk["usage"] = usage
    return chunk


# --- requests -------------------------------------------------------------------------

def test_system_string_becomes_leading_system_message() -> None:
    out = messages_to_chat(_request(system="Be terse."), "gpt-4o-mini")
    assert out["model"] == "gpt-4o-mini"
    assert out["messages"] == [{"role": "system", "content": "Be terse."},
                               {"role": "user", "content": "hi"}]


def test_system_text_blocks_are_joined() -> None:
    system = [{"type": "text", "text": "Be terse."},
              {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}]
    out = messages_to_chat(_request(system=system), "m")
    assert out["messages"][0] == {"role": "system", "content": "Be terse.\nAnswer in French."}


def test_text_only_blocks_collapse_to_one_string() -> None:
    msg = {"role": "user", "content": [{"type": "text", "text": "first"},
                                       {"type": "text", "text": "second"}]}
    out = messages_to_chat(_request(messages=[msg]), "m")
    assert out["messages"] == [{"role": "user", "content": "first\nsecond"}]


def test_images_become_image_url_parts() -> None:
    msg = {"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
    ]}
    out = messages_to_chat(_request(messages=[msg]), "m")
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]


def test_tool_use_becomes_tool_calls_with_json_arguments() -> None:
    msg = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]}
    out = messages_to_chat(_request(messages=[{"role": "user", "content": "hi"}, msg]), "m")
    assistant = out["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == "Let me check."
    [call] = assistant["tool_calls"]
    assert call["id"] == "toolu_1"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Oslo"}


def test_assistant_tool_use_without_text_has_null_content() -> None:
    msg = {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]}
    out = messages_to_chat(_request(messages=[msg]), "m")
    assert out["messages"][0]["content"] is None
    assert out["messages"][0]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tool_result_becomes_tool_message() -> None:
    msg = {"role": "user", "content": [
        {"type": "text", "text": "here you go"},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12°C, rain"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
         "content": [{"type": "text", "text": "city not found"}]},
    ]}
    out = messages_to_chat(_request(messages=[msg]), "m")
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "12°C, rain"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "[tool error] city not found"},
        {"role": "user", "content": "here you go"},
    ]


def test_tool_result_images_move_into_the_following_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    msg = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1",
         "content": [{"type": "text", "text": "screenshot:"}, image]},
    ]}
    out = messages_to_chat(_request(messages=[msg]), "m")
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "screenshot:"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
    ]


def test_tools_become_functions_and_server_tools_are_dropped() -> None:
    tools = [WEATHER_TOOL, {"type": "web_search_20250305", "name": "web_search"}]
    out = messages_to_chat(_request(tools=tools), "m")
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": WEATHER_TOOL["input_schema"]}}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_maps_to_openai(choice: dict[str, Any], expected: Any) -> None:
    out = messages_to_chat(_request(tools=[WEATHER_TOOL], tool_choice=choice), "m")
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_disable_parallel_tool_use_turns_off_parallel_tool_calls() -> None:
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    out = messages_to_chat(_request(tools=[WEATHER_TOOL], tool_choice=choice), "m")
    assert out["parallel_tool_calls"] is False


def test_tool_choice_without_tools_is_not_sent() -> None:
    out = messages_to_chat(_request(tool_choice={"type": "any"}), "m")
    assert "tool_choice" not in out and "tools" not in out


def test_sampling_fields_are_copied_and_unmappable_ones_dropped() -> None:
    out = messages_to_chat(_request(
        temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["END"],
        metadata={"user_id": "u-42"}, thinking={"type": "enabled", "budget_tokens": 1024},
        service_tier="auto"), "m")
    assert out == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 256,
        "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "user": "u-42",
    }


def test_stream_request_asks_for_usage() -> None:
    out = messages_to_chat(_request(stream=True), "m")
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert "stream" not in messages_to_chat(_request(stream=False), "m")


# --- answers --------------------------------------------------------------------------

def _completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


def test_completion_becomes_message_with_requested_model_and_usage() -> None:
    out = chat_to_message(_completion({"role": "assistant", "content": "Hello!"}), "fast")
    assert out == {
        "id": "msg_chatcmpl-abc", "type": "message", "role": "assistant", "model": "fast",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 7},
    }


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Ber'}},
    ]}
    out = chat_to_message(_completion(message, "tool_calls"), "fast")
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather",
         "input": {"_raw_arguments": '{"city": "Ber'}},
    ]


def test_tool_calls_reported_with_stop_still_stop_for_tool_use() -> None:
    message = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}
    out = chat_to_message(_completion(message, "stop"), "fast")
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]


@pytest.mark.parametrize(("finish", "stop_reason"), [
    ("stop", "end_turn"),
    ("length", "max_tokens"),
    ("tool_calls", "tool_use"),
    ("function_call", "tool_use"),
    ("content_filter", "refusal"),
    (None, "end_turn"),
])
def test_finish_reason_maps_to_stop_reason(finish: str | None, stop_reason: str) -> None:
    resp = _completion({"role": "assistant", "content": "x"})
    resp["choices"][0]["finish_reason"] = finish
    assert chat_to_message(resp, "fast")["stop_reason"] == stop_reason


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"a": 1}', {"a": 1}),
    ("", {}),
    (None, {}),
    ("[1, 2]", {"_raw_arguments": "[1, 2]"}),
    ("not json", {"_raw_arguments": "not json"}),
])
def test_tool_arguments_parse_to_an_object(arguments: Any, expected: dict[str, Any]) -> None:
    assert tool_input_from_arguments(arguments) == expected


# --- streams --------------------------------------------------------------------------

def test_text_stream_becomes_anthropic_events_in_order() -> None:
    t = ChatStreamToMessages("fast", message_id="msg_1")
    sse = b"".join([
        t.feed(_chunk({"role": "assistant", "content": ""})),
        t.feed(_chunk({"content": "Hel"})),
        t.feed(_chunk({"content": "lo!"})),
        t.feed(_chunk({}, finish="stop")),
        t.feed(_chunk(usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})),
        t.finish(),
    ])
    events = _events(sse)
    assert [e for e, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["content"]) == ("msg_1", "fast", [])
    assert start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert events[1][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}
    assert "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta") == "Hello!"
    assert events[5][1] == {"type": "message_delta",
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 2, "input_tokens": 9}}
    assert (t.usage.prompt, t.usage.completion) == (9, 2)


def test_tool_call_stream_becomes_tool_use_blocks() -> None:
    t = ChatStreamToMessages("fast")
    chunks = [
        _chunk({"role": "assistant", "content": "Checking."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city"'}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "Rome"}'}}]}),
        _chunk({}, finish="tool_calls"),
    ]
    sse = b"".join(t.feed(c) for c in chunks) + t.finish()
    events = _events(sse)
    assert [e for e, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    starts = [d for e, d in events if e == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "call_a",
                                          "name": "get_weather", "input": {}}
    args: dict[int, str] = {}
    for e, d in events:
        if e == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            args[d["index"]] = args.get(d["index"], "") + d["delta"]["partial_json"]
    assert {i: orjson.loads(a) for i, a in args.items()} == {1: {"city": "Oslo"},
                                                            2: {"city": "Rome"}}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_streamed_tool_calls_reported_with_stop_still_stop_for_tool_use() -> None:
    t = ChatStreamToMessages("fast")
    call = {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{}"}}
    sse = t.feed(_chunk({"tool_calls": [call]})) + t.feed(_chunk({}, finish="stop")) + t.finish()
    assert _events(sse)[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_tool_calls_without_index_are_told_apart_by_id() -> None:
    t = ChatStreamToMessages("fast")
    sse = b"".join(t.feed(_chunk({"tool_calls": [c]})) for c in [
        {"id": "call_a", "function": {"name": "f", "arguments": '{"x": '}},
        {"function": {"arguments": "1}"}},
        {"id": "call_b", "function": {"name": "g", "arguments": "{}"}},
    ]) + t.finish()
    events = _events(sse)
    starts = [d["content_block"]["id"] for e, d in events if e == "content_block_start"]
    assert starts == ["call_a", "call_b"]
    first = "".join(d["delta"]["partial_json"] for e, d in events
                    if e == "content_block_delta" and d["index"] == 0)
    assert orjson.loads(first) == {"x": 1}


def test_finish_without_chunks_gives_a_complete_empty_message() -> None:
    t = ChatStreamToMessages("fast")
    events = _events(t.finish())
    assert [e for e, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["delta"]["stop_reason"] == "end_turn"
    assert events[1][1]["usage"] == {"output_tokens": 0}
    assert t.finish() == b""
    assert (t.usage.prompt, t.usage.completion) == (0, 0)


def test_length_finish_reports_max_tokens() -> None:
    t = ChatStreamToMessages("fast")
    sse = t.feed(_chunk({"content": "a"})) + t.feed(_chunk({}, finish="length")) + t.finish()
    assert _events(sse)[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_error_frame_ends_the_stream() -> None:
    t = ChatStreamToMessages("fast")
    head = t.feed(_chunk({"content": "partial"}))
    frame = t.error("upstream went away", "overloaded_error")
    assert frame == (b'event: error\ndata: {"type":"error","error":'
                     b'{"type":"overloaded_error","message":"upstream went away"}}\n\n')
    assert [e for e, _ in _events(head)] == [
        "message_start", "content_block_start", "content_block_delta"]
    assert t.feed(_chunk({"content": "more"})) == b""
    assert t.finish() == b""


def test_in_band_upstream_error_becomes_error_event() -> None:
    t = ChatStreamToMessages("fast")
    events = _events(t.feed({"error": {"message": "model crashed", "type": "server_error"}}))
    assert [e for e, _ in events] == ["message_start", "error"]
    assert events[1][1]["error"] == {"type": "api_error", "message": "model crashed"}


def test_stream_parses_with_the_anthropic_sdk() -> None:
    t = ChatStreamToMessages("fast", message_id="msg_sdk")
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "It is "}),
        _chunk({"content": "raining."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}]}),
        _chunk({}, finish="tool_calls"),
        _chunk(usage={"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}),
    ]
    body = b"".join(t.feed(c) for c in chunks) + t.finish()

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    with (
        httpx2.Client(transport=httpx2.MockTransport(handler)) as http,
        anthropic.Anthropic(api_key="k", base_url="http://router.test", http_client=http) as c,
        c.messages.stream(model="fast", max_tokens=64,
                          messages=[{"role": "user", "content": "weather?"}]) as stream,
    ):
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert "".join(texts) == "It is raining."
    assert message.id == "msg_sdk"
    assert message.model == "fast"
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 20
    assert message.usage.output_tokens == 12
    text, tool = message.content
    assert text.type == "text" and text.text == "It is raining."
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_a", "get_weather", {"city": "Oslo"})


# --- count_tokens ---------------------------------------------------------------------

def test_estimate_input_tokens_is_about_a_quarter_of_the_characters() -> None:
    body = _request(system="s" * 400, messages=[{"role": "user", "content": "u" * 400}])
    assert estimate_input_tokens(body) == 200 + 4


def test_estimate_input_tokens_counts_tools_images_and_tool_traffic() -> None:
    base = estimate_input_tokens(_request())
    assert base >= 1
    with_tools = estimate_input_tokens(_request(tools=[WEATHER_TOOL]))
    assert with_tools - base == -(-len(orjson.dumps([WEATHER_TOOL])) // 4)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A"}}
    with_image = estimate_input_tokens(_request(messages=[{"role": "user", "content": [image]}]))
    assert with_image == 1600 + 4
    traffic = _request(messages=[
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "x" * 80}]},
    ])
    assert estimate_input_tokens(traffic) > 20 + 8


def test_estimate_input_tokens_is_at_least_one() -> None:
    assert estimate_input_tokens({"messages": []}) == 1
