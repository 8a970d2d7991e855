"""The shape a ``POST /v1/responses`` body must have before any member sees it.

Checked once, at the edge, so the translators can trust what they read and a malformed
field is a 400 naming it (``input[2].content``), never a 500 from deep inside a
translation. Only the fields the router reads are checked; the rest reach a ``native``
member as sent, for it to judge.
"""

from __future__ import annotations

from typing import Any, Final

from ...errors import BadRequest

__all__ = ["check_body"]

_ROLES: Final = frozenset({"user", "assistant", "system", "developer"})
_FORMATS: Final = frozenset({"text", "json_object", "json_schema"})
_CHOICES: Final = frozenset({"auto", "none", "required"})


def _fail(param: str, message: str) -> BadRequest:
    return BadRequest(f"'{param}' {message}.", param=param)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_body(body: dict[str, Any]) -> None:
    """Raise :class:`BadRequest` for the first field the router cannot read as documented."""
    optional: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
        ("instructions", str, "must be a string"),
        ("previous_response_id", str, "must be a string"),
        ("user", str, "must be a string"),
        ("store", bool, "must be true or false"),
        ("background", bool, "must be true or false"),
        ("parallel_tool_calls", bool, "must be true or false"),
        ("metadata", dict, "must be an object of strings"),
        ("reasoning", dict, "must be an object"),
        ("text", dict, "must be an object"),
        ("tools", list, "must be a list"),
    )
    for name, kind, message in optional:
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise _fail(name, message)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None and not _number(body[name]):
            raise _fail(name, "must be a number")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise _fail("max_output_tokens", "must be an integer of at least 1")
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None and not isinstance(effort, str):
        raise _fail("reasoning.effort", "must be a string")
    _check_format((body.get("text") or {}).get("format"))
    _check_tools(body.get("tools") or [], body.get("tool_choice"))
    raw = body.get("input")
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            _check_item(item, f"input[{i}]")


def _check_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str) \
            or fmt["type"] not in _FORMATS:
        raise _fail("text.format", "must be an object whose type is text, json_object or "
                    "json_schema")
    if fmt["type"] == "json_schema" and (not isinstance(fmt.get("name"), str)
                                         or not isinstance(fmt.get("schema"), dict)):
        raise _fail("text.format", "of type json_schema needs a 'name' and a 'schema' object")


def _check_tools(tools: list[Any], choice: Any) -> None:
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _fail(f"tools[{i}]", "must be an object with a 'type'")
        if tool["type"] == "function":
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise _fail(f"tools[{i}].name", "is required for a function tool")
            params = tool.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise _fail(f"tools[{i}].parameters", "must be a JSON Schema object")
    if choice is None or (isinstance(choice, str) and choice in _CHOICES):
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise _fail("tool_choice", "must be auto, none, required or an object with a 'type'")
    if choice["type"] == "function" and not isinstance(choice.get("name"), str):
        raise _fail("tool_choice.name", "is required to choose a function")


def _check_item(item: Any, at: str) -> None:
    if not isinstance(item, dict):
        raise _fail(at, "must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        if not isinstance(item.get("role"), str) or item["role"] not in _ROLES:
            raise _fail(f"{at}.role", "must be user, assistant, system or developer")
        content = item.get("content")
        if isinstance(content, str):
            return
        if not isinstance(content, list):
            raise _fail(f"{at}.content", "must be a string or a list of parts")
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _fail(f"{at}.content[{j}]", "must be an object with a 'type'")
            for name in ("text", "image_url", "refusal"):
                if part.get(name) is not None and not isinstance(part[name], str):
                    raise _fail(f"{at}.content[{j}].{name}", "must be a string")
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _fail(f"{at}.{name}", "must be a string")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _fail(f"{at}.call_id", "must be a string")
        if not isinstance(item.get("output"), str | list):
            raise _fail(f"{at}.output", "must be a string or a list of parts")
    elif not isinstance(kind, str):
        raise _fail(f"{at}.type", "must be a string")
