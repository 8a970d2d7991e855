"""The shape a ``POST /v1/responses`` body must have before any member sees it.

Checked once, at the edge, so the translators can trust what they read and a malformed
field is a 400 naming it (``input[2].content``, ``text.verbosity``), never a 500 from
deep inside a translation, and never a value the router would echo back in a Response
object that breaks OpenAI's published schema. Every field the schema constrains (types,
enums, ranges) is checked, whether the router translates it or forwards it: a
``native`` member would refuse the same values, and a translated turn echoes them.

The checks are one table, :data:`FIELDS`: a dotted path (``reasoning.effort``) and
its rule. A field that is absent or null passes (the schema's fields are nullable or
optional); a parent is checked before its children, so a child's rule reads a dict.
Input items, tools and ``text.format`` keep their own structural checks below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ...errors import BadRequest

__all__ = ["FIELDS", "INCLUDABLE", "check_body"]

_ROLES: Final = frozenset({"user", "assistant", "system", "developer"})
_FORMATS: Final = frozenset({"text", "json_object", "json_schema"})
_CHOICES: Final = frozenset({"auto", "none", "required"})

# (test, what the message says the value must be)
_Rule = tuple[Callable[[Any], bool], str]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _of(kind: type, must: str) -> _Rule:
    return (lambda v: isinstance(v, kind)), must


def _between(low: float, high: float) -> _Rule:
    return (lambda v: _number(v) and low <= v <= high), f"must be a number from {low:g} to {high:g}"


def _integer_from(low: int, high: int | None = None) -> _Rule:
    must = (f"must be an integer from {low} to {high}" if high is not None
            else f"must be an integer of at least {low}")
    return (lambda v: _integer(v) and v >= low and (high is None or v <= high)), must


def _one_of(*values: str) -> _Rule:
    allowed = frozenset(values)
    return (lambda v: isinstance(v, str) and v in allowed), "must be one of " + ", ".join(values)


def _metadata(value: Any) -> bool:
    # The schema's Metadata: at most 16 pairs, keys up to 64 characters, string values
    # up to 512.
    return isinstance(value, dict) and len(value) <= 16 and all(
        len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items())


# The schema's Includable values (what `include` may ask for).
INCLUDABLE: Final = (
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content",
    "message.output_text.logprobs")
_INCLUDE_RULE: Final = _one_of(*INCLUDABLE)
_STRING: Final = _of(str, "must be a string")
_BOOLEAN: Final = _of(bool, "must be true or false")
_OBJECT: Final = _of(dict, "must be an object")
_SUMMARY: Final = _one_of("auto", "concise", "detailed")

# One declaration per field the schema constrains (CreateResponse and the properties it
# shares with Response), in check order: parents before children.
FIELDS: Final[tuple[tuple[str, _Rule], ...]] = (
    ("instructions", _STRING),
    ("previous_response_id", _STRING),
    ("user", _STRING),
    ("prompt_cache_key", _STRING),
    ("safety_identifier", ((lambda v: isinstance(v, str) and len(v) <= 64),
                           "must be a string of at most 64 characters")),
    ("store", _BOOLEAN),
    ("background", _BOOLEAN),
    ("stream", _BOOLEAN),
    ("parallel_tool_calls", _BOOLEAN),
    ("metadata", (_metadata, "must be an object of at most 16 strings (keys up to 64 "
                             "characters, values up to 512)")),
    ("temperature", _between(0, 2)),
    ("top_p", _between(0, 1)),
    ("top_logprobs", _integer_from(0, 20)),
    ("max_output_tokens", _integer_from(1)),
    ("max_tool_calls", _integer_from(0)),
    ("truncation", _one_of("auto", "disabled")),
    ("service_tier", _one_of("auto", "default", "flex", "scale", "priority")),
    ("prompt_cache_retention", _one_of("in_memory", "24h")),
    ("include", (lambda v: isinstance(v, list) and all(_INCLUDE_RULE[0](x) for x in v),
                 "must be a list of: " + ", ".join(INCLUDABLE))),
    ("stream_options", _OBJECT),
    ("stream_options.include_obfuscation", _BOOLEAN),
    ("reasoning", _OBJECT),
    ("reasoning.effort", _one_of("none", "minimal", "low", "medium", "high", "xhigh")),
    ("reasoning.summary", _SUMMARY),
    ("reasoning.generate_summary", _SUMMARY),
    ("text", _OBJECT),
    ("text.verbosity", _one_of("low", "medium", "high")),
    ("tools", _of(list, "must be a list")),
)


def _fail(param: str, message: str) -> BadRequest:
    return BadRequest(f"'{param}' {message}.", param=param)


def _at(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path``; None where a step is absent (its parent was checked)."""
    value: Any = body
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    return value


_PATHS: Final = tuple((name, tuple(name.split(".")), rule) for name, rule in FIELDS)


_Test = Callable[[Any], bool]
_Keyed = tuple[_Test, tuple[tuple[str, _Test], ...]]  # a field's test, its children's


def _by_key() -> dict[str, _Keyed]:
    """:data:`FIELDS` by top-level name: (its test, (child name, test) for each child)."""
    out: dict[str, _Keyed] = {}
    for name, (test, _) in FIELDS:
        parent, _, child = name.partition(".")
        if child:
            assert "." not in child and parent in out, name  # parents come first
            own, children = out[parent]
            out[parent] = own, (*children, (child, test))
        else:
            out[name] = test, ()
    return out


_BY_KEY: Final = _by_key()


def _fields_pass(body: dict[str, Any]) -> bool:
    """Whether every field of :data:`FIELDS` the body carries passes its rule: one look
    per field the body has, instead of one per rule (most bodies carry a few fields)."""
    rules = _BY_KEY
    for key, value in body.items():
        if value is None:
            continue
        rule = rules.get(key)
        if rule is None:
            continue
        test, children = rule
        if not test(value):
            return False
        for child, child_test in children:
            inner = value.get(child) if isinstance(value, dict) else None
            if inner is not None and not child_test(inner):
                return False
    return True


def check_body(body: dict[str, Any]) -> None:
    """Raise :class:`BadRequest` for the first field that breaks OpenAI's schema, or that
    the router cannot read as documented."""
    if not _fields_pass(body):
        # Some field fails: find the first in FIELDS' order, which the message names.
        for name, path, (test, must) in _PATHS:
            value = _at(body, path)
            if value is not None and not test(value):
                raise _fail(name, must)
    text, tools, choice = body.get("text"), body.get("tools"), body.get("tool_choice")
    if text:
        _check_format(text.get("format"))
    if tools or choice is not None:
        _check_tools(tools or [], choice)
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
