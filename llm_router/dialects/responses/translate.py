"""OpenAI Responses clients served through Chat Completions (pure, no I/O).

:func:`refusal` names the first part of a ``POST /v1/responses`` body that a chat
member cannot serve, :func:`responses_to_chat` turns the body (and the items of the
conversation it continues) into a chat-completions body, and :func:`chat_to_response`
turns the upstream's ``chat.completion`` back into a ``response`` object.
:mod:`responses_stream` does the same for streams. Anthropic providers are reached by
chaining these with :mod:`anthropic_out`'s chat ⇄ Messages translators.

docs/responses.md has the table of what is translated, passed through and refused;
in short:

- translated: ``input`` (a string, or items: messages with text and image parts,
  ``function_call``, ``function_call_output``), ``instructions`` (a leading system
  message), function ``tools``, ``tool_choice``, ``max_output_tokens``, ``temperature``,
  ``top_p``, ``text.format`` → ``response_format``, ``reasoning.effort`` →
  ``reasoning_effort``, ``metadata``, ``parallel_tool_calls``, ``user``,
  ``service_tier``, ``prompt_cache_key``, ``safety_identifier``;
- flattened: a ``namespace`` tool (a named group of function tools) becomes its
  function tools, named ``{namespace}__{name}`` (made unique); the calls come back
  as ``function_call`` items with ``name`` and ``namespace`` as the client declared
  them, in answers and streams alike;
- dropped or refused, by the member's provider's ``responses_unsupported_tools``:
  hosted tools (any other tool type, e.g. ``web_search``) and a ``tool_choice`` naming
  one (:func:`hosted_tools`);
- refused with a 400 naming the parameter: ``background: true``, ``prompt``,
  ``conversation``, input items or parts chat has no way to carry (``item_reference``,
  hosted tool calls, files);
- ignored: ``include``, ``truncation``, ``reasoning.summary``, ``top_logprobs``, and
  ``reasoning`` items in the input (the summary of an earlier turn's thinking).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Final

from ...hub.chat import first_choice
from ...hub.usage import Usage

__all__ = [
    "ResponseFrame",
    "chat_to_response",
    "declared_tools",
    "hosted_tools",
    "input_items",
    "namespaced_tools",
    "new_item_id",
    "refusal",
    "responses_to_chat",
    "status_of",
    "usage_to_responses",
]

# Response fields copied onto the chat body unchanged (same name, same meaning).
_COPIED: Final = ("temperature", "top_p", "user", "metadata", "parallel_tool_calls",
                  "service_tier", "prompt_cache_key", "safety_identifier")

# Request fields a chat member cannot honour: the client gets a 400, not a silent drop.
_REFUSED_FIELDS: Final = {
    "background": "background responses need the upstream's own Responses API",
    "prompt": "reusable prompts live in the upstream's own Responses API",
    "conversation": "conversations live in the upstream's own Responses API; use "
                    "previous_response_id",
}
_CHAT_ROLES: Final = {"user": "user", "assistant": "assistant", "system": "system",
                      "developer": "system"}  # 'developer' is not known to every server
_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text"})

# Chat function names: OpenAI's limit, which most compatible servers share.
_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")
_NAME_MAX: Final = 64

# finish_reason → (status, incomplete_details.reason)
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_item_id(prefix: str) -> str:
    """An id like the Responses API's own (``resp_…``, ``msg_…``, ``fc_…``): 24 random
    bytes from the OS, as ``secrets.token_hex`` gives them, in one call."""
    return f"{prefix}_{os.urandom(24).hex()}"


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": raw}]}]
    return [item for item in raw or [] if isinstance(item, dict)]


def refusal(body: dict[str, Any], inputs: list[dict[str, Any]] | None = None
            ) -> tuple[str, str] | None:
    """(parameter, why) for the first part of the request a chat member cannot serve
    (``inputs``: :func:`input_items` of the body, when already known)."""
    for name, why in _REFUSED_FIELDS.items():
        value = body.get(name)
        if value is not None and value is not False:
            return name, f"'{name}' is not supported by this model's chat members: {why}."
    if isinstance(body.get("input"), str):
        return None  # one user message of text
    for i, item in enumerate(inputs if inputs is not None else input_items(body)):
        item_why = _item_refusal(item)
        if item_why is not None:
            return f"input[{i}]", item_why
    return None


def declared_tools(body: dict[str, Any], history: list[dict[str, Any]] | None = None,
                   inputs: list[dict[str, Any]] | None = None) -> list[tuple[str, Any]]:
    """``(parameter, tool)`` for every tool the request offers: ``tools``, and the tools
    of ``additional_tools`` input items (Codex CLI sends its tools that way for some
    models), in the conversation it continues and in its own input (``inputs``: its
    :func:`input_items`, when already known)."""
    out: list[tuple[str, Any]] = [(f"tools[{i}]", t) for i, t in enumerate(body.get("tools")
                                                                           or [])]
    if not history and isinstance(body.get("input"), str):
        return out  # no items that could carry tools
    for where, items in (("previous_response_id", history or ()),
                         ("input", inputs if inputs is not None else input_items(body))):
        for j, item in enumerate(items):
            if item.get("type") == "additional_tools" and isinstance(item.get("tools"), list):
                out += [(f"{where}[{j}].tools[{i}]" if where == "input" else where, t)
                        for i, t in enumerate(item["tools"])]
    return out


def hosted_tools(body: dict[str, Any], history: list[dict[str, Any]] | None = None,
                 declared: list[tuple[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """``(parameter, tool type, why)`` for each tool a chat member cannot run: hosted
    tools (``web_search``, ``file_search``...), tools inside a namespace other than
    functions (``custom``), and a ``tool_choice`` naming a hosted tool. A member whose
    provider says ``responses_unsupported_tools: drop`` goes without them; ``refuse``
    answers 400. ``declared``: :func:`declared_tools`, when already known."""
    out: list[tuple[str, str, str]] = []
    for param, tool in declared if declared is not None else declared_tools(body, history):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            continue
        if kind == "namespace" and isinstance(tool, dict):
            for j, inner in enumerate(tool.get("tools") or []):
                inner_kind = inner.get("type") if isinstance(inner, dict) else None
                if inner_kind != "function":
                    out.append((f"{param}.tools[{j}]", _tool_type(inner_kind),
                                f"The tool type '{inner_kind}' inside namespace "
                                f"'{tool.get('name')}' is not a function tool."))
            continue
        out.append((param, _tool_type(kind), f"The hosted tool '{_tool_type(kind)}' is "
                    "only available "
                    "on members with 'responses: native'; this model's members speak Chat "
                    "Completions, which offers function tools only."))
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        kind = _tool_type(choice.get("type"))
        out.append(("tool_choice", kind, f"tool_choice of type '{kind}' is only available "
                    "on members with 'responses: native'."))
    return out


_TOOL_TYPE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _tool_type(kind: Any) -> str:
    """A tool type as the client wrote it when it looks like one, else ``unknown``: it
    goes into a response header and the access log."""
    return kind if isinstance(kind, str) and _TOOL_TYPE.fullmatch(kind) else "unknown"


def namespaced_tools(body: dict[str, Any], history: list[dict[str, Any]] | None = None,
                     declared: list[tuple[str, Any]] | None = None
                     ) -> dict[str, tuple[str, str]]:
    """Chat function name → ``(namespace, name)`` for each function tool inside a
    ``namespace`` tool. Names are ``{namespace}__{name}`` cut to what chat allows, with
    ``_2``, ``_3``... where that would collide with another tool's name. ``declared``:
    :func:`declared_tools`, when already known."""
    if declared is None:
        declared = declared_tools(body, history)
    if not declared:
        return {}
    tools = [t for _, t in declared if isinstance(t, dict)]
    taken = {t.get("name") for t in tools if t.get("type") == "function"}
    out: dict[str, tuple[str, str]] = {}
    for tool in tools:
        namespace = tool.get("name")
        if tool.get("type") != "namespace" or not isinstance(namespace, str):
            continue
        for inner in tool.get("tools") or []:
            if not isinstance(inner, dict) or inner.get("type") != "function":
                continue
            name = inner.get("name")
            if not isinstance(name, str):
                continue
            flat = base = _NAME_CHARS.sub("_", f"{namespace}__{name}")[:_NAME_MAX]
            n = 2
            while flat in taken:
                suffix = f"_{n}"
                flat, n = base[:_NAME_MAX - len(suffix)] + suffix, n + 1
            taken.add(flat)
            out[flat] = (namespace, name)
    return out


def _item_refusal(item: dict[str, Any]) -> str | None:
    kind = item.get("type", "message")
    if kind == "message":
        content = item.get("content")
        for part in content if isinstance(content, list) else ():
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype in _TEXT_PARTS or ptype == "refusal":
                continue
            if ptype == "input_image" and part.get("image_url"):
                continue
            return (f"Content part '{ptype}' cannot be sent to a Chat Completions member "
                    "(text and images by URL or data: URL can).")
        return None
    if kind in ("function_call", "function_call_output", "reasoning", "additional_tools"):
        return None
    return (f"Input item '{kind}' cannot be sent to a Chat Completions member; it needs a "
            "member with 'responses: native'.")


def responses_to_chat(body: dict[str, Any], upstream_model: str,
                      history: list[dict[str, Any]] | None = None, *,
                      inputs: list[dict[str, Any]] | None = None,
                      declared: list[tuple[str, Any]] | None = None,
                      namespaced: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """The chat-completions request equivalent to a Responses request.

    ``history`` holds the items of the conversation ``previous_response_id`` continues
    (earlier inputs and outputs, oldest first); the request's own input follows them.
    Call :func:`refusal` first: parts it would refuse are skipped here. ``inputs``,
    ``declared`` and ``namespaced``: :func:`input_items`, :func:`declared_tools` and
    :func:`namespaced_tools` of the same request, when the caller already has them.
    """
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    if declared is None:
        declared = declared_tools(body, history)
    offered = [t for _, t in declared if isinstance(t, dict)]
    if namespaced is None:
        namespaced = namespaced_tools(body, history, declared)
    flat_names = {pair: flat for flat, pair in namespaced.items()}
    text_input = body.get("input")
    if not history and isinstance(text_input, str):
        messages.append({"role": "user", "content": text_input})  # the one item's message
    else:
        for item in [*(history or ()), *(inputs if inputs is not None
                                          else input_items(body))]:
            _add_item(messages, item, flat_names)
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    for name in _COPIED:
        if body.get(name) is not None:
            out[name] = body[name]
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort:
        out["reasoning_effort"] = effort
    limit = body.get("max_output_tokens")
    if limit is not None:
        # Reasoning models accept only the newer name; every server accepts the older one.
        out["max_completion_tokens" if effort else "max_tokens"] = limit
    tools = [_chat_tool(t) for t in offered if t.get("type") == "function"]
    for tool in offered:
        if tool.get("type") == "namespace":
            for inner in tool.get("tools") or []:
                if not isinstance(inner, dict) or inner.get("type") != "function":
                    continue
                flat = flat_names.get((str(tool.get("name")), str(inner.get("name"))))
                if flat is not None:
                    tools.append(_chat_tool({**inner, "name": flat}))
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description")
                      if k in fmt}
            out["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            out["response_format"] = {"type": "json_object"}
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any],
              flat_names: dict[tuple[str, str], str]) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = _CHAT_ROLES.get(str(item.get("role")))
        if role is not None:
            messages.append({"role": role, "content": _chat_content(item.get("content"),
                                                                    role)})
    elif kind == "function_call":
        name = item.get("name")
        namespace = item.get("namespace")
        if isinstance(namespace, str) and isinstance(name, str):
            # A call the model made to a namespaced tool goes back under its chat name.
            name = flat_names.get((namespace, name)) or _NAME_CHARS.sub(
                "_", f"{namespace}__{name}")[:_NAME_MAX]
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": name, "arguments": item.get("arguments") or ""}}
        last = messages[-1] if messages else None
        # Parallel calls, and a call after the text of the same turn, form one message.
        if last is not None and last["role"] == "assistant" and (
                "tool_calls" in last or isinstance(last.get("content"), str)):
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                         "content": output if isinstance(output, str)
                         else _joined_text(output)})
    # reasoning items: the chat upstream cannot take them back; they are left out.
    # additional_tools items: their tools join the request's (declared_tools).


def _chat_content(content: Any, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    # Text only (and always for assistant/system turns, whose images are left out): one
    # string suits every server. Most items are so: joined without building the parts.
    texts: list[str] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        ptype = part.get("type")
        if ptype in _TEXT_PARTS:
            texts.append(part.get("text") or "")
        elif ptype == "refusal":
            texts.append(part.get("refusal") or "")
        elif ptype == "input_image" and part.get("image_url") and role == "user":
            return _content_parts(content)
    return "".join(texts)


def _content_parts(content: list[Any]) -> list[dict[str, Any]]:
    """A user message's parts with an image among them, as chat content parts."""
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        ptype = part.get("type")
        if ptype in _TEXT_PARTS:
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif ptype == "refusal":
            parts.append({"type": "text", "text": part.get("refusal") or ""})
        elif ptype == "input_image" and part.get("image_url"):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
    return parts


