"""Reading OpenAI chat answers the tolerant way every translator needs.

Upstreams that call themselves OpenAI-compatible differ in the details: content as a
string or as parts, errors reported in-band in the middle of a stream. The translators
to Anthropic and to the Responses API read those details here, once, the same way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

__all__ = ["FirstChoice", "chunk_error", "first_choice", "tool_input_from_arguments"]


class FirstChoice(NamedTuple):
    """What the translators read of a ``chat.completion``'s first choice."""

    message: dict[str, Any]
    text: str | None  # content parts joined; None when there is none
    finish_reason: Any


def first_choice(chat: dict[str, Any]) -> FirstChoice:
    """The first choice of a ``chat.completion``; missing or malformed parts read as
    empty rather than failing the translation."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    if not isinstance(message, dict):
        message = {}
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with content parts
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    return FirstChoice(message, text if isinstance(text, str) else None,
                       choice.get("finish_reason"))


def chunk_error(chunk: dict[str, Any]) -> str | None:
    """The message of an error a stream chunk reports in-band (some servers fail
    mid-stream this way), or None for an ordinary chunk."""
    error = chunk.get("error")
    if not error:
        return None
    message = error.get("message") if isinstance(error, dict) else str(error)
    return str(message or "upstream error")


def tool_input_from_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` JSON text as an input object.

    Empty or missing arguments give ``{}``; text that is not a JSON object gives
    ``{"_raw_arguments": text}`` rather than losing what the model produced.
    """
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}
