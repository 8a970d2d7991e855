"""Hub (OpenAI chat) request → Gemini ``generateContent`` body (pure, no I/O).

:func:`generate_request` builds the body shared by the Gemini API and Vertex AI's
Gemini models. What maps to what:

- ``system`` / ``developer`` messages → ``systemInstruction`` (joined by a blank line,
  wherever they appear); ``assistant`` → role ``model``; ``tool`` → a
  ``functionResponse`` part in a ``user`` turn; consecutive turns of one role merged.
- text parts → ``{text}``; ``image_url`` data URLs → ``inlineData``, http(s) and
  ``gs://`` URLs → ``fileData`` (MIME type from the extension); ``input_audio`` →
  ``inlineData`` ``audio/<format>``; a ``file`` part's data URL → ``inlineData``.
- assistant ``tool_calls`` → ``functionCall`` parts; the ``thoughtSignature`` Gemini
  attached to a call rides in the tool call's id (:func:`call_id`) and is echoed back
  here, as Gemini 3 requires. A tool result's function name, which Gemini needs and
  OpenAI tool messages lack, is looked up from the earlier call with the same id.
- ``tools`` → ``functionDeclarations``: a parameter schema inside Gemini's OpenAPI
  subset goes as ``parameters``; one using other JSON Schema keywords
  (``additionalProperties``, ``$defs``, ``const``, type lists …, which ``parameters``
  refuses with "Unknown name") goes whole as ``parametersJsonSchema``.
- ``tool_choice`` → ``toolConfig.functionCallingConfig`` (auto → AUTO, none → NONE,
  required → ANY, a named function → ANY with ``allowedFunctionNames``).
- ``response_format`` json_object → ``responseMimeType: application/json``;
  json_schema → that plus ``responseSchema`` / ``responseJsonSchema`` (same rule as
  tools).
- ``temperature``, ``top_p``, ``top_k``, ``max_completion_tokens`` / ``max_tokens``,
  ``stop``, ``seed``, ``n``, ``presence_penalty``, ``frequency_penalty``,
  ``logprobs`` / ``top_logprobs``, ``reasoning_effort`` (→ ``thinkingConfig``) →
  ``generationConfig``.

Refused with :class:`Refused` (a 400 ``invalid_request_error`` to the client): tools
other than functions, content parts Gemini cannot take (``file_id`` references, URLs
of other schemes, non-base64 data URLs), and a tool result whose ``tool_call_id``
names no earlier call. Dropped silently (no Gemini equivalent): ``logit_bias``,
``parallel_tool_calls``, ``user``, ``metadata``, ``store``, ``service_tier``,
``prediction``, ``modalities``/``audio``, ``stream_options`` (usage always comes).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import secrets
from collections.abc import Iterable
from typing import Any, Final

import orjson

from ...hub.chat import tool_input_from_arguments

__all__ = [
    "Refused",
    "call_id",
    "gemini_schema",
    "generate_request",
    "split_call_id",
]

# The OpenAPI subset Gemini's ``Schema`` (``parameters``, ``responseSchema``) accepts;
# anything else makes it answer 400 "Unknown name", so such a schema goes whole as
# ``parametersJsonSchema`` / ``responseJsonSchema`` instead.
_SCHEMA_KEYS: Final = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "anyOf", "items", "minimum", "maximum", "propertyOrdering",
})
_SCHEMA_TYPES: Final = frozenset({"string", "number", "integer", "boolean", "array", "object"})
_TOOL_MODES: Final = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# reasoning_effort → thinkingBudget, as Google's own OpenAI-compatible endpoint maps it.
_THINKING_BUDGETS: Final = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192,
                            "high": 24576}
# Separates a tool call's own id from the thoughtSignature carried after it: never in
# the id part (hex), and the signature is base64url, so the first occurrence splits.
_SIGNATURE_MARK: Final = "__ts__"


class Refused(ValueError):
    """A request Gemini cannot be given: the client gets a 400 saying why."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# ---------------------------------------------------------------- tool call ids


