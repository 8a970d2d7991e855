"""Gemini answers → hub (OpenAI chat) answers and stream chunks (pure, no I/O).

:func:`chat_completion` turns a ``GenerateContentResponse`` into a ``chat.completion``;
:class:`StreamToChat` turns the events of ``streamGenerateContent?alt=sse`` into
``chat.completion.chunk`` s as they arrive.

- Text parts are the content; parts marked ``thought: true`` (thought summaries) are
  left out. ``functionCall`` parts become ``tool_calls`` (arguments as JSON text), each
  with an id that carries the part's ``thoughtSignature`` (:func:`request.call_id`).
- ``finishReason``: STOP → stop (tool_calls when the answer calls a function, since
  Gemini says STOP then), MAX_TOKENS → length, the safety family → content_filter,
  anything else → stop. A prompt blocked outright (``promptFeedback.blockReason``, no
  candidates) is an empty answer with finish_reason content_filter.
- ``usageMetadata``: prompt_tokens = promptTokenCount (cached included) +
  toolUsePromptTokenCount; completion_tokens = candidatesTokenCount +
  thoughtsTokenCount (leaving thoughts out would under-bill); cached_tokens =
  cachedContentTokenCount; reasoning_tokens = thoughtsTokenCount.
- A stream's events are each a whole response whose ``usageMetadata`` is a running
  total: the last one counts, never the sum. The stream has no ``[DONE]``: it ends
  with the body; :meth:`StreamToChat.finish` then gives the usage chunk and ``[DONE]``
  if a finishReason came. A stream that breaks first (cut, timed out, or ended without
  a finishReason) gets only the usage chunk of its last running total
  (:meth:`StreamToChat.unfinished`, no ``[DONE]``): the router counts what Gemini
  reported and ends the client's stream with its error. An event
  ``{"error": {...}}`` inside the 200 stream becomes that usage chunk and an in-band
  error chunk.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from ...hub.usage import summed
from .request import call_id

__all__ = ["FINISH_REASONS", "StreamToChat", "chat_completion", "chat_usage", "has_answer"]

FINISH_REASONS: Final[dict[str, str]] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "LANGUAGE": "content_filter",
    "RECITATION": "stop",
    "MALFORMED_FUNCTION_CALL": "stop",
    "OTHER": "stop",
}


def chat_usage(meta: Any) -> dict[str, Any]:
    """OpenAI ``usage`` from Gemini's ``usageMetadata`` (missing counts read as 0; a
    count that is not one is passed on as sent, for hub.usage to reject)."""
    m = meta if isinstance(meta, dict) else {}
    prompt = summed(m.get("promptTokenCount"), m.get("toolUsePromptTokenCount"))
    thoughts = summed(m.get("thoughtsTokenCount"))
    completion = summed(m.get("candidatesTokenCount"), m.get("thoughtsTokenCount"))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": summed(m.get("cachedContentTokenCount"))},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }
    if isinstance(prompt, int) and isinstance(completion, int):
        usage["total_tokens"] = prompt + completion
    return usage


def _finish(reason: Any, calls: bool) -> str | None:
    if not isinstance(reason, str) or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    mapped = FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if calls and mapped == "stop" else mapped


def _tool_call(part: dict[str, Any]) -> dict[str, Any] | None:
    call = part.get("functionCall")
    if not isinstance(call, dict):
        return None
    args = call.get("args")
    return {"id": call_id(part.get("thoughtSignature")), "type": "function",
            "function": {"name": str(call.get("name") or ""),
                         "arguments": orjson.dumps(args if isinstance(args, dict)
                                                   else {}).decode()}}


def _read_parts(candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(text, tool calls) of one candidate's content; thought parts skipped."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = _tool_call(part)
        if call is not None:
            calls.append(call)
    return "".join(texts), calls


def _candidates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found = doc.get("candidates")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def _blocked(doc: dict[str, Any]) -> bool:
    feedback = doc.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _completion_id(doc: dict[str, Any]) -> str:
    rid = doc.get("responseId")
    return f"chatcmpl-{rid}" if isinstance(rid, str) and rid else f"chatcmpl-{time.time_ns():x}"


def has_answer(doc: dict[str, Any]) -> bool:
    """Whether a whole ``GenerateContentResponse`` answers at all: a candidate, or a
    prompt blocked outright. Usage alone is none (a 200 the router fails over from, as
    it does from a stream of usage alone), not a completion without choices."""
    return bool(_candidates(doc)) or _blocked(doc)


def chat_completion(doc: dict[str, Any], model: str) -> dict[str, Any]:
    """The ``chat.completion`` for a whole ``GenerateContentResponse``."""
    choices: list[dict[str, Any]] = []
    for i, candidate in enumerate(_candidates(doc)):
        text, calls = _read_parts(candidate)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        index = candidate.get("index")
        choices.append({"index": index if isinstance(index, int) else i, "message": message,
                        "finish_reason": _finish(candidate.get("finishReason"), bool(calls))
                        or "stop", "logprobs": None})
    if not choices and _blocked(doc):
        choices.append({"index": 0, "message": {"role": "assistant", "content": None},
                        "finish_reason": "content_filter", "logprobs": None})
    return {"id": _completion_id(doc), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": chat_usage(doc.get("usageMetadata"))}


class StreamToChat:
    """Gemini stream events → chat chunks, one event at a time."""

    __slots__ = ("_calls", "_created", "_id", "_model", "_open", "_roles", "error",
                 "finished", "usage")

    def __init__(self, model: str) -> None:
        self._model = model
        self._id = ""
        self._created = int(time.time())
        self._roles: set[int] = set()  # choices whose first chunk (with the role) went out
        self._calls: dict[int, int] = {}  # choice index -> tool calls sent so far
        self._open: set[int] = set()  # choices seen that have not finished yet
        self.usage: dict[str, Any] | None = None  # the latest running total, as OpenAI usage
        self.finished = False  # every choice seen has finished (or the prompt was blocked)
        self.error: dict[str, Any] | None = None  # an in-band error event, as sent

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": choices}

    def feed(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one event (possibly none)."""
        error = doc.get("error")
        if error is not None:
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            return [*self.unfinished(), {"error": _stream_error(self.error)}]
        if not self._id:
            self._id = _completion_id(doc)
        if isinstance(doc.get("usageMetadata"), dict):
            self.usage = chat_usage(doc["usageMetadata"])  # a running total: replace
        out: list[dict[str, Any]] = []
        for i, candidate in enumerate(_candidates(doc)):
            index = candidate.get("index")
            index = index if isinstance(index, int) else i
            text, calls = _read_parts(candidate)
            delta: dict[str, Any] = {}
            if index not in self._roles:
                self._roles.add(index)
                self._open.add(index)
                delta["role"] = "assistant"
            if text:
                delta["content"] = text
            if calls:
                first = self._calls.get(index, 0)
                delta["tool_calls"] = [{"index": first + k, **call}
                                       for k, call in enumerate(calls)]
                self._calls[index] = first + len(calls)
            reason = _finish(candidate.get("finishReason"), self._calls.get(index, 0) > 0)
            if reason is not None:
                self._open.discard(index)
                # With candidateCount > 1 each choice finishes in its own event.
                self.finished = not self._open
            if delta or reason is not None:
                out.append(self._chunk([{"index": index, "delta": delta,
                                         "finish_reason": reason, "logprobs": None}]))
        if not out and _blocked(doc):
            self.finished = True
            out.append(self._chunk([{"index": 0, "delta": {"role": "assistant"},
                                     "finish_reason": "content_filter", "logprobs": None}]))
        return out

    def finish(self) -> list[dict[str, Any]]:
        """At the end of the body: the usage chunk, if the stream ended properly (the
        caller then sends ``[DONE]``); nothing for a cut or failed stream."""
        if not self.finished or self.error is not None:
            return []
        return [{**self._chunk([]), "usage": self.usage or chat_usage(None)}]

    def unfinished(self) -> list[dict[str, Any]]:
        """For a stream that breaks before it finished (an error event, a cut, an end
        without a finishReason): the usage chunk of the running total so far, without
        ``[DONE]``, so that what Gemini reported is what the router counts; nothing if
        it reported none, or no choice went out yet (the attempt can still fail over,
        and is not counted), or the chunk went out already."""
        if self.usage is None or self.finished or not self._roles:
            return []
        usage, self.usage = self.usage, None
        return [{**self._chunk([]), "usage": usage}]


def _stream_error(error: dict[str, Any]) -> dict[str, Any]:
    status = error.get("status")
    return {"message": str(error.get("message") or "upstream error"), "type": "upstream_error",
            "param": None, "code": status if isinstance(status, str) else "stream_error"}
