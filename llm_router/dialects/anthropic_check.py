"""The shape a ``POST /v1/messages`` (or ``/v1/messages/count_tokens``) body must have
before any member sees it.

Checked once, at the edge, so the translators, the estimate and the affinity key can
trust what they read, and a wrongly typed field is a 400 in Anthropic's error shape
whose message names it (``'messages[0].content[1].text' must be a string.``), never a
500 from deep inside a translation. Only what the router reads is checked, against the
shapes Anthropic documents; unknown fields and block types are left for an Anthropic
member to judge as sent.

The checks are tables: :data:`_TOP_FIELDS` for the body, :data:`_BLOCK_FIELDS` for the
fields each content block type must (or may) carry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..errors import BadRequest

__all__ = ["check_body"]

# "system" in messages: Claude Code sends mid-conversation system messages (its beta
# mid-conversation-system-2026-04-07); chat members take them as system messages.
_ROLES: Final = frozenset({"user", "assistant", "system"})
_TOOL_CHOICES: Final = frozenset({"auto", "any", "tool", "none"})


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, str) for s in value)


# (test, what the message says the value must be)
_Rule = tuple[Callable[[Any], bool], str]
_STRING: Final[_Rule] = (_string, "must be a string")
_BOOLEAN: Final[_Rule] = (_boolean, "must be true or false")
_OBJECT: Final[_Rule] = (_object, "must be an object")
_NUMBER: Final[_Rule] = (_number, "must be a number")

# Top-level fields the router reads; each may be absent or null.
_TOP_FIELDS: Final[tuple[tuple[str, _Rule], ...]] = (
    ("max_tokens", (_positive_integer, "must be an integer of at least 1")),
    ("temperature", _NUMBER),
    ("top_p", _NUMBER),
    ("stop_sequences", (_strings, "must be a list of strings")),
    ("metadata", _OBJECT),
    ("tools", (lambda v: isinstance(v, list), "must be a list of tools")),
    ("tool_choice", _OBJECT),
)

# Per block type: (field, required, rule). A type not listed is passed on unread.
_BLOCK_FIELDS: Final[dict[str, tuple[tuple[str, bool, _Rule], ...]]] = {
    "text": (("text", True, _STRING),),
    "image": (("source", True, _OBJECT),),
    "tool_use": (("id", False, _STRING), ("name", True, _STRING), ("input", False, _OBJECT)),
    "tool_result": (("tool_use_id", True, _STRING), ("is_error", False, _BOOLEAN)),
}

# Per image source type: the string fields it carries.
_SOURCE_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "base64": ("media_type", "data"),
    "url": ("url",),
}


def _fail(param: str, message: str) -> BadRequest:
    return BadRequest(f"'{param}' {message}.", param=param)


def check_body(body: dict[str, Any]) -> None:
    """Raise :class:`BadRequest` for the first field the router cannot read as documented.

    The caller has checked ``model``, ``messages`` (a list) and ``stream`` already.
    """
    for name, (test, must) in _TOP_FIELDS:
        value = body.get(name)
        if value is not None and not test(value):
            raise _fail(name, must)
    metadata = body.get("metadata") or {}
    if metadata.get("user_id") is not None and not isinstance(metadata["user_id"], str):
        raise _fail("metadata.user_id", "must be a string")
    _check_content(body.get("system"), "system")
    for i, message in enumerate(body["messages"]):
        if type(message) is dict and type(message.get("content")) is str \
                and type(message.get("role")) is str and message["role"] in _ROLES:
            continue  # the common turn, in one step: its path is formatted for errors only
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(at, "must be an object with a 'role' and 'content'")
        if not isinstance(message.get("role"), str) or message["role"] not in _ROLES:
            raise _fail(f"{at}.role", "must be user, assistant or system")
        if "content" not in message:
            raise _fail(f"{at}.content", "is required")
        _check_content(message["content"], f"{at}.content")
    for i, tool in enumerate(body.get("tools") or []):
        _check_tool(tool, f"tools[{i}]")
    _check_tool_choice(body.get("tool_choice"))


def _check_content(content: Any, at: str, *, nested: bool = False) -> None:
    """A string or a list of blocks (``system`` may also be absent or null)."""
    if isinstance(content, str) or (content is None and at == "system"):
        return
    if not isinstance(content, list):
        raise _fail(at, "must be a string or a list of content blocks")
    for j, block in enumerate(content):
        if type(block) is dict and block.get("type") == "text" \
                and type(block.get("text")) is str:
            continue  # a text block in one step (as above)
        where = f"{at}[{j}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _fail(where, "must be an object with a string 'type'")
        for name, required, (test, must) in _BLOCK_FIELDS.get(block["type"], ()):
            value = block.get(name)
            if value is None and not required:
                continue
            if value is None:
                raise _fail(f"{where}.{name}", f"is required in a {block['type']} block")
            if not test(value):
                raise _fail(f"{where}.{name}", must)
        if block["type"] == "image":
            _check_source(block["source"], f"{where}.source")
        elif block["type"] == "tool_result" and not nested \
                and block.get("content") is not None:
            _check_content(block["content"], f"{where}.content", nested=True)


def _check_source(source: dict[str, Any], at: str) -> None:
    kind = source.get("type")
    if not isinstance(kind, str):
        raise _fail(f"{at}.type", "must be a string")
    for name in _SOURCE_FIELDS.get(kind, ()):
        if not isinstance(source.get(name), str):
            raise _fail(f"{at}.{name}", f"must be a string in a {kind} source")


def _check_tool(tool: Any, at: str) -> None:
    if not isinstance(tool, dict):
        raise _fail(at, "must be an object")
    if "input_schema" not in tool:
        return  # a server tool (web_search_*, bash_*...): passed on or dropped, not read
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise _fail(f"{at}.name", "must be a non-empty string")
    if not isinstance(tool["input_schema"], dict):
        raise _fail(f"{at}.input_schema", "must be a JSON Schema object")
    if tool.get("description") is not None and not isinstance(tool["description"], str):
        raise _fail(f"{at}.description", "must be a string")


def _check_tool_choice(choice: dict[str, Any] | None) -> None:
    if choice is None:
        return
    if not isinstance(choice.get("type"), str) or choice["type"] not in _TOOL_CHOICES:
        raise _fail("tool_choice.type", "must be auto, any, tool or none")
    if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
        raise _fail("tool_choice.name", "is required to choose a tool")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _fail("tool_choice.disable_parallel_tool_use", "must be true or false")
