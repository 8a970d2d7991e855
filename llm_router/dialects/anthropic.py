"""Anthropic Messages clients served by OpenAI-compatible upstreams (pure, no I/O).

:func:`messages_to_chat` turns a ``POST /v1/messages`` body into a chat-completions body,
:func:`chat_to_message` turns the upstream's ``chat.completion`` back into a ``message``,
and :class:`ChatStreamToMessages` rewrites ``chat.completion.chunk`` objects into
Anthropic SSE events as they arrive.

Mapped: ``system`` (string or text blocks) → a leading system message; text and image
blocks (base64 → ``data:`` URL, url → URL); ``tool_use`` → ``tool_calls``; ``tool_result``
→ ``role: tool`` messages placed before the rest of that user turn (``is_error`` becomes
a ``[tool error]`` prefix); ``tools``; ``tool_choice`` (auto, any → required, tool →
function, none) and ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``;
``max_tokens``, ``temperature``, ``top_p``, ``stop_sequences`` → ``stop``, ``stream``
(with ``stream_options.include_usage``), ``metadata.user_id`` → ``user``.

Dropped, because chat completions has no equivalent (the request still succeeds):

- request fields ``top_k``, ``thinking``, ``service_tier``, ``container``,
  ``mcp_servers``, ``context_management``, and any other field not listed above;
- ``cache_control`` on blocks and tools, and ``citations`` on documents;
- ``thinking`` / ``redacted_thinking`` blocks in the history, ``document``,
  ``search_result``, ``server_tool_use`` and server-tool result blocks, and ``file``
  image sources (Files API ids mean nothing to another upstream);
- server tools (``web_search_*``, ``bash_*``, ``text_editor_*``...: any tool without an
  ``input_schema``);
- images inside a ``tool_result`` cannot ride in a ``tool`` message: they move into the
  user message that follows the tool messages, so a vision model still sees them.

Text-only content is sent as one string (text blocks joined with a newline), which every
OpenAI-compatible server accepts; content with images is sent as a list of parts.

Lossy in responses: ``stop_sequence`` is always null and ``stop`` becomes ``end_turn``
(OpenAI does not say which stop sequence matched); ``content_filter`` becomes
``refusal``; reasoning output (``reasoning_content``) is dropped; ``refusal`` text is
returned as text. Usage is Anthropic's: prompt tokens the upstream read from its cache
(OpenAI's ``prompt_tokens_details.cached_tokens``) are ``cache_read_input_tokens``, and
``input_tokens`` is the rest, so the three add up to the prompt as they do on Anthropic's
own API; OpenAI reports no cache writes, so there is no ``cache_creation_input_tokens``.
Tool-call arguments that are not a JSON object become
``{"_raw_arguments": "<the text>"}`` so the client sees what the model produced instead
of a silently empty call.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import orjson

from ..hub.chat import chunk_error, first_choice, tool_input_from_arguments
from ..hub.sse import frame
from ..hub.usage import BYTES_PER_TOKEN, Usage

__all__ = [
    "ChatStreamToMessages",
    "chat_to_message",
    "estimate_input_tokens",
    "joined_text",
    "messages_to_chat",
    "tool_input_from_arguments",
]

# Anthropic request field → chat-completions field, copied when present.
_COPIED_FIELDS: Final = (
    ("max_tokens", "max_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("stop_sequences", "stop"),
)

_TOOL_CHOICES: Final[dict[str, str]] = {"auto": "auto", "any": "required", "none": "none"}

# OpenAI finish_reason → Anthropic stop_reason; anything else is a normal end.
_STOP_REASONS: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_TOOL_ERROR_PREFIX: Final = "[tool error] "

# count_tokens estimate: Anthropic prices an image at up to ~1,600 tokens and we do not
# decode images to measure them, so charge the ceiling; each message costs a few tokens
# of role/separator framing.
_IMAGE_TOKENS: Final = 1600
_MESSAGE_OVERHEAD_TOKENS: Final = 4

# OpenAI error type of an in-band error chunk → Anthropic's error type.
_STREAM_ERROR_TYPES: Final[dict[str, str]] = {
    "rate_limit_error": "rate_limit_error",
    "invalid_request_error": "invalid_request_error",
    "permission_error": "permission_error",
    "authentication_error": "authentication_error",
    "service_unavailable": "overloaded_error",
}


def messages_to_chat(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The chat-completions request equivalent to an Anthropic Messages request."""
    messages: list[dict[str, Any]] = []
    system = joined_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            messages.extend(_chat_messages(msg))
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    for src, dst in _COPIED_FIELDS:
        if body.get(src) is not None:
            out[dst] = body[src]
    tools = [_chat_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)
             and "input_schema" in t]
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "tool":
                out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
            elif kind in _TOOL_CHOICES:
                out["tool_choice"] = _TOOL_CHOICES[kind]
            if choice.get("disable_parallel_tool_use"):
                out["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = metadata["user_id"]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def joined_text(content: Any) -> str:
    """A string, or the text blocks (Anthropic) / text parts (OpenAI) of a list, joined
    with newlines: both dialects spell a text item ``{"type": "text", "text": ...}``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(b.get("text") or "" for b in content
                     if isinstance(b, dict) and b.get("type") == "text")


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _image_part(block: dict[str, Any]) -> dict[str, Any] | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = source.get("url") or ""
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _collapsed(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _chat_messages(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages (a user turn may become several)."""
    role = msg.get("role")
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [b for b in content or [] if isinstance(b, dict)]
    if role == "assistant":
        return [_assistant_message(blocks)]
    if blocks and all(b.get("type") == "text" for b in blocks):
        # The common turn, as the loop below would make it, without a part per block.
        return [{"role": role, "content": "\n".join(b.get("text") or "" for b in blocks)}]
    # Chat completions wants each tool result as its own message right after the
    # assistant's tool_calls, so they go first and the rest of the turn follows.
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            part = _image_part(block)
            if part is not None:
                parts.append(part)
        elif kind == "tool_result":
            text, images = _tool_result(block)
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "",
                        "content": text})
            parts.extend(images)
    if parts:
        out.append({"role": role, "content": _collapsed(parts)})
    return out


