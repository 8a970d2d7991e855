"""A whole JSON answer to a stream request, as the stream it would have been.

Some upstreams ignore ``stream: true`` and answer with one JSON body. A stream client
must never get that raw 200 ``application/json`` (SDKs fail on it), so a valid
completion is turned into the events the upstream would have sent, in the upstream's
own dialect, and relayed like any stream (translation, usage, redaction alike). An
answer that is not a valid completion of the kind asked for gives ``None``: the attempt
then fails as ``bad_response`` and the request fails over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import orjson

from ..hub.sse import DONE, frame

__all__ = ["AnswerStream", "answer_events"]

_SSE: Final = {"Content-Type": "text/event-stream"}


def answer_events(dialect: str, kind: str, raw: bytes) -> bytes | None:
    """The SSE bytes of a whole answer ``raw`` in ``dialect`` (``openai`` for chat and
    completions, ``anthropic`` for messages), or None if it is not a valid completion."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    try:
        if dialect == "anthropic" and kind in ("messages", "chat"):
            return _message_events(doc)
        if dialect == "openai" and kind in ("chat", "completions", "messages"):
            return _openai_events(doc)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def _openai_events(doc: dict[str, Any]) -> bytes | None:
    choices = doc["choices"]
    if not isinstance(choices, list) or not choices:
        return None
    head: dict[str, Any] = {k: doc[k] for k in ("id", "created", "model", "system_fingerprint")
                            if k in doc}
    chat = "message" in choices[0]
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    out: list[bytes] = []
    for i, choice in enumerate(choices):
        index = choice.get("index", i)
        if chat:
            message = choice["message"]
            delta: dict[str, Any] = {"role": message.get("role", "assistant"),
                                     "content": message.get("content")}
            calls = message.get("tool_calls")
            if calls:
                delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(calls)]
            if message.get("refusal"):
                delta["refusal"] = message["refusal"]
            piece = {"index": index, "delta": delta, "finish_reason": choice.get(
                "finish_reason")}
        else:
            piece = {"index": index, "text": str(choice["text"]),
                     "finish_reason": choice.get("finish_reason")}
        out.append(frame(orjson.dumps({**head, "choices": [piece]})))
    if isinstance(doc.get("usage"), dict):
        out.append(frame(orjson.dumps({**head, "choices": [], "usage": doc["usage"]})))
    out.append(DONE)
    return b"".join(out)


def _message_events(doc: dict[str, Any]) -> bytes | None:
    if doc.get("type") != "message" or not isinstance(doc.get("content"), list):
        return None
    found = doc.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    start = {**doc, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 0}}
    out = [frame(orjson.dumps({"type": "message_start", "message": start}), "message_start")]
    for index, block in enumerate(doc["content"]):
        kind = block["type"]
        if kind == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            delta: dict[str, Any] | None = {"type": "text_delta", "text": block["text"]}
        elif kind == "tool_use":
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta",
                     "partial_json": orjson.dumps(block.get("input", {})).decode()}
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": ""}
            delta = {"type": "thinking_delta", "thinking": block.get("thinking", "")}
        else:
            opening, delta = block, None
        out.append(frame(orjson.dumps({"type": "content_block_start", "index": index,
                                       "content_block": opening}), "content_block_start"))
        if delta is not None:
            out.append(frame(orjson.dumps({"type": "content_block_delta", "index": index,
                                           "delta": delta}), "content_block_delta"))
        out.append(frame(orjson.dumps({"type": "content_block_stop", "index": index}),
                         "content_block_stop"))
    out.append(frame(orjson.dumps({
        "type": "message_delta",
        "delta": {"stop_reason": doc.get("stop_reason"),
                  "stop_sequence": doc.get("stop_sequence")},
        "usage": {"output_tokens": usage.get("output_tokens", 0)}}), "message_delta"))
    out.append(frame(b'{"type":"message_stop"}', "message_stop"))
    return b"".join(out)


class AnswerStream:
    """An :class:`~llm_router.providers.UpstreamResponse` replaying synthesized events."""

    __slots__ = ("_events", "headers", "status")

    def __init__(self, events: bytes) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = _SSE
        self._events = events

    async def read(self, limit: int) -> bytes:
        return self._events[:limit]

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._events

    def close(self) -> None:
        self._events = b""

    def release(self) -> None:
        self._events = b""
