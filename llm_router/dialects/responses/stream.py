"""Chat-completions chunk streams rewritten as Responses API event streams (pure, no I/O).

A Responses client expects a fixed grammar, every event carrying ``type`` and a
``sequence_number`` that counts from 0: ``response.created``, ``response.in_progress``,
then per output item ``response.output_item.added`` … ``response.output_item.done``
(a message item wraps ``response.content_part.added``, ``response.output_text.delta``
…, ``response.output_text.done``, ``response.content_part.done``; a function call item
wraps ``response.function_call_arguments.delta`` … ``.done``), and one terminal event:
``response.completed``, ``response.incomplete`` or ``response.failed``. The openai SDK's
``responses.stream`` checks that grammar (indexes, ids, order), so the translator keeps
one item open at a time and closes it before the next opens.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...hub.chat import chunk_error
from ...hub.sse import frame as sse_frame
from ...hub.usage import Usage
from .translate import ResponseFrame, new_item_id, status_of, usage_to_responses

__all__ = ["ChatStreamToResponses", "EventWriter", "replay_events"]


class EventWriter:
    """Numbers and frames Responses events: ``event: <type>`` and ``sequence_number``."""

    __slots__ = ("next_sequence",)

    def __init__(self, first_sequence: int = 0) -> None:
        self.next_sequence = first_sequence

    def event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.next_sequence, **payload}
        self.next_sequence += 1
        return sse_frame(orjson.dumps(data), kind)


class ChatStreamToResponses:
    """Rewrites one chat-completions chunk stream as a Responses event stream.

    ``feed`` each parsed chunk and send what it returns; ``finish`` when the upstream
    ends (``[DONE]``), or ``error`` to end the stream with ``response.failed`` instead.
    After either, ``final`` is the whole ``response`` object (what a non-streamed
    request would have returned), and ``usage`` the token counts.
    """

    __slots__ = ("_finish_reason", "_frame", "_open", "_output", "_started", "_text",
                 "_tools", "_usage", "_writer", "final")

    def __init__(self, frame: ResponseFrame) -> None:
        self._frame = frame
        self._writer = EventWriter()
        self._started = False
        self._output: list[dict[str, Any]] = []  # closed items, in output order
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._text: list[str] = []  # the open message's text so far
        self._tools: dict[int, dict[str, Any]] = {}  # chat tool-call index → its item
        self._finish_reason: str | None = None
        self._usage: Any = None  # the usage chunk's object, as sent
        self.final: dict[str, Any] | None = None

    @property
    def usage(self) -> Usage:
        """The upstream's usage chunk, validated (hub.usage); zeros until it comes."""
        return Usage.from_openai(self._usage)

    @property
    def ended(self) -> bool:
        return self.final is not None

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events to send now for one parsed chat chunk (maybe b"")."""
        if self.final is not None:
            return b""
        out: list[bytes] = [] if self._started else [self._start()]
        error = chunk_error(chunk)
        if error is not None:
            out.append(self.error(error))
            return b"".join(out)
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or (choice.get("index") or 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out.append(self._text_delta(text))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    out.append(self._tool_delta(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return b"".join(out)

    def finish(self) -> bytes:
        """The closing events and the terminal ``response.completed`` (or ``.incomplete``)."""
        if self.final is not None:
            return b""
        out: list[bytes] = [] if self._started else [self._start()]
        out.append(self._close())
        status, incomplete = status_of(self._finish_reason)
        self.final = self._frame.response(status, self._output,
                                          usage_to_responses(self._usage), incomplete)
        out.append(self._writer.event(f"response.{status}", {"response": self.final}))
        return b"".join(out)

    def error(self, message: str) -> bytes:
        """``response.failed``, ending the stream (later calls return b"")."""
        if self.final is not None:
            return b""
        out: list[bytes] = [] if self._started else [self._start()]
        self._open = None  # an item cut short is not reported as done
        self.final = self._frame.response(
            "failed", self._output, usage_to_responses(self._usage),
            error={"code": "server_error", "message": message})
        out.append(self._writer.event("response.failed", {"response": self.final}))
        return b"".join(out)

    def _start(self) -> bytes:
        self._started = True
        shell = self._frame.response("in_progress", [])
        return (self._writer.event("response.created", {"response": shell})
                + self._writer.event("response.in_progress", {"response": shell}))

    def _open_item(self, item: dict[str, Any]) -> bytes:
        closing = self._close()
        self._open = item
        return closing + self._writer.event("response.output_item.added", {
            "output_index": len(self._output), "item": item})

    def _text_delta(self, text: str) -> bytes:
        head = b""
        index = len(self._output)
        if self._open is None or self._open["type"] != "message":
            item = {"type": "message", "id": new_item_id("msg"), "status": "in_progress",
                    "role": "assistant", "content": []}
            head = self._open_item(item) + self._writer.event("response.content_part.added", {
                "item_id": item["id"], "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [],
                         "logprobs": []}})
            self._text = []
        assert self._open is not None
        self._text.append(text)
        return head + self._writer.event("response.output_text.delta", {
            "item_id": self._open["id"], "output_index": index, "content_index": 0,
            "delta": text, "logprobs": []})

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        index = call.get("index")
        if not isinstance(index, int):
            # Some servers omit the index: a new id means a new call, else the last one.
            known = {t["call_id"] for t in self._tools.values()}
            fresh = call.get("id") and call["id"] not in known
            index = len(self._tools) if fresh or not self._tools else max(self._tools)
        function = call.get("function") or {}
        head = b""
        item = self._tools.get(index)
        if item is None:
            item = self._frame.call_item(call.get("id") or new_item_id("call"),
                                         function.get("name") or "", "", "in_progress")
            self._tools[index] = item
            head = self._open_item(item)
        arguments = function.get("arguments")
        if not arguments or item is not self._open:
            # A late fragment of an already closed call cannot be sent any more; it is
            # kept in the final object.
            if arguments:
                item["arguments"] += arguments
            return head
        item["arguments"] += arguments
        return head + self._writer.event("response.function_call_arguments.delta", {
            "item_id": item["id"], "output_index": len(self._output), "delta": arguments})

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        index = len(self._output)
        out: list[bytes] = []
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            out.append(self._writer.event("response.output_text.done", {
                "item_id": item["id"], "output_index": index, "content_index": 0,
                "text": text, "logprobs": []}))
            out.append(self._writer.event("response.content_part.done", {
                "item_id": item["id"], "output_index": index, "content_index": 0,
                "part": part}))
            item["content"] = [part]
        else:
            out.append(self._writer.event("response.function_call_arguments.done", {
                "item_id": item["id"], "output_index": index, "name": item["name"],
                "arguments": item["arguments"]}))
        item["status"] = "completed"
        out.append(self._writer.event("response.output_item.done", {"output_index": index,
                                                                "item": item}))
        self._output.append(item)
        return b"".join(out)


def replay_events(response: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A finished ``response`` object as the events that would have streamed it, in
    order (``GET /v1/responses/{id}?stream=true``), each ``(type, payload)`` before the
    sequence number is added: created, in_progress, each output item opened, its text
    or arguments, closed, then the terminal event for its status."""
    status = response.get("status")
    shell = {**response, "status": "in_progress", "output": [], "error": None,
             "incomplete_details": None}
    shell.pop("usage", None)
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": shell}), ("response.in_progress", {"response": shell})]
    for index, item in enumerate(response.get("output") or []):
        if not isinstance(item, dict):
            continue
        events.extend(_replayed_item(index, item))
    terminal = status if status in ("completed", "incomplete", "failed") else "completed"
    events.append((f"response.{terminal}", {"response": response}))
    return events