def _tool_result(block: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    content = block.get("content")
    text = joined_text(content)
    images = [p for b in content if isinstance(b, dict) and b.get("type") == "image"
              and (p := _image_part(b)) is not None] if isinstance(content, list) else []
    if block.get("is_error"):
        text = _TOOL_ERROR_PREFIX + text
    return text, images


def _assistant_message(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    texts = [b.get("text") or "" for b in blocks if b.get("type") == "text"]
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"),
                         "arguments": orjson.dumps(b.get("input") or {}).decode()},
        }
        for b in blocks if b.get("type") == "tool_use"
    ]
    # An answer's text blocks are one text split (e.g. around citations): join seamlessly.
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    elif msg["content"] is None:
        msg["content"] = ""  # e.g. a turn of thinking blocks only
    return msg


def chat_to_message(resp: dict[str, Any], requested_model: str) -> dict[str, Any]:
    """The Anthropic ``message`` equivalent to a ``chat.completion``."""
    message, text, finish_reason = first_choice(resp)
    content: list[dict[str, Any]] = []
    text = text or message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    calls = list(message.get("tool_calls") or [])
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    for call in calls:
        function = call.get("function") or {}
        content.append({
            "type": "tool_use",
            "id": call.get("id") or _new_id("toolu_"),
            "name": function.get("name") or "",
            "input": tool_input_from_arguments(function.get("arguments")),
        })
    stop_reason = _STOP_REASONS.get(finish_reason or "", "end_turn")
    if calls and stop_reason == "end_turn":
        stop_reason = "tool_use"  # some servers report "stop" after tool calls
    usage = Usage.from_openai(resp.get("usage"))
    upstream_id = resp.get("id")
    return {
        "id": f"msg_{upstream_id}" if upstream_id else _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage.anthropic(),
    }



def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _event(payload: dict[str, Any]) -> bytes:
    return frame(orjson.dumps(payload), payload["type"])


