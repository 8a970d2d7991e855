"""OpenAI chat-completions clients served by Anthropic upstreams (pure, no I/O).

:func:`chat_to_messages` turns a ``POST /v1/chat/completions`` body into a Messages
body, :func:`message_to_chat` turns the upstream's ``message`` back into a
``chat.completion``, :class:`MessagesStreamToChat` rewrites Anthropic SSE events into
chunks as they arrive, and :func:`anthropic_error_to_openai` translates error bodies
(the other way, for Anthropic clients, is :mod:`llm_router.dialects.anthropic_wire`).

Mapped: system and developer messages → ``system`` (joined by a blank line, wherever
they appear); text and image parts (``data:`` URL → base64 source, http(s) URL → url
source); assistant ``tool_calls`` → ``tool_use`` blocks; ``role: tool`` messages →
``tool_result`` blocks in a user turn; consecutive same-role turns merged (Anthropic
requires alternation); ``tools``; ``tool_choice`` (auto, none, required → any, function
→ tool) and ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``;
``max_completion_tokens`` / ``max_tokens`` (else the provider's default); ``temperature``
(clamped to Anthropic's 0-1), ``top_p``, ``stop`` → ``stop_sequences``, ``stream``,
``user`` → ``metadata.user_id``.

Dropped, because Anthropic has no equivalent (the request still succeeds):

- ``n`` (one choice is returned), ``logprobs`` / ``top_logprobs``, ``logit_bias``,
  ``presence_penalty``, ``frequency_penalty``, ``seed``, ``response_format``,
  ``reasoning_effort``, ``modalities`` / ``audio``, ``prediction``, ``service_tier``,
  ``store`` and OpenAI ``metadata``, ``stream_options`` (usage is always learnt; the
  client's ``include_usage`` is honoured by the stream translator), ``web_search_options``;
- legacy ``functions`` / ``function_call`` and ``role: function`` messages (no call id to
  pair a result with), and ``strict`` on tools;
- content parts other than text and images (``input_audio``, ``file``), non-base64
  ``data:`` URLs, and empty text (Anthropic rejects empty text blocks and empty turns).

Lossy in responses: ``thinking`` blocks are dropped; ``refusal`` → ``content_filter``,
``pause_turn`` → ``stop``, ``model_context_window_exceeded`` → ``length``; cache reads
and writes are counted in ``prompt_tokens`` (reads also as ``cached_tokens``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

import orjson

from ...dialects.anthropic import joined_text
from ...dialects.anthropic_wire import anthropic_status_type, error_text
from ...hub.chat import tool_input_from_arguments
from ...hub.sse import DONE, frame
from ...hub.usage import AnthropicUsage, Usage

__all__ = [
    "MessagesStreamToChat",
    "anthropic_error_to_openai",
    "chat_to_messages",
    "message_to_chat",
]

# Anthropic stop_reason → OpenAI finish_reason; anything unknown is a normal stop.
_FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_TOOL_CHOICES: Final[dict[str, str]] = {"auto": "auto", "none": "none", "required": "any"}

# Anthropic error type → OpenAI error type (the router's own OpenAI-shaped errors use the
# same vocabulary); the Anthropic type itself is kept as the ``code``.
_OPENAI_ERROR_TYPES: Final[dict[str, str]] = {
    "invalid_request_error": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "billing_error": "insufficient_quota",
    "rate_limit_error": "rate_limit_error",
}


def chat_to_messages(body: dict[str, Any], upstream_model: str,
                     default_max_tokens: int = 4096) -> dict[str, Any]:
    """The Anthropic Messages request equivalent to a chat-completions request."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role in ("system", "developer"):
            text = joined_text(msg.get("content"))
            if text:
                system.append(text)
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(msg)]
        elif role == "user":
            blocks = _user_blocks(msg.get("content"))
        elif role == "assistant":
            blocks = _assistant_blocks(msg)
        else:
            continue
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    out: dict[str, Any] = {
        "model": upstream_model,
        "messages": turns,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
        or default_max_tokens,
    }
    if system:
        out["system"] = "\n\n".join(system)
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(temperature, 1.0)  # OpenAI allows up to 2, Anthropic 1
    elif temperature is not None:
        out["temperature"] = temperature  # let the upstream explain what is wrong with it
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    if stops := [s for s in stops if s]:
        out["stop_sequences"] = stops
    tools = [_anthropic_tool(t["function"]) for t in body.get("tools") or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice:
            out["tool_choice"] = choice
    if body.get("stream"):
        out["stream"] = True
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    return out


def _image_block(url: str) -> dict[str, Any] | None:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64":
            return None
        source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        return None
    return {"type": "image", "source": source}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            block = _image_block(url) if isinstance(url, str) else None
            if block is not None:
                blocks.append(block)
    return blocks


def _assistant_blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = joined_text(msg.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": call.get("id") or "",
            "name": function.get("name") or "",
            "input": tool_input_from_arguments(function.get("arguments")),
        })
    return blocks


def _tool_result(msg: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.get("tool_call_id") or ""}
    text = joined_text(msg.get("content"))
    if text:
        block["content"] = text
    return block