def _replayed_item(index: int, item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    item_id = item.get("id") or ""
    opened: dict[str, Any] = {**item, "status": "in_progress"}
    if item.get("type") == "message":
        opened["content"] = []
    elif item.get("type") == "function_call":
        opened["arguments"] = ""
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.output_item.added", {"output_index": index, "item": opened})]
    where = {"item_id": item_id, "output_index": index}
    if item.get("type") == "message":
        for j, part in enumerate(item.get("content") or []):
            if not isinstance(part, dict):
                continue
            at = {**where, "content_index": j}
            if part.get("type") == "output_text":
                text = part.get("text") or ""
                empty = {**part, "text": ""}
                events += [
                    ("response.content_part.added", {**at, "part": empty}),
                    ("response.output_text.delta", {**at, "delta": text, "logprobs": []}),
                    ("response.output_text.done", {**at, "text": text, "logprobs": []})]
            else:
                events.append(("response.content_part.added", {**at, "part": part}))
            events.append(("response.content_part.done", {**at, "part": part}))
    elif item.get("type") == "function_call":
        arguments = item.get("arguments") or ""
        events += [
            ("response.function_call_arguments.delta", {**where, "delta": arguments}),
            ("response.function_call_arguments.done", {**where, "name": item.get("name"),
                                                      "arguments": arguments})]
    events.append(("response.output_item.done", {"output_index": index, "item": item}))
    return events
