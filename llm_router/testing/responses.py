"""The fake upstream's own Responses API: answers as an upstream with ``/v1/responses``.

Pure generators, like the rest of :mod:`fake_upstream` (which serves them and keeps
the ids it issued, so ``previous_response_id`` works against it as against OpenAI):
:func:`response_object` answers a request whole, :func:`response_events` as the event
stream. Written independently of the router's translators on purpose, so tests of the
``native`` path compare the router against a second opinion, not against itself.

The answer is a function call when ``tools`` lists a function and the input does not
end with a ``function_call_output``; else ``max_output_tokens`` words (16 by default)
of the same vocabulary as the chat fake, ``incomplete`` when that limit cut it.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["response_events", "response_object"]

_Body = dict[str, Any]
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_DEFAULT_TOKENS = 16
_MAX_TOKENS = 4096
_TOOL_ARGUMENTS = '{"location": "Paris"}'
_TOOL_TOKENS = 8


def _id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_chars(value.get(k)) for k in ("text", "content", "output", "arguments"))
    return 0


def _input_tokens(body: _Body) -> int:
    return max(1, (_chars(body.get("input")) + _chars(body.get("instructions")) + 3) // 4)


def _tool(body: _Body) -> str | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)
             and t.get("type") == "function"]
    if not tools or body.get("tool_choice") == "none":
        return None
    items = body.get("input")
    if isinstance(items, list) and items and isinstance(items[-1], dict) \
            and items[-1].get("type") == "function_call_output":
        return None
    return str(tools[0].get("name") or "tool")


def _plan(body: _Body) -> tuple[str | None, str, int, bool]:
    """(tool name or None, text, output tokens, cut by max_output_tokens)."""
    tool = _tool(body)
    if tool is not None:
        return tool, "", _TOOL_TOKENS, False
    limit = body.get("max_output_tokens")
    wanted = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    n = min(_MAX_TOKENS, wanted if wanted is not None else _DEFAULT_TOKENS)
    words = [_WORDS[i % len(_WORDS)] for i in range(max(0, n))]
    return None, " ".join(words), n, wanted is not None


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _shell(body: _Body, model: str, response_id: str, status: str) -> _Body:
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()),
        "status": status, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "model": model, "output": [],
        # As the API: a field sent as null reads as its default.
        "parallel_tool_calls": _or(body.get("parallel_tool_calls"), True),
        "previous_response_id": body.get("previous_response_id"),
        "store": _or(body.get("store"), True), "tool_choice": _or(body.get("tool_choice"), "auto"),
        "tools": body.get("tools") or [], "metadata": body.get("metadata") or {},
        "temperature": _or(body.get("temperature"), 1.0), "top_p": _or(body.get("top_p"), 1.0),
    }


def _finish(body: _Body, response: _Body, output: list[_Body], tokens: int,
            cut: bool) -> _Body:
    prompt = _input_tokens(body)
    response["output"] = output
    response["status"] = "incomplete" if cut else "completed"
    if cut:
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    response["usage"] = {"input_tokens": prompt,
                         "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                         "output_tokens": tokens,
                         "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": prompt + tokens}
    return response


def _items(tool: str | None, text: str) -> list[_Body]:
    if tool is not None:
        return [{"type": "function_call", "id": _id("fc"), "call_id": _id("call"),
                 "name": tool, "arguments": _TOOL_ARGUMENTS, "status": "completed"}]
    return [{"type": "message", "id": _id("msg"), "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": text, "annotations": [],
                          "logprobs": []}]}]


def response_object(body: _Body, model: str) -> _Body:
    """A complete ``response`` answering ``body``."""
    tool, text, tokens, cut = _plan(body)
    return _finish(body, _shell(body, model, _id("resp"), "in_progress"), _items(tool, text),
                   tokens, cut)


def response_events(body: _Body, model: str) -> list[tuple[str, _Body]]:
    """:func:`response_object` as the Responses event stream: ``(event type, data)``."""
    tool, text, tokens, cut = _plan(body)
    response = _shell(body, model, _id("resp"), "in_progress")
    events: list[tuple[str, _Body]] = []

    def emit(kind: str, **payload: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **payload}))

    emit("response.created", response=dict(response))
    emit("response.in_progress", response=dict(response))
    item = _items(tool, text)[0]
    if tool is not None:
        emit("response.output_item.added", output_index=0,
             item={**item, "arguments": "", "status": "in_progress"})
        half = len(_TOOL_ARGUMENTS) // 2
        for part in (_TOOL_ARGUMENTS[:half], _TOOL_ARGUMENTS[half:]):
            emit("response.function_call_arguments.delta", item_id=item["id"], output_index=0,
                 delta=part)
        emit("response.function_call_arguments.done", item_id=item["id"], output_index=0,
             name=tool, arguments=_TOOL_ARGUMENTS)
    else:
        emit("response.output_item.added", output_index=0,
             item={**item, "content": [], "status": "in_progress"})
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        emit("response.content_part.added", item_id=item["id"], output_index=0,
             content_index=0, part=empty)
        for i, word in enumerate(text.split(" ") if text else ()):
            emit("response.output_text.delta", item_id=item["id"], output_index=0,
                 content_index=0, delta=word if i == 0 else " " + word, logprobs=[])
        emit("response.output_text.done", item_id=item["id"], output_index=0,
             content_index=0, text=text, logprobs=[])
        emit("response.content_part.done", item_id=item["id"], output_index=0,
             content_index=0, part=item["content"][0])
    emit("response.output_item.done", output_index=0, item=item)
    final = _finish(body, response, [item], tokens, cut)
    emit(f"response.{final['status']}", response=final)
    return events
