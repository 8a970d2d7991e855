"""The Anthropic Messages dialect as the router speaks it on the wire.

Its translation to and from the hub is in :mod:`.anthropic` (pure functions); this
module is what the request path needs around it: a Messages stream passed on untouched
but read for usage and its end, a hub stream rewritten as Messages events, a whole
answer replayed as the events it would have been, and error bodies in Anthropic's shape.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from ..errors import anthropic_error_type
from ..hub.sse import event_fields, frame, json_object
from ..hub.stream import STREAM_ERROR, Dialect, Usage
from ..hub.usage import AnthropicUsage
from .anthropic import ChatStreamToMessages, chat_to_message, messages_to_chat

__all__ = [
    "DIALECT",
    "AnthropicDialect",
    "AnthropicPassthrough",
    "ChatToMessages",
    "anthropic_status_type",
    "error_text",
    "openai_error_to_anthropic",
]

_PATHS: Final = {"messages": "messages", "count_tokens": "messages/count_tokens"}
_MAX_ERROR_TEXT: Final = 1000


class AnthropicPassthrough:
    """A Messages stream passed on as sent, read for usage, ``message_stop`` and errors."""

    __slots__ = ("_counts", "done", "failure")

    def __init__(self) -> None:
        self._counts = AnthropicUsage()
        self.done = False
        self.failure: str | None = None

    @property
    def usage(self) -> Usage:
        return self._counts.usage

    def feed(self, raw: bytes) -> bytes:
        if self.failure is not None:
            return b""  # nothing may follow an error event
        event, data = event_fields(raw)
        if event == "error":
            # e.g. overloaded_error mid-stream: the client gets it as sent, and only it.
            self.failure = STREAM_ERROR
        elif event == "message_start" or event == "message_delta":
            doc = json_object(data)
            if doc is None:
                return raw
            message = doc.get("message")
            self._counts.add(message.get("usage") if event == "message_start"
                             and isinstance(message, dict) else doc.get("usage"))
        elif event == "message_stop":
            self.done = True
        return raw

    def fail(self, message: str) -> bytes:
        if self.failure is not None:
            return b""
        self.failure = STREAM_ERROR
        err = {"type": "error", "error": {"type": "api_error", "message": message}}
        return frame(orjson.dumps(err), "error")


class ChatToMessages:
    """A hub (chat chunk) stream → an Anthropic client's Messages events."""

    __slots__ = ("_ended", "_translator", "done", "failure", "usage")

    def __init__(self, requested_model: str) -> None:
        self._translator = ChatStreamToMessages(requested_model)
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None
        self._ended = False  # message_stop or an error event went to the client

    def feed(self, raw: bytes) -> bytes:
        if self._ended:
            return b""
        _, data = event_fields(raw)
        if data == b"[DONE]":
            self._ended = self.done = True
            self.usage = self._translator.usage
            return self._translator.finish()
        chunk = json_object(data)
        if chunk is None:
            return b""
        out = self._translator.feed(chunk)
        self.usage = self._translator.usage
        if chunk.get("error"):  # the translator turned it into an error event
            self._ended = True
            self.failure = STREAM_ERROR
        return out

    def fail(self, message: str) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        return self._translator.error(message)


class AnthropicDialect:
    """Anthropic Messages (``/v1/messages``, ``/v1/messages/count_tokens``)."""

    name: Final = Dialect.ANTHROPIC

    @staticmethod
    def path(kind: str) -> str:
        return _PATHS[kind]

    @staticmethod
    def to_hub(kind: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        del kind
        return messages_to_chat(body, model)

    @staticmethod
    def from_hub(doc: dict[str, Any], requested_model: str) -> bytes:
        return orjson.dumps(chat_to_message(doc, requested_model))

    @staticmethod
    def from_hub_stream(requested_model: str, include_usage: bool) -> ChatToMessages:
        del include_usage  # Messages streams always report usage
        return ChatToMessages(requested_model)

    @staticmethod
    def error_from_hub(status: int, body: bytes) -> bytes:
        return orjson.dumps(openai_error_to_anthropic(status, body))

    @staticmethod
    def passthrough(include_usage: bool) -> AnthropicPassthrough:
        del include_usage
        return AnthropicPassthrough()

    @staticmethod
    def body_usage(doc: dict[str, Any]) -> Usage:
        return Usage.from_anthropic(doc.get("usage"))

    @staticmethod
    def answer_events(kind: str, doc: dict[str, Any]) -> bytes | None:
        """A whole ``message`` as its event stream (KeyError, TypeError or ValueError
        when it is not one)."""
        if kind not in ("messages", "chat"):
            return None
        return _message_events(doc)


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


def anthropic_status_type(status: int) -> str:
    """The Anthropic error type for an HTTP status."""
    kind = anthropic_error_type(status)
    if kind == "api_error" and 400 <= status < 500:
        return "invalid_request_error"  # e.g. 422 from servers that validate with pydantic
    return kind


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def error_text(body: bytes, status: int) -> str:
    """An error body that is not JSON, as a message (bounded)."""
    text = body.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT]
    return text or f"upstream returned HTTP {status}"


def openai_error_to_anthropic(status: int, body: bytes) -> dict[str, Any]:
    """An OpenAI-compatible error response as Anthropic's ``{"type": "error", ...}``.

    The message is taken from ``error.message``, a string ``error``, ``message`` or
    ``detail`` (servers differ), else the body's text; the type follows the status.
    """
    doc = _loads(body)
    message: Any = None
    if isinstance(doc, dict):
        error = doc.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or doc.get("message") or doc.get("detail")
    if message and not isinstance(message, str):
        message = orjson.dumps(message).decode()  # e.g. a list of validation problems
    return {"type": "error",
            "error": {"type": anthropic_status_type(status),
                      "message": message or error_text(body, status)}}


DIALECT: Final = AnthropicDialect()