def call_id(signature: str | None) -> str:
    """A new OpenAI tool call id, carrying Gemini's ``thoughtSignature`` if it sent one.

    Every client echoes a tool call's id back in the next turn (OpenAI ``tool_calls`` and
    ``tool_call_id``, Anthropic ``tool_use.id``, Responses ``call_id``), so the signature
    rides there, base64url (the id stays within ``[A-Za-z0-9_-]``)."""
    own = f"call_{secrets.token_hex(12)}"
    if not signature:
        return own
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return own  # not base64 as documented: better lose it than corrupt the id
    return own + _SIGNATURE_MARK + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def split_call_id(value: str) -> tuple[str, str | None]:
    """(the id, the ``thoughtSignature`` in standard base64) of an id from
    :func:`call_id`; ids from elsewhere come back whole, with no signature."""
    own, mark, packed = value.partition(_SIGNATURE_MARK)
    if not mark or not packed:
        return value, None
    try:
        raw = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
    except (binascii.Error, ValueError):
        return value, None
    return own, base64.b64encode(raw).decode()


# ---------------------------------------------------------------- the request


def generate_request(body: dict[str, Any]) -> dict[str, Any]:
    """The ``generateContent`` body for a chat-completions body (the model goes in the
    URL); raises :class:`Refused`."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results
    messages = body.get("messages")
    for i, msg in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(msg, dict):
            raise Refused(f"messages[{i}] must be an object.", f"messages[{i}]")
        role = msg.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            text = _joined_text(msg.get("content"))
            if text:
                system.append(text)
            continue
        if role == "user":
            wire_role, parts = "user", _user_parts(msg.get("content"), where)
        elif role == "assistant":
            wire_role, parts = "model", _model_parts(msg, names, where)
        elif role == "tool":
            wire_role, parts = "user", [_function_response(msg, names, where)]
        else:
            raise Refused(f"{where}.role '{role}' is not supported by Gemini providers.",
                          f"{where}.role")
        if not parts:
            continue  # Gemini refuses a turn without parts
        if turns and turns[-1]["role"] == wire_role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": wire_role, "parts": parts})
    if not turns:
        # Gemini answers "contents is not specified"; say which request it was instead.
        raise Refused("No message has content Gemini can take (text, images, audio, files "
                      "or tool calls and results).", "messages")
    out: dict[str, Any] = {"contents": turns}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    tools = _function_declarations(body.get("tools"))
    if tools:
        out["tools"] = [{"functionDeclarations": tools}]
        config = _calling_config(body.get("tool_choice"))
        if config:
            out["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(body)
    if generation:
        out["generationConfig"] = generation
    return out


def _joined_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", "input_text"))
    return ""


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise Refused(f"{where}.content must be a string or a list of parts.",
                      f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise Refused(f"{at} must be an object.", at)
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise Refused(f"{at}.image_url.url must be a string.", at)
            parts.append(_media_part(url, at, "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise Refused(f"{at}.input_audio needs base64 'data'.", at)
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}",
                                         "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str):
                raise Refused(f"{at}: Gemini providers take files as file_data data URLs, "
                              "not file_id references.", at)
            parts.append(_media_part(data, at, "application/pdf"))
        else:
            raise Refused(f"{at}: content parts of type '{kind}' are not supported by "
                          "Gemini providers.", at)
    return parts


def _media_part(url: str, at: str, fallback_type: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if not sep or encoding != "base64":
            raise Refused(f"{at}: a data URL must be base64 (data:<type>;base64,...).", at)
        return {"inlineData": {"mimeType": mime or fallback_type, "data": data}}
    if url.startswith(("https://", "http://", "gs://")):
        guessed = mimetypes.guess_type(url.split("?", 1)[0])[0]
        return {"fileData": {"mimeType": guessed or fallback_type, "fileUri": url}}
    raise Refused(f"{at}: Gemini providers take data:, http(s):// or gs:// URLs.", at)


def _model_parts(msg: dict[str, Any], names: dict[str, str], where: str
                 ) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = _joined_text(msg.get("content"))
    if text:
        parts.append({"text": text})
    calls = msg.get("tool_calls")
    for k, call in enumerate(calls if isinstance(calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Refused(f"{where}.tool_calls[{k}] needs function.name.",
                          f"{where}.tool_calls[{k}]")
        name = function["name"]
        ident = call.get("id")
        signature = None
        if isinstance(ident, str) and ident:
            names[ident] = name
            _, signature = split_call_id(ident)
        args = tool_input_from_arguments(function.get("arguments"))
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(msg: dict[str, Any], names: dict[str, str], where: str
                       ) -> dict[str, Any]:
    ident = msg.get("tool_call_id")
    name = names.get(ident) if isinstance(ident, str) else None
    if name is None:
        name = msg.get("name") if isinstance(msg.get("name"), str) else None
    if not name:
        raise Refused(f"{where}: tool_call_id '{ident}' matches no earlier assistant tool "
                      "call; Gemini needs the function's name for its result.",
                      f"{where}.tool_call_id")
    text = _joined_text(msg.get("content"))
    response: Any
    try:
        response = orjson.loads(text) if text.strip().startswith("{") else None
    except orjson.JSONDecodeError:
        response = None
    if not isinstance(response, dict):
        # Gemini's documented convention: the function's output under "output".
        response = {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


# ---------------------------------------------------------------- tools and schemas


def _function_declarations(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(function, dict):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Refused(f"tools[{i}]: tools of type '{kind}' are not supported by Gemini "
                          "providers; only function tools are.", f"tools[{i}]")
        declaration: dict[str, Any] = {"name": str(function.get("name") or "")}
        if function.get("description"):
            declaration["description"] = str(function["description"])
        schema = function.get("parameters")
        # A function without parameters sends none: Gemini refuses an OBJECT schema
        # with empty properties.
        if isinstance(schema, dict) and (schema.get("properties")
                                         or set(schema) - {"type", "properties", "required"}):
            plain = gemini_schema(schema)
            if plain is not None:
                declaration["parameters"] = plain
            else:
                declaration["parametersJsonSchema"] = schema
        out.append(declaration)
    return out


def gemini_schema(schema: Any) -> dict[str, Any] | None:
    """``schema`` if every keyword in it is in Gemini's OpenAPI subset (so it can go as
    ``parameters`` / ``responseSchema``), else None (send it as JSON Schema)."""
    return schema if isinstance(schema, dict) and _plain(schema) else None


def _plain(schema: dict[str, Any]) -> bool:
    if not set(schema) <= _SCHEMA_KEYS:
        return False
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind not in _SCHEMA_TYPES):
        return False  # a list of types, or a typo: JSON Schema can say it, Schema cannot
    props = schema.get("properties")
    if props is not None and not (isinstance(props, dict) and all(
            isinstance(p, dict) and _plain(p) for p in props.values())):
        return False
    items = schema.get("items")
    if items is not None and not (isinstance(items, dict) and _plain(items)):
        return False
    any_of = schema.get("anyOf")
    return any_of is None or (isinstance(any_of, list) and all(
        isinstance(s, dict) and _plain(s) for s in any_of))


def _calling_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        mode = _TOOL_MODES.get(choice)
        if mode is None:
            raise Refused(f"tool_choice '{choice}' is not one of auto, none, required.",
                          "tool_choice")
        return {"mode": mode}
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise Refused("tool_choice names no function.", "tool_choice")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    return None


# ---------------------------------------------------------------- generation settings


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                         ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                         ("frequency_penalty", "frequencyPenalty")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        out["maxOutputTokens"] = limit
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(_strings(stop))
    if stops := [s for s in stops if s]:
        out["stopSequences"] = stops
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        out["candidateCount"] = n
    if body.get("logprobs") is True:
        out["responseLogprobs"] = True
        if isinstance(body.get("top_logprobs"), int):
            out["logprobs"] = body["top_logprobs"]
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in _THINKING_BUDGETS:
        out["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGETS[effort]}
    _response_format(body.get("response_format"), out)
    return out


def _strings(value: Any) -> Iterable[str]:
    return (s for s in value if isinstance(s, str)) if isinstance(value, list) else ()


def _response_format(fmt: Any, out: dict[str, Any]) -> None:
    if not isinstance(fmt, dict):
        return
    kind = fmt.get("type")
    if kind == "json_object":
        out["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        out["responseMimeType"] = "application/json"
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            plain = gemini_schema(schema)
            if plain is not None:
                out["responseSchema"] = plain
            else:
                out["responseJsonSchema"] = schema
    elif kind not in (None, "text"):
        raise Refused(f"response_format type '{kind}' is not supported by Gemini providers.",
                      "response_format")