def _anthropic_tool(function: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function.get("name"),
        # Anthropic requires an object schema even for tools that take no arguments.
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return {"type": _TOOL_CHOICES[choice]}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name")}
    return None


def message_to_chat(resp: dict[str, Any], requested_model: str) -> dict[str, Any]:
    """The ``chat.completion`` equivalent to an Anthropic ``message``."""
    blocks = [b for b in resp.get("content") or [] if isinstance(b, dict)]
    # Text blocks are one answer split (e.g. around citations), so join them seamlessly.
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    calls = [
        {"id": b.get("id"), "type": "function",
         "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input") or {})
                      .decode()}}
        for b in blocks if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant",
                               "content": text if text or not calls else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + str(resp.get("id") or uuid.uuid4().hex),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": requested_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": _FINISH_REASONS.get(resp.get("stop_reason") or "", "stop"),
        }],
        "usage": Usage.from_anthropic(resp.get("usage")).openai(),
    }


class MessagesStreamToChat:
    """Rewrites one Anthropic Messages SSE stream as a chat-completions chunk stream.

    ``feed`` each upstream event (its type and parsed data) and send what it returns.
    The stream ends with ``data: [DONE]`` after ``message_stop`` (preceded by a
    usage-only chunk when ``include_usage``) or after an in-band error chunk for an
    ``error`` event; ``done`` is then True. ``finish`` closes a stream the upstream cut
    short: normally if the finish reason was already sent, else with an error chunk.
    """

    __slots__ = ("_counts", "_created", "_finished", "_id", "_include_usage", "_model",
                 "_no_arguments", "_tool_index", "done")

    def __init__(self, requested_model: str, include_usage: bool) -> None:
        self._model = requested_model
        self._include_usage = include_usage
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self._created = int(time.time())
        self._counts = AnthropicUsage()
        self._finished = False  # the chunk with finish_reason went out
        self._tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool index
        self._no_arguments: set[int] = set()  # tool blocks no argument fragment came for
        self.done = False

    @property
    def usage(self) -> Usage:
        """The validated counts so far (hub.usage); the prompt includes cache reads and
        writes."""
        return self._counts.usage

    def feed(self, event_type: str, data: dict[str, Any]) -> bytes:
        """The OpenAI SSE bytes to send now for one Anthropic event (maybe b"")."""
        if self.done:
            return b""
        match event_type:
            case "message_start":
                message = data.get("message") or {}
                if message.get("id"):
                    self._id = "chatcmpl-" + str(message["id"])
                self._counts.add(message.get("usage"))
                return self._chunk({"role": "assistant", "content": ""})
            case "content_block_start":
                return self._block_start(data.get("index"), data.get("content_block") or {})
            case "content_block_delta":
                return self._block_delta(data.get("index"), data.get("delta") or {})
            case "content_block_stop":
                index = data.get("index")
                if isinstance(index, int) and index in self._no_arguments:
                    # A tool without arguments streams none (or ""): "{}" is its JSON,
                    # as the same call reads when not streamed.
                    self._no_arguments.discard(index)
                    return self._chunk({"tool_calls": [{
                        "index": self._tool_index[index], "function": {"arguments": "{}"}}]})
                return b""
            case "message_delta":
                self._counts.add(data.get("usage"))
                reason = (data.get("delta") or {}).get("stop_reason") or ""
                self._finished = True
                return self._chunk({}, _FINISH_REASONS.get(reason, "stop"))
            case "message_stop":
                return self._close()
            case "error":
                error = data.get("error") or {}
                return self._fail(str(error.get("message") or "upstream error"),
                                  str(error.get("type") or "api_error"))
            case _:  # ping, and events newer than this code
                return b""

    def finish(self) -> bytes:
        """b"" if the stream is done, else the bytes that end it properly."""
        if self.done:
            return b""
        if self._finished:
            return self._close()
        return self._fail("upstream stream ended before the message was complete", "api_error")

    def _block_start(self, index: Any, block: dict[str, Any]) -> bytes:
        if block.get("type") == "tool_use" and isinstance(index, int):
            tool = self._tool_index[index] = len(self._tool_index)
            self._no_arguments.add(index)
            return self._chunk({"tool_calls": [{
                "index": tool, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }]})
        if block.get("type") == "text" and block.get("text"):
            return self._chunk({"content": block["text"]})
        return b""

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunk({"content": delta["text"]})
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            self._no_arguments.discard(index)
            return self._chunk({"tool_calls": [{
                "index": self._tool_index[index],
                "function": {"arguments": delta["partial_json"]},
            }]})
        return b""  # thinking, signature and citation deltas have no chat equivalent

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return frame(orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}],
        }))

    def _close(self) -> bytes:
        self.done = True
        if not self._include_usage:
            return DONE
        return frame(orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model, "choices": [],
            "usage": self._counts.usage.openai(),
        })) + DONE

    def _fail(self, message: str, anthropic_type: str) -> bytes:
        self.done = True
        error = _openai_error(message, anthropic_type, None)
        return frame(orjson.dumps(error)) + DONE


def _openai_error(message: str, anthropic_type: str, status: int | None) -> dict[str, Any]:
    default = "server_error" if status is None or status >= 500 else "invalid_request_error"
    return {"error": {"message": message,
                      "type": _OPENAI_ERROR_TYPES.get(anthropic_type, default),
                      "param": None, "code": anthropic_type}}


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def anthropic_error_to_openai(status: int, body: bytes) -> dict[str, Any]:
    """An Anthropic error response as OpenAI's ``{"error": {...}}``.

    The message is kept; the type follows the Anthropic error type (or the status when
    the body is not Anthropic's JSON), which is also passed on as ``code``.
    """
    doc = _loads(body)
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict) and error.get("message"):
        kind = str(error.get("type") or anthropic_status_type(status))
        return _openai_error(str(error["message"]), kind, status)
    return _openai_error(error_text(body, status), anthropic_status_type(status), status)
