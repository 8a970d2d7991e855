"""ConverseStream events as hub (OpenAI chat) stream chunks (pure, no I/O).

Feed each decoded event-stream message to :meth:`ConverseStreamToChat.feed`; it returns
the SSE bytes to pass on:

- ``messageStart`` → the first chunk (``role: assistant``);
- ``contentBlockStart`` with a ``toolUse`` → a ``tool_calls`` chunk with its id and
  name; ``contentBlockDelta`` ``text`` → content, ``toolUse.input`` fragments → the
  call's ``arguments`` fragments (or content, for response_format's forced tool);
  ``reasoningContent`` has no chat equivalent and is dropped; ``contentBlockStop`` adds
  nothing, unless it ends a tool call no input came for: then its arguments ``{}``;
- ``messageStop`` → the chunk with the mapped ``finish_reason``;
- ``metadata`` (usage, which comes last) → a usage chunk with ``choices: []`` and
  ``data: [DONE]``: ``done`` is then True (``answered`` says whether content, a
  ``messageStop`` or an exception came before it: a stream without is no answer);
- an exception frame (``throttlingException``, ``modelStreamErrorException`` ...) →
  an ``{"error": ...}`` chunk and ``[DONE]``; ``error`` then holds the error's name and
  its router status (429 for throttling).

:meth:`finish` ends a stream the upstream closed without ``metadata``: normally when the
finish reason was already sent, else not at all (the caller reports the cut). A body
that ends inside a message is cut whatever came before it (the caller does not call
:meth:`finish`).
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from ...hub.sse import json_object
from .converse import Plan, chat_usage, finish_reason, new_id
from .errors import stream_error
from .eventstream import Message

__all__ = ["ConverseStreamToChat", "StreamFailure"]

_DONE: Final = b"data: [DONE]\n\n"


class StreamFailure:
    """An exception frame the upstream sent mid-stream."""

    __slots__ = ("name", "status")

    def __init__(self, name: str, status: int) -> None:
        self.name = name
        self.status = status


class ConverseStreamToChat:
    """One ConverseStream rewritten as chat-completion chunks."""

    __slots__ = ("_blocks", "_created", "_finished", "_head", "_no_input", "_plan", "answered",
                 "done", "error", "usage")

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._created = int(time.time())
        self._head = (b'{"id":"chatcmpl-' + new_id().encode()
                      + b'","object":"chat.completion.chunk","created":'
                      + str(self._created).encode() + b',"model":'
                      + orjson.dumps(plan.model) + b',"choices":')
        # Converse block index → OpenAI tool-call index; -1 marks response_format's tool.
        self._blocks: dict[int, int] = {}
        self._no_input: set[int] = set()  # tool blocks no input fragment came for
        self._finished = False  # the finish_reason chunk went out
        # Content, a stop or an exception came: the answer has begun (messageStart only
        # says who speaks, metadata only what it cost).
        self.answered = False
        self.done = False
        self.error: StreamFailure | None = None
        self.usage: dict[str, Any] | None = None  # OpenAI-shaped, once metadata came

    def feed(self, message: Message) -> bytes:
        """The SSE bytes for one event-stream message (maybe b"")."""
        if self.done:
            return b""
        headers = message.headers
        kind = headers.get(":message-type")
        if kind != "event":
            name = str(headers.get(":exception-type") or headers.get(":error-code")
                       or "internalServerException")
            status, error = stream_error(name, message.payload)
            self.error = StreamFailure(str(error["error"]["code"]), status)
            self.done = self.answered = True
            return b"data: " + orjson.dumps(error) + b"\n\n" + _DONE
        data = json_object(message.payload) if message.payload else {}
        if data is None:
            return b""
        match headers.get(":event-type"):
            case "messageStart":
                return self._chunk({"role": "assistant", "content": ""})
            case "contentBlockStart":
                return self._start(data.get("contentBlockIndex"), data.get("start"))
            case "contentBlockDelta":
                return self._delta(data.get("contentBlockIndex"), data.get("delta"))
            case "contentBlockStop":
                return self._stop(data.get("contentBlockIndex"))
            case "messageStop":
                self._finished = self.answered = True
                return self._chunk({}, finish_reason(data.get("stopReason"), self._plan))
            case "metadata":
                self.usage = chat_usage(data.get("usage"))
                self.done = True
                return self._usage_chunk()
            case _:  # events newer than this code
                return b""

    def finish(self) -> bytes:
        """At the upstream's end of stream: ``[DONE]`` if the answer was complete
        but lacked its usage, else b"" (and ``done`` stays False)."""
        if self.done or not self._finished:
            return b""
        self.done = True
        return _DONE

    def _start(self, index: Any, start: Any) -> bytes:
        use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(use, dict) or not isinstance(index, int):
            return b""
        if self._plan.response_tool is not None and use.get("name") == self._plan.response_tool:
            self._blocks[index] = -1
            return b""
        tool = self._blocks[index] = sum(1 for v in self._blocks.values() if v >= 0)
        self._no_input.add(index)
        self.answered = True
        return self._chunk({"tool_calls": [{
            "index": tool, "id": use.get("toolUseId"), "type": "function",
            "function": {"name": use.get("name"), "arguments": ""}}]})

    def _delta(self, index: Any, delta: Any) -> bytes:
        if not isinstance(delta, dict):
            return b""
        text = delta.get("text")
        if isinstance(text, str):
            if not text:
                return b""
            self.answered = True
            # The hot path, one chunk per token: the JSON written around the text alone.
            return (b"data: " + self._head + b'[{"index":0,"delta":{"content":'
                    + orjson.dumps(text) + b'},"logprobs":null,"finish_reason":null}]}\n\n')
        use = delta.get("toolUse")
        fragment = use.get("input") if isinstance(use, dict) else None
        if not isinstance(fragment, str) or not fragment or not isinstance(index, int):
            return b""  # reasoningContent, citations: no chat equivalent
        tool = self._blocks.get(index)
        if tool is None:
            return b""
        self.answered = True
        if tool < 0:
            return self._chunk({"content": fragment})
        self._no_input.discard(index)
        return self._chunk({"tool_calls": [{"index": tool,
                                            "function": {"arguments": fragment}}]})

    def _stop(self, index: Any) -> bytes:
        """A tool block ends: a tool without arguments streams no input, and "{}" is
        its JSON (as the same call reads when not streamed); else nothing."""
        if not isinstance(index, int) or index not in self._no_input:
            return b""
        self._no_input.discard(index)
        return self._chunk({"tool_calls": [{"index": self._blocks[index],
                                            "function": {"arguments": "{}"}}]})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = orjson.dumps([{"index": 0, "delta": delta, "logprobs": None,
                                "finish_reason": finish}])
        return b"data: " + self._head + choice + b"}\n\n"

    def _usage_chunk(self) -> bytes:
        return (b"data: " + self._head + b'[],"usage":' + orjson.dumps(self.usage)
                + b"}\n\n" + _DONE)

