"""Responses ⇄ Chat Completions translation, without sockets (responses_in, responses_stream)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_router.dialects.responses.check import check_body
from llm_router.dialects.responses.stream import ChatStreamToResponses
from llm_router.dialects.responses.translate import (
    ResponseFrame,
    chat_to_response,
    hosted_tools,
    namespaced_tools,
    refusal,
    responses_to_chat,
)
from llm_router.errors import BadRequest
from llm_router.hub.sse import event_fields

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
           "strict": True}


def test_string_input_and_instructions_become_system_and_user_messages() -> None:
    chat = responses_to_chat({"model": "g", "input": "hi", "instructions": "be brief"}, "up")
    assert chat == {"model": "up", "messages": [{"role": "system", "content": "be brief"},
                                                 {"role": "user", "content": "hi"}]}


def test_every_translated_parameter_reaches_the_chat_body() -> None:
    body = {
        "model": "g", "input": "hi", "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"},
                            "strict": True}},
        "reasoning": {"effort": "low", "summary": "auto"}, "metadata": {"a": "b"},
        "parallel_tool_calls": False, "user": "u1", "stream": True,
    }
    chat = responses_to_chat(body, "up")
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": WEATHER["parameters"], "strict": True}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    # reasoning models take only max_completion_tokens
    assert chat["max_completion_tokens"] == 50 and "max_tokens" not in chat
    assert chat["reasoning_effort"] == "low"
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "w", "schema": {"type": "object"}, "strict": True}}
    assert (chat["temperature"], chat["top_p"], chat["metadata"], chat["user"]) == (
        0.2, 0.9, {"a": "b"}, "u1")
    assert chat["parallel_tool_calls"] is False
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_without_reasoning_the_limit_is_max_tokens_and_json_object_maps() -> None:
    chat = responses_to_chat({"model": "g", "input": "x", "max_output_tokens": 7,
                              "text": {"format": {"type": "json_object"}}}, "up")
    assert chat["max_tokens"] == 7
    assert chat["response_format"] == {"type": "json_object"}


def test_items_with_tool_calls_images_and_history_become_chat_turns() -> None:
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "w?"}]},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"location":"Paris"}'},
        {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"location":"Rome"}'},
    ]
    body = {"model": "g", "input": [
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "rain"}]},
        {"role": "developer", "content": "answer in French"},
        {"role": "user", "content": [
            {"type": "input_text", "text": "and this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]}
    chat = responses_to_chat(body, "up", history)
    assert chat["messages"] == [
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        {"role": "system", "content": "answer in French"},
        {"role": "user", "content": [
            {"type": "text", "text": "and this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}}]},
    ]


def test_refusal_names_the_parameter_a_chat_member_cannot_serve() -> None:
    assert refusal({"input": "x", "tools": [WEATHER]}) is None
    # Hosted tools are not refusals of their own: the provider drops or refuses them.
    assert refusal({"input": "x", "tools": [WEATHER, {"type": "web_search"}]}) is None
    [(param, kind, why)] = hosted_tools({"input": "x", "tools": [WEATHER, {"type": "web_search"}]})
    assert (param, kind) == ("tools[1]", "web_search") and "native" in why
    assert refusal({"input": "x", "background": True})[0] == "background"  # type: ignore[index]
    assert refusal({"input": "x", "background": False}) is None
    assert hosted_tools({"input": "x", "tool_choice": {"type": "file_search"}})[0][:2] == (
        "tool_choice", "file_search")
    assert hosted_tools({"tools": [{"type": "x\r\nSet-Cookie: a"}]})[0][1] == "unknown"
    assert refusal({"input": [{"type": "item_reference", "id": "x"}]})[0] == "input[0]"  # type: ignore[index]
    file_part = {"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}
    assert refusal({"input": [file_part]})[0] == "input[0]"  # type: ignore[index]


def _chat(message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def test_chat_answer_becomes_a_response_with_usage_details() -> None:
    frame = ResponseFrame({"model": "g", "input": "x", "metadata": {"k": "v"},
                           "previous_response_id": "resp_0"}, "g")
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
             "prompt_tokens_details": {"cached_tokens": 4},
             "completion_tokens_details": {"reasoning_tokens": 2}}
    r = chat_to_response(_chat({"role": "assistant", "content": "Hello"}, "stop", usage),
                         frame)
    assert r["id"] == frame.id and r["id"].startswith("resp_")
    assert (r["object"], r["status"], r["model"], r["incomplete_details"]) == (
        "response", "completed", "g", None)
    assert r["metadata"] == {"k": "v"} and r["previous_response_id"] == "resp_0"
    [msg] = r["output"]
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["content"][0]["type"] == "output_text" and msg["content"][0]["text"] == "Hello"
    assert r["usage"] == {"input_tokens": 10,
                          "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                          "output_tokens": 5,
                          "output_tokens_details": {"reasoning_tokens": 2},
                          "total_tokens": 15}


def test_tool_calls_and_finish_reasons_map_to_items_and_status() -> None:
    frame = ResponseFrame({"model": "g", "input": "x"}, "g")
    call = {"id": "call_9", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}
    r = chat_to_response(_chat({"role": "assistant", "content": None, "tool_calls": [call]},
                               "tool_calls"), frame)
    [fc] = r["output"]
    assert (fc["type"], fc["call_id"], fc["name"], fc["arguments"]) == (
        "function_call", "call_9", "get_weather", '{"location":"Paris"}')
    cut = chat_to_response(_chat({"role": "assistant", "content": "Hel"}, "length"), frame)
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    filtered = chat_to_response(_chat({"role": "assistant", "content": ""}, "content_filter"),
                                frame)
    assert filtered["incomplete_details"] == {"reason": "content_filter"}


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            event, data = event_fields(block + b"\n\n")
            doc = orjson.loads(data)
            assert event == doc["type"]  # every event names itself in both places
            out.append(doc)
    return out


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_chat_stream_becomes_the_full_event_sequence_numbered_from_zero() -> None:
    t = ChatStreamToResponses(ResponseFrame({"model": "g", "input": "x"}, "g"))
    raw = b"".join([
        t.feed(_chunk({"role": "assistant", "content": ""})),
        t.feed(_chunk({"content": "Hel"})), t.feed(_chunk({"content": "lo"})),
        t.feed(_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "f", "arguments": ""}}]})),
        t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]})),
        t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]})),
        t.feed(_chunk({}, "tool_calls")),
        t.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        t.finish(),
    ])
    events = _events(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == '{"a":1}'
    assert events[9]["output_index"] == 1 and events[12]["arguments"] == '{"a":1}'
    assert final["usage"]["input_tokens"] == 3 and final["usage"]["output_tokens"] == 4
    assert (t.usage.prompt, t.usage.completion, t.usage.cached) == (3, 4, 0)
    assert t.final == final
    assert t.finish() == b"" and t.feed(_chunk({"content": "late"})) == b""


def test_a_stream_cut_short_ends_with_response_failed() -> None:
    t = ChatStreamToResponses(ResponseFrame({"model": "g", "input": "x"}, "g"))
    t.feed(_chunk({"content": "Hel"}))
    events = _events(t.error("upstream went away"))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "server_error",
                                               "message": "upstream went away"}
    assert t.error("again") == b"" and t.finish() == b""


def test_length_finish_ends_with_response_incomplete() -> None:
    t = ChatStreamToResponses(ResponseFrame({"model": "g", "input": "x"}, "g"))
    raw = t.feed(_chunk({"content": "a"})) + t.feed(_chunk({}, "length")) + t.finish()
    last = _events(raw)[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_malformed_fields_are_refused_naming_them_before_any_translation() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": [1]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
         "input[0].content[0].text"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
         "input[0].arguments"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": {}}]},
         "input[0].output"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tools": ["web_search"]}, "tools[0]"),
        ({"input": "x", "tool_choice": ["auto"]}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
         "text.format"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"input": "x", "store": "yes"}, "store"),
    ]
    for body, param in cases:
        with pytest.raises(BadRequest) as info:
            check_body(body)
        assert info.value.param == param, body
        assert param in info.value.message
    check_body({"input": [{"type": "function_call", "call_id": "c", "name": "f",
                           "arguments": "{}"}, {"type": "reasoning", "summary": []}],
                "tools": [WEATHER, {"type": "web_search"}], "tool_choice": "required",
                "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}})


def test_namespaced_tools_get_chat_names_that_cannot_collide() -> None:
    crm = {"type": "namespace", "name": "crm", "description": "",
           "tools": [{"type": "function", "name": "find"},
                     {"type": "function", "name": "x" * 80},
                     {"type": "custom", "name": "raw"}]}
    body = {"input": "x", "tools": [{"type": "function", "name": "crm__find"}, crm]}
    names = namespaced_tools(body)
    assert names["crm__find_2"] == ("crm", "find")  # crm__find is a plain tool's name
    long_name = next(n for n, pair in names.items() if pair[1] == "x" * 80)
    assert len(long_name) == 64
    assert all(pair[1] != "raw" for pair in names.values())  # custom: not a function
    chat = responses_to_chat(body, "up")
    assert [t["function"]["name"] for t in chat["tools"]] == ["crm__find", "crm__find_2",
                                                              long_name]
    frame = ResponseFrame(body, "m")
    item = frame.call_item("call_1", "crm__find_2", "{}", "completed")
    assert (item["name"], item["namespace"]) == ("find", "crm")
    plain = frame.call_item("call_2", "crm__find", "{}", "completed")
    assert plain["name"] == "crm__find" and "namespace" not in plain
