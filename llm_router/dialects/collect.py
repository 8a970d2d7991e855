"""A stream, as sent to the client, folded back into the whole answer it streamed.

The response cache (gateway/response_cache.py) keeps every answer whole, in the
client's dialect, so that a later request, streamed or not, can be served from it: a
whole answer as it is, a stream through the dialect's ``answer_events``. A streamed
answer is collected here from the exact events the client received. Only the shapes a
client dialect streams are known: OpenAI chat and completions chunks, Anthropic
Messages events. Anything unrecognised makes the collector give up (``answer`` is None),
and the answer is then simply not cached.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..hub.sse import event_fields, json_object
from ..hub.stream import Dialect, Usage

__all__ = ["Collector", "collector"]


class Collector(Protocol):
    """Fed the client's events in order; ``answer`` is the whole answer or None."""

    def feed(self, raw: bytes) -> None: ...

    def answer(self, usage: Usage) -> dict[str, Any] | None:
        """The whole answer; ``usage`` fills in counts the events did not carry."""
        ...


def collector(client: str, kind: str) -> Collector | None:
    """The collector for a stream of ``kind`` in the ``client`` dialect, if one exists."""
    if client == Dialect.OPENAI and kind in ("chat", "completions"):
        return _ChunkCollector(kind == "chat")
    if client == Dialect.ANTHROPIC and kind == "messages":
        return _MessageCollector()
    return None


def openai_usage(usage: Usage) -> dict[str, Any]:
    """An OpenAI ``usage`` object of these counts."""
    out: dict[str, Any] = {"prompt_tokens": usage.prompt, "completion_tokens": usage.completion,
                           "total_tokens": usage.prompt + usage.completion}
    if usage.cached:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached}
    return out


class _ChunkCollector:
    """OpenAI ``chat.completion.chunk`` (or ``text_completion``) events."""

    __slots__ = ("_chat", "_choices", "_head", "_usage", "broken")

    def __init__(self, chat: bool) -> None:
        self._chat = chat
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self.broken = False

    def feed(self, raw: bytes) -> None:
        _, data = event_fields(raw)
        if self.broken or not data or data == b"[DONE]":
            return
        chunk = json_object(data)
        if chunk is None or not isinstance(chunk.get("choices", []), list):
            self.broken = True
            return
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if name in chunk and name not in self._head:
                self._head[name] = chunk[name]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        try:
            for piece in chunk.get("choices") or ():
                self._choice(piece)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.broken = True

    def _choice(self, piece: dict[str, Any]) -> None:
        index = int(piece.get("index", 0))
        choice = self._choices.setdefault(index, {"index": index, "text": [], "calls": {},
                                                  "refusal": [], "role": "assistant"})
        if piece.get("finish_reason") is not None:
            choice["finish_reason"] = piece["finish_reason"]
        if not self._chat:
            choice["text"].append(str(piece.get("text") or ""))
            return
        delta = piece.get("delta") or {}
        if delta.get("role"):
            choice["role"] = delta["role"]
        if delta.get("content"):
            choice["text"].append(str(delta["content"]))
        if delta.get("refusal"):
            choice["refusal"].append(str(delta["refusal"]))
        for call in delta.get("tool_calls") or ():
            slot = choice["calls"].setdefault(int(call.get("index", 0)),
                                              {"id": None, "type": "function",
                                               "name": [], "arguments": []})
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            fn = call.get("function") or {}
            if fn.get("name"):
                slot["name"].append(str(fn["name"]))
            if fn.get("arguments"):
                slot["arguments"].append(str(fn["arguments"]))

    def answer(self, usage: Usage) -> dict[str, Any] | None:
        if self.broken or not self._choices:
            return None
        doc: dict[str, Any] = {"id": self._head.get("id", ""),
                               "object": "chat.completion" if self._chat else "text_completion",
                               **{k: v for k, v in self._head.items() if k != "id"}}
        choices = []
        for index in sorted(self._choices):
            c = self._choices[index]
            out: dict[str, Any] = {"index": index}
            if self._chat:
                message: dict[str, Any] = {"role": c["role"],
                                           "content": "".join(c["text"]) or None}
                if c["refusal"]:
                    message["refusal"] = "".join(c["refusal"])
                if c["calls"]:
                    message["tool_calls"] = [
                        {"id": s["id"], "type": s["type"],
                         "function": {"name": "".join(s["name"]),
                                      "arguments": "".join(s["arguments"])}}
                        for _, s in sorted(c["calls"].items())]
                out["message"] = message
            else:
                out["text"] = "".join(c["text"])
            out["finish_reason"] = c.get("finish_reason")
            choices.append(out)
        doc["choices"] = choices
        doc["usage"] = self._usage if self._usage is not None else openai_usage(usage)
        return doc


class _MessageCollector:
    """Anthropic Messages events: ``message_start`` ... ``message_stop``."""

    __slots__ = ("_blocks", "_json", "_message", "broken")

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}  # tool_use input, as streamed
        self.broken = False

    def feed(self, raw: bytes) -> None:
        _, data = event_fields(raw)
        if self.broken or not data:
            return
        event = json_object(data)
        if event is None:
            self.broken = True
            return
        try:
            self._event(event)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.broken = True

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            self._message = dict(event["message"])
        elif kind == "content_block_start":
            block = dict(event["content_block"])
            self._blocks[int(event["index"])] = block
            if block.get("type") in ("tool_use", "server_tool_use"):
                self._json[int(event["index"])] = []
        elif kind == "content_block_delta":
            block, delta = self._blocks[int(event["index"])], event["delta"]
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta["text"]
            elif dtype == "input_json_delta":
                self._json[int(event["index"])].append(delta["partial_json"])
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif dtype == "signature_delta":
                block["signature"] = block.get("signature", "") + delta["signature"]
            elif dtype == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
            else:
                raise ValueError(dtype)
        elif kind == "message_delta" and self._message is not None:
            self._message.update(event.get("delta") or {})
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._message["usage"] = {**(self._message.get("usage") or {}), **usage}

    def answer(self, usage: Usage) -> dict[str, Any] | None:
        del usage  # a Messages stream always carries its usage
        if self.broken or self._message is None:
            return None
        try:
            for index, parts in self._json.items():
                self._blocks[index]["input"] = orjson.loads("".join(parts)) if parts else {}
        except orjson.JSONDecodeError:
            return None
        return {**self._message, "content": [self._blocks[i] for i in sorted(self._blocks)]}
