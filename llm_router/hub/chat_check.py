"""The types a ``POST /v1/chat/completions`` body must have where the router reads it.

A chat body goes to an OpenAI-compatible member as sent, but the router reads parts of
it on the way (the Anthropic translator for an Anthropic member, the prompt-cache
affinity key, the estimate), so a wrongly typed field there was a 500. Checked once, at
the edge, against OpenAI's own types: a 400 naming the field (``'messages[2].tool_calls[0]
.function' must be an object.``). Values are not judged (a temperature of 7, an unknown
role or part type): the member answers for those, as it would without the router.

The checks are tables: :data:`_TOP_FIELDS` for the body, :data:`_MESSAGE_FIELDS` for
each message, :data:`_PART_FIELDS` for each content part by type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..errors import BadRequest

__all__ = ["check_body"]

_Rule = tuple[Callable[[Any], bool], str]  # (test, what the value must be)


def _of(*types: type) -> Callable[[Any], bool]:
    """A test for JSON values of ``types`` (a boolean is never a number here)."""
    return lambda v: isinstance(v, types) and not (isinstance(v, bool) and bool not in types)


_STRING: Final[_Rule] = (_of(str), "must be a string")
_NUMBER: Final[_Rule] = (_of(int, float), "must be a number")
_INTEGER: Final[_Rule] = (_of(int), "must be an integer")
_OBJECT: Final[_Rule] = (_of(dict), "must be an object")
_LIST: Final[_Rule] = (_of(list), "must be a list")

_TOP_FIELDS: Final[tuple[tuple[str, _Rule], ...]] = (
    ("max_tokens", _INTEGER),
    ("max_completion_tokens", _INTEGER),
    ("temperature", _NUMBER),
    ("top_p", _NUMBER),
    ("user", _STRING),
    ("stop", (lambda v: isinstance(v, str) or (isinstance(v, list) and all(
        isinstance(s, str) for s in v)), "must be a string or a list of strings")),
    ("tools", _LIST),
    ("tool_choice", (_of(str, dict), "must be a string or an object")),
    ("parallel_tool_calls", (_of(bool), "must be true or false")),
)
_TOP_RULES: Final[dict[str, _Rule]] = dict(_TOP_FIELDS)
_TOP_NAMES: Final = _TOP_RULES.keys()
# Values of these exact types pass their field's rule without running it (a parsed
# body's values are exactly JSON's types; anything else goes to the rule).
_TOP_PASS: Final[dict[str, frozenset[type]]] = {
    "max_tokens": frozenset({int}), "max_completion_tokens": frozenset({int}),
    "temperature": frozenset({int, float}), "top_p": frozenset({int, float}),
    "user": frozenset({str}), "stop": frozenset({str}), "tools": frozenset({list}),
    "tool_choice": frozenset({str, dict}), "parallel_tool_calls": frozenset({bool}),
}
_MESSAGE_FIELDS: Final[tuple[tuple[str, _Rule], ...]] = (
    ("role", _STRING),
    ("content", (_of(str, list), "must be a string or a list of content parts")),
    ("tool_calls", _LIST),
    ("tool_call_id", _STRING),
)
_PART_FIELDS: Final[dict[str, tuple[tuple[str, _Rule], ...]]] = {
    "text": (("text", _STRING),),
    "image_url": (("image_url", (_of(str, dict), "must be an object with a 'url'")),),
}


def _fail(param: str, message: str) -> BadRequest:
    return BadRequest(f"'{param}' {message}.", param=param)


def _check_fields(obj: dict[str, Any], rules: tuple[tuple[str, _Rule], ...], at: str) -> None:
    """Each field of ``obj`` named in ``rules`` is absent, null, or passes its test."""
    for name, (test, must) in rules:
        value = obj.get(name)
        if value is not None and not test(value):
            raise _fail(f"{at}{name}", must)


def check_body(body: dict[str, Any]) -> None:
    """Raise :class:`BadRequest` for the first field the router reads that has the wrong
    type. The caller has checked ``model``, ``messages`` (a list) and ``stream``."""
    # A body sends few of the fields: test only those. Against the keys view the
    # intersection walks the body's keys; against the dict it looked each rule up.
    for name in body.keys() & _TOP_NAMES:
        value = body[name]
        if value is not None and type(value) not in _TOP_PASS[name] \
                and not _TOP_RULES[name][0](value):
            _check_fields(body, _TOP_FIELDS, "")  # raises for the first in table order
    messages = body["messages"]
    for message in messages:  # the common turns, in one step each, without an index
        if type(message) is not dict or type(message.get("content")) is not str \
                or type(message.get("role")) is not str or "tool_calls" in message \
                or "tool_call_id" in message:
            _check_messages(messages)  # from the first, as the ones before pass quickly
            break
    tools = body.get("tools")
    if tools:
        for i, tool in enumerate(tools):
            if not _function_passes(tool, required=False):
                _check_function(tool, f"tools[{i}]", required=False)  # raises, naming it
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("function") is not None:
        _check_function(choice, "tool_choice", required=True)


def _check_messages(messages: list[Any]) -> None:
    for i, message in enumerate(messages):
        if type(message) is dict and type(message.get("content")) is str \
                and type(message.get("role")) is str and "tool_calls" not in message \
                and "tool_call_id" not in message:
            continue  # the common turn, in one step: a long conversation is many of them
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(at, "must be an object with a 'role'")
        _check_fields(message, _MESSAGE_FIELDS, f"{at}.")
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            # A text part in one step, its path formatted only for an error: a body of a
            # million parts spent most of its check formatting paths nobody read.
            if type(part) is not dict or part.get("type") != "text" \
                    or type(part.get("text")) is not str:
                _check_part(part, f"{at}.content[{j}]")
        for j, call in enumerate(message.get("tool_calls") or ()):
            if not _function_passes(call, required=True):
                _check_function(call, f"{at}.tool_calls[{j}]", required=True)


def _check_part(part: Any, at: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _fail(at, "must be an object with a string 'type'")
    _check_fields(part, _PART_FIELDS.get(part["type"], ()), f"{at}.")
    image = part.get("image_url")
    if part["type"] == "image_url" and isinstance(image, dict) \
            and not isinstance(image.get("url"), str):
        raise _fail(f"{at}.image_url.url", "must be a string")


# A function's fields and their rules: _check_function's, and _function_passes'.
_FUNCTION_FIELDS: Final[tuple[tuple[str, _Rule], ...]] = (
    ("name", _STRING), ("arguments", _STRING), ("parameters", _OBJECT),
    ("description", _STRING))


def _function_passes(holder: Any, *, required: bool) -> bool:
    """Whether :func:`_check_function` would pass ``holder``, without formatting the
    path it needs only to name a failure."""
    if type(holder) is not dict:
        return False
    function = holder.get("function")
    if function is None:
        return not required
    if type(function) is not dict:
        return False
    for name, (test, _) in _FUNCTION_FIELDS:
        value = function.get(name)
        if value is not None and not test(value):
            return False
    call_id = holder.get("id")
    return call_id is None or type(call_id) is str


def _check_function(holder: Any, at: str, *, required: bool) -> None:
    """A tool call, a tool, or a tool choice: an object whose ``function`` is an object
    with a string ``name`` (and string ``arguments`` / object ``parameters``)."""
    if not isinstance(holder, dict):
        raise _fail(at, "must be an object")
    function = holder.get("function")
    if function is None and not required:
        return
    if not isinstance(function, dict):
        raise _fail(f"{at}.function", "must be an object")
    _check_fields(function, _FUNCTION_FIELDS, f"{at}.function.")
    if holder.get("id") is not None and not isinstance(holder["id"], str):
        raise _fail(f"{at}.id", "must be a string")