def _joined_text(content: Any) -> str:
    if not isinstance(content, list):
        return "" if content is None else str(content)
    return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as every ``response`` object echoes them, in the order
    the API lists them. A field sent as null reads as absent: the object carries the
    schema's default, never null where the schema says boolean or object; ``user``,
    ``prompt_cache_key`` and ``safety_identifier`` (typed strings, not nullable, not
    required) are left out when not sent."""
    get = body.get
    reasoning, user, truncation = get("reasoning"), get("user"), get("truncation")
    echo: dict[str, Any] = {
        "instructions": get("instructions"), "max_output_tokens": get("max_output_tokens"),
        "previous_response_id": get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None} if reasoning is None else reasoning,
        "temperature": get("temperature"), "top_p": get("top_p")}
    if user is not None:
        echo["user"] = user
    echo["truncation"] = "disabled" if truncation is None else truncation
    echo["service_tier"] = get("service_tier")
    for name in ("prompt_cache_key", "safety_identifier"):
        value = get(name)
        if value is not None:
            echo[name] = value
    metadata, parallel, store, text, choice, tools = (
        get("metadata"), get("parallel_tool_calls"), get("store"), get("text"),
        get("tool_choice"), get("tools"))
    echo["metadata"] = {} if metadata is None else metadata
    echo["parallel_tool_calls"] = True if parallel is None else parallel
    echo["store"] = True if store is None else store
    echo["text"] = {"format": {"type": "text"}} if text is None else text
    echo["tool_choice"] = "auto" if choice is None else choice
    echo["tools"] = [] if tools is None else tools
    return echo


class ResponseFrame:
    """What every ``response`` object of one request repeats: its id, creation time,
    model and the request's settings (the API echoes them back)."""

    __slots__ = ("created_at", "echo", "id", "model", "namespaced")

    def __init__(self, body: dict[str, Any], model: str, response_id: str | None = None,
                 history: list[dict[str, Any]] | None = None,
                 namespaced: dict[str, tuple[str, str]] | None = None) -> None:
        self.id = response_id or new_item_id("resp")
        self.created_at = int(time.time())
        self.model = model
        # Chat names of namespaced function tools → (namespace, name): calls come back
        # to the client as it declared them (``namespaced``, when the caller has them).
        self.namespaced = namespaced if namespaced is not None \
            else namespaced_tools(body, history)
        self.echo = _echo(body)

    def call_item(self, call_id: str, chat_name: str, arguments: str, status: str
                  ) -> dict[str, Any]:
        """A ``function_call`` output item for a chat tool call named ``chat_name``."""
        item: dict[str, Any] = {"type": "function_call", "id": new_item_id("fc"),
                                "call_id": call_id, "name": chat_name,
                                "arguments": arguments, "status": status}
        pair = self.namespaced.get(chat_name)
        if pair is not None:
            item["namespace"], item["name"] = pair
        return item

    def response(self, status: str, output: list[dict[str, Any]],
                 usage: dict[str, Any] | None = None, incomplete: str | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``response`` object in one of its states (``usage`` only once known: the
        schema's ``usage`` is an object, not nullable, and not required)."""
        response = {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.model, "output": output, **self.echo,
        }
        if usage is not None:
            response["usage"] = usage
        return response


def usage_to_responses(usage: Any) -> dict[str, Any] | None:
    """Chat ``usage`` in the Responses shape (cached and reasoning details kept), from
    the validated counts (hub.usage); None when the chat answer had none."""
    return None if usage is None else Usage.from_openai(usage).responses()


def status_of(finish_reason: Any) -> tuple[str, str | None]:
    """(status, incomplete reason) for a chat ``finish_reason``."""
    reason = _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    return ("incomplete", reason) if reason else ("completed", None)


def chat_to_response(chat: dict[str, Any], frame: ResponseFrame,
                     usage: Usage | None = None) -> dict[str, Any]:
    """The ``response`` object equivalent to a ``chat.completion`` (``usage``: its
    ``usage`` as :meth:`Usage.from_openai` reads it, when the caller has it)."""
    message, text, finish_reason = first_choice(chat)
    output: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    if text:
        parts.append({"type": "output_text", "text": text, "annotations": [],
                      "logprobs": []})
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        output.append({"type": "message", "id": new_item_id("msg"), "status": "completed",
                       "role": "assistant", "content": parts})
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        output.append(frame.call_item(call.get("id") or new_item_id("call"),
                                      function.get("name") or "",
                                      function.get("arguments") or "", "completed"))
    status, incomplete = status_of(finish_reason)
    counts = chat.get("usage")
    if usage is not None and counts is not None:
        return frame.response(status, output, usage.responses(), incomplete)
    return frame.response(status, output, usage_to_responses(counts), incomplete)
