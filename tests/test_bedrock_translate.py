"""The Bedrock translators alone, without sockets: hub → Converse, Converse → hub (whole
answers and streams), and Bedrock's errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_router.errors import BadRequest
from llm_router.providers.bedrock.converse import Plan, converse_answer, converse_request
from llm_router.providers.bedrock.errors import error_body, error_status, scrub
from llm_router.providers.bedrock.eventstream import Message
from llm_router.providers.bedrock.stream import ConverseStreamToChat

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def request(**body: Any) -> tuple[dict[str, Any], Plan]:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return converse_request(body, "m")


def test_consecutive_user_turns_merge_and_blank_text_is_dropped() -> None:
    out, _ = request(messages=[
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "  "},  # blank: the turn disappears...
        {"role": "user", "content": "c"},  # ...so this one merges too
        {"role": "system", "content": "\n"},
    ])
    assert out == {"system": [{"text": "rules"}], "messages": [
        {"role": "user", "content": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}]}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"auto": {}}), ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "lookup"}}, {"tool": {"name": "lookup"}}),
    (None, None),
], ids=["auto", "required", "named", "absent"])
def test_tool_choice(choice: Any, expected: Any) -> None:
    out, _ = request(tools=[TOOL], **({"tool_choice": choice} if choice else {}))
    assert out["toolConfig"]["tools"] == [
        {"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}]
    assert out["toolConfig"].get("toolChoice") == expected


def test_tool_choice_none_sends_no_tools_unless_the_history_has_tool_blocks() -> None:
    out, _ = request(tools=[TOOL], tool_choice="none")
    assert "toolConfig" not in out
    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {
                   "name": "old_tool", "arguments": '{"a": 1}'}}]},
               {"role": "tool", "tool_call_id": "t1", "content": ""}]
    out, _ = request(messages=history, tools=[TOOL], tool_choice="none")
    names = [t["toolSpec"]["name"] for t in out["toolConfig"]["tools"]]
    assert names == ["lookup", "old_tool"]  # the history's tool is declared, open schema
    assert "toolChoice" not in out["toolConfig"]
    assert out["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "t1", "name": "old_tool", "input": {"a": 1}}}]
    assert out["messages"][2]["content"] == [{"toolResult": {"toolUseId": "t1", "content": []}}]


def test_inference_config() -> None:
    out, _ = request(max_completion_tokens=9, max_tokens=100, temperature=0, top_p=0.9,
                     stop="###", n=2, seed=1, presence_penalty=1)
    assert out["inferenceConfig"] == {"maxTokens": 9, "temperature": 0, "topP": 0.9,
                                      "stopSequences": ["###"]}
    assert set(out) == {"messages", "inferenceConfig"}


def test_response_format_json_object_is_a_forced_open_tool() -> None:
    out, plan = request(response_format={"type": "json_object"})
    assert plan.response_tool == "json_response"
    assert out["toolConfig"]["toolChoice"] == {"tool": {"name": "json_response"}}
    assert out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"] == {
        "type": "object", "properties": {}}
    _, plain = request(response_format={"type": "text"})
    assert plain.response_tool is None


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}},
    {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
    {"type": "file", "file": {"file_data": "AAAA"}},
], ids=["http-url", "bmp", "not-base64", "file"])
def test_what_converse_cannot_take_is_a_400(part: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as err:
        request(messages=[{"role": "user", "content": [part]}])
    assert err.value.param == "messages[0].content[0]"


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("tool_use", "tool_calls"),
    ("max_tokens", "length"), ("model_context_window_exceeded", "length"),
    ("guardrail_intervened", "content_filter"), ("content_filtered", "content_filter"),
    ("malformed_model_output", "stop"), ("something_new", "stop"),
])
def test_stop_reasons(stop: str, finish: str) -> None:
    answer = converse_answer({"output": {"message": {"content": [{"text": "x"}]}},
                              "stopReason": stop, "usage": {}}, Plan("m"))
    assert answer["choices"][0]["finish_reason"] == finish


def test_an_answer_with_text_tools_and_cache_usage() -> None:
    answer = converse_answer({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm"}}},
            {"text": "Let me look."},
            {"toolUse": {"toolUseId": "t9", "name": "lookup", "input": {"q": "x"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 7, "totalTokens": 117,
                  "cacheReadInputTokens": 80, "cacheWriteInputTokens": 20}}, Plan("m"))
    message = answer["choices"][0]["message"]
    assert message["content"] == "Let me look."
    assert message["tool_calls"] == [{"id": "t9", "type": "function", "function": {
        "name": "lookup", "arguments": '{"q":"x"}'}}]
    assert answer["usage"] == {"prompt_tokens": 110, "completion_tokens": 7,
                               "total_tokens": 117,
                               "prompt_tokens_details": {"cached_tokens": 80}}


def event(kind: str, **payload: Any) -> Message:
    return Message({":message-type": "event", ":event-type": kind,
                    ":content-type": "application/json"}, orjson.dumps(payload))


def chunks(out: bytes) -> list[Any]:
    return [orjson.loads(e.removeprefix(b"data: ")) if e != b"data: [DONE]" else "[DONE]"
            for e in out.split(b"\n\n") if e]


def test_a_stream_with_the_response_format_tool_reads_as_text() -> None:
    t = ConverseStreamToChat(Plan("m", response_tool="place"))
    out = b"".join(t.feed(m) for m in [
        event("messageStart", role="assistant"),
        event("contentBlockStart", contentBlockIndex=0,
              start={"toolUse": {"toolUseId": "t", "name": "place"}}),
        event("contentBlockDelta", contentBlockIndex=0, delta={"toolUse": {"input": '{"a"'}}),
        event("contentBlockDelta", contentBlockIndex=0, delta={"toolUse": {"input": ":1}"}}),
        event("contentBlockStop", contentBlockIndex=0),
        event("messageStop", stopReason="tool_use"),
        event("metadata", usage={"inputTokens": 3, "outputTokens": 4, "cacheReadInputTokens": 2}),
    ])
    got = chunks(out)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got[:-2])
    assert text == '{"a":1}'
    assert got[-3]["choices"][0]["finish_reason"] == "stop"
    assert got[-2]["choices"] == [] and got[-2]["usage"]["prompt_tokens"] == 5
    assert got[-1] == "[DONE]" and t.done and t.error is None


def test_an_exception_frame_ends_the_stream_with_its_error() -> None:
    t = ConverseStreamToChat(Plan("m"))
    t.feed(event("messageStart", role="assistant"))
    out = t.feed(Message({":message-type": "exception",
                          ":exception-type": "serviceUnavailableException"},
                         b'{"message":"try later"}'))
    assert chunks(out) == [{"error": {"message": "try later", "type": "service_unavailable",
                                      "param": None, "code": "ServiceUnavailableException"}},
                           "[DONE]"]
    assert t.done and t.error is not None and t.error.status == 503
    assert t.feed(event("metadata", usage={})) == b""  # nothing after the error


def test_a_stream_cut_before_its_end_is_not_finished_quietly() -> None:
    t = ConverseStreamToChat(Plan("m"))
    t.feed(event("messageStart", role="assistant"))
    assert t.finish() == b"" and not t.done  # the caller reports the cut
    t.feed(event("messageStop", stopReason="end_turn"))
    assert t.finish() == b"data: [DONE]\n\n" and t.done  # only the usage was missing


@pytest.mark.parametrize(("status", "name", "expected"), [
    (429, "ThrottlingException", 429), (400, "ServiceQuotaExceededException", 429),
    (403, "AccessDeniedException", 403), (403, "UnrecognizedClientException", 403),
    (400, "ValidationException", 400), (424, "ModelErrorException", 502),
    (404, "ResourceNotFoundException", 404), (500, "", 500), (418, "Unknown", 418),
])
def test_error_statuses_steer_failover(status: int, name: str, expected: int) -> None:
    assert error_status(status, name) == expected


def test_error_bodies_are_openai_shaped_and_scrubbed() -> None:
    body = orjson.loads(error_body(400, "ValidationException", orjson.dumps({
        "message": "bad input for ASIAABCDEFGHIJKLMNOP in arn:aws:iam::210987654321:role/x"})))
    assert body == {"error": {"message": "bad input for [redacted] in "
                                         "arn:aws:iam::[account]:role/x",
                              "type": "invalid_request_error", "param": None,
                              "code": "ValidationException"}}
    html = orjson.loads(error_body(502, "", b"<html>bad gateway</html>"))
    assert html["error"]["message"] == "bedrock answered HTTP 502"
    assert scrub("x" * 5000) == "x" * 1000