class ChatStreamToMessages:
    """Rewrites one chat-completions chunk stream as an Anthropic Messages SSE stream.

    ``feed`` each parsed chunk and send what it returns; call ``finish`` when the
    upstream ends (its ``[DONE]``), or ``error`` to end the stream in-band instead.
    ``message_start`` goes out with the first output; text and each tool call (by its
    OpenAI ``index``) become content blocks with consecutive indexes, one open at a
    time. Usage arrives last in OpenAI streams, so the input token count is 0 in
    ``message_start`` and reported in the final ``message_delta``.

    Tool calls are assumed to stream one after another, as OpenAI and the common
    servers do; a late fragment for an already closed tool block is still sent as a
    delta on that block's index rather than dropped.
    """

    __slots__ = ("_closed", "_id", "_model", "_next_index", "_open", "_open_is_text",
                 "_started", "_stop_reason", "_tool_blocks", "_tool_ids", "usage")

    def __init__(self, requested_model: str, message_id: str | None = None) -> None:
        self._model = requested_model
        self._id = message_id or _new_id("msg_")
        self._started = False
        self._closed = False
        self._next_index = 0
        self._open: int | None = None  # index of the open content block
        self._open_is_text = False
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool-call index → block index
        self._tool_ids: set[str] = set()
        self._stop_reason: str | None = None
        # The upstream's usage chunk, validated (hub.usage); zeros until it comes.
        self.usage = Usage()

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The Anthropic events to send now for one parsed OpenAI chunk (maybe b"")."""
        if self._closed:
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self._start())
        error = chunk_error(chunk)
        if error is not None:
            # Its OpenAI type says what kind of failure it was (a Bedrock throttling
            # exception mid-stream is a rate_limit_error): keep that for the client.
            detail = chunk.get("error")
            kind = detail.get("type") if isinstance(detail, dict) else None
            out.append(self.error(error, _STREAM_ERROR_TYPES.get(str(kind), "api_error")))
            return b"".join(out)
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = Usage.from_openai(usage)
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or (choice.get("index") or 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                out.append(self._text(text))
            for call in delta.get("tool_calls") or []:
                out.append(self._tool_call(call))
            if isinstance(delta.get("function_call"), dict):
                out.append(self._tool_call({"index": 0, "function": delta["function_call"]}))
            reason = choice.get("finish_reason")
            if reason:
                self._stop_reason = _STOP_REASONS.get(reason, "end_turn")
                out.append(self._close_block())
        return b"".join(out)

    def finish(self) -> bytes:
        """The closing events: last ``content_block_stop``, ``message_delta``, ``message_stop``.

        Safe with no chunk fed (the client still gets a complete, empty message) and
        idempotent (b"" once closed). Without a finish_reason the stop reason is
        ``end_turn``, or ``tool_use`` when tool calls were streamed.
        """
        if self._closed:
            return b""
        out = [] if self._started else [self._start()]
        out.append(self._close_block())
        stop_reason = self._stop_reason or "end_turn"
        if self._tool_blocks and stop_reason == "end_turn":
            stop_reason = "tool_use"  # some servers report "stop" after tool calls
        usage: dict[str, int] = {"output_tokens": self.usage.completion}
        if self.usage.prompt:
            usage.update(self.usage.anthropic(output=False))
        out.append(_event({"type": "message_delta",
                           "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                           "usage": usage}))
        out.append(_event({"type": "message_stop"}))
        self._closed = True
        return b"".join(out)

    def error(self, message: str, type_: str = "api_error") -> bytes:
        """An Anthropic ``error`` event; it ends the stream (later calls return b"")."""
        self._closed = True
        return _event({"type": "error", "error": {"type": type_, "message": message}})

    def _start(self) -> bytes:
        self._started = True
        return _event({
            "type": "message_start",
            "message": {
                "id": self._id, "type": "message", "role": "assistant", "model": self._model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": self.usage.prompt, "output_tokens": 0},
            },
        })

    def _open_block(self, block: dict[str, Any]) -> bytes:
        closing = self._close_block()
        self._open = self._next_index
        self._open_is_text = block["type"] == "text"
        self._next_index += 1
        return closing + _event({"type": "content_block_start", "index": self._open,
                                 "content_block": block})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        return _event({"type": "content_block_stop", "index": index})

    def _text(self, text: str) -> bytes:
        head = b""
        if self._open is None or not self._open_is_text:
            head = self._open_block({"type": "text", "text": ""})
        return head + _event({"type": "content_block_delta", "index": self._open,
                              "delta": {"type": "text_delta", "text": text}})

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        call_id = call.get("id")
        index = call.get("index")
        if not isinstance(index, int):
            # Some servers omit the index: a new id means a new call, else continue the last.
            fresh = call_id and call_id not in self._tool_ids
            index = len(self._tool_blocks) if fresh or not self._tool_blocks else max(
                self._tool_blocks)
        function = call.get("function") or {}
        head = b""
        if index not in self._tool_blocks:
            call_id = call_id or _new_id("toolu_")
            self._tool_ids.add(call_id)
            self._tool_blocks[index] = self._next_index
            head = self._open_block({"type": "tool_use", "id": call_id,
                                     "name": function.get("name") or "", "input": {}})
        arguments = function.get("arguments")
        if not arguments:
            return head
        return head + _event({"type": "content_block_delta", "index": self._tool_blocks[index],
                              "delta": {"type": "input_json_delta", "partial_json": arguments}})


def _text_chars(content: Any) -> tuple[int, int]:
    """(characters, images) of a message's or tool result's content."""
    if isinstance(content, str):
        return len(content), 0
    chars = images = 0
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            chars += len(block.get("text") or "")
        elif kind == "image":
            images += 1
        elif kind == "tool_use":
            chars += len(block.get("name") or "") + len(orjson.dumps(block.get("input") or {}))
        elif kind == "tool_result":
            c, i = _text_chars(block.get("content"))
            chars, images = chars + c, images + i
    return chars, images


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """A rough ``count_tokens`` answer for upstreams that cannot count for us.

    About one token per four characters of the system prompt, message text, tool-call
    inputs, tool results and tool definitions (as JSON), plus 4 tokens per message and
    1,600 per image (Anthropic's ceiling for one image). Tokenizers differ by tens of
    percent, so this is meant for budgeting, not billing; it is at least 1.
    """
    chars, images = _text_chars(body.get("system"))
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for msg in messages:
        c, i = _text_chars(msg.get("content"))
        chars, images = chars + c, images + i
    if body.get("tools"):
        chars += len(orjson.dumps(body["tools"]))
    tokens = -(-chars // BYTES_PER_TOKEN)  # ceiling division
    tokens += _MESSAGE_OVERHEAD_TOKENS * len(messages) + _IMAGE_TOKENS * images
    return max(1, tokens)
