"""The hub (OpenAI chat) to Bedrock Converse and back, for whole answers (pure, no I/O).

:func:`converse_request` turns a chat-completions body into a Converse body and says
what the answer translation must know (:class:`Plan`); :func:`converse_answer` turns
a Converse answer into a ``chat.completion``. The stream's events are translated by
:mod:`.stream` with the same plan.

Mapped:

- ``system`` and ``developer`` messages → ``system`` text blocks, wherever they appear;
- user text and images (``data:`` URLs with base64 png, jpeg, gif or webp → ``image``
  blocks with ``source.bytes``); assistant text and ``tool_calls`` → ``toolUse`` blocks
  (arguments parsed to an object); ``role: tool`` messages → ``toolResult`` blocks in a
  user turn. Consecutive turns of one role are merged (Converse requires user and
  assistant to alternate, and tool results are user turns), and blank text is dropped
  (Converse rejects blank text blocks); a turn left empty is dropped;
- ``max_completion_tokens`` / ``max_tokens`` → ``inferenceConfig.maxTokens``,
  ``temperature``, ``top_p`` → ``topP``, ``stop`` → ``stopSequences``;
- ``tools`` → ``toolConfig.tools`` (``toolSpec`` with ``inputSchema.json``);
  ``tool_choice`` auto → ``auto``, required → ``any``, a named function → ``tool``;
  ``none`` sends no ``toolConfig`` unless the conversation already holds tool blocks
  (Converse then requires one, and the model may still call a tool). A tool named in the
  conversation's history but missing from ``tools`` is declared with an open schema,
  since Converse rejects ``toolUse`` blocks for undeclared tools;
- ``response_format`` (``json_schema``, or ``json_object`` with an open object schema)
  → one tool of that schema, forced with ``toolChoice.tool``: the model answers by
  calling it, and the call's input comes back as the message's JSON text with
  ``finish_reason: stop``. Together with ``tools`` it is refused (a forced tool would
  keep the model from calling the client's own).

Refused with a 400 (:class:`~llm_router.errors.BadRequest`): image URLs that are not
base64 ``data:`` URLs (Converse takes bytes or S3 locations), image types other than
the four above, content parts other than text and images (audio, files), and
``response_format`` with ``tools``. Dropped, as for Anthropic upstreams: ``n``,
``logprobs``, ``logit_bias``, penalties, ``seed``, ``parallel_tool_calls``, ``user``,
``metadata``, ``service_tier`` and the like.

An answer with nothing in it (:func:`missing_output`) is the upstream's failure, not an
empty completion. Answers: ``stopReason`` end_turn and stop_sequence → ``stop``, tool_use →
``tool_calls``, max_tokens and model_context_window_exceeded → ``length``,
guardrail_intervened and content_filtered → ``content_filter``, anything else →
``stop``. ``inputTokens`` excludes the prompt cache, so ``prompt_tokens`` = input +
cacheRead + cacheWrite and ``cached_tokens`` = cacheRead.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ...errors import BadRequest
from ...hub.chat import tool_input_from_arguments
from ...hub.usage import summed

__all__ = [
    "FINISH_REASONS",
    "Plan",
    "chat_usage",
    "converse_answer",
    "converse_request",
    "finish_reason",
    "missing_output",
    "new_id",
]

FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_IMAGE_FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                         "image/gif": "gif", "image/webp": "webp"}
_JSON_TOOL: Final = "json_response"  # the forced tool of response_format json_object
_OPEN_SCHEMA: Final = {"type": "object", "properties": {}}
_JSON_TOOL_DOC: Final = "Answer by calling this tool with the response as its input."
# Completion ids only tell answers apart: a seeded PRNG spares uuid4's getrandom().
_IDS: Final = random.Random()


def new_id() -> str:
    """32 hex digits for a ``chatcmpl-`` id."""
    return f"{_IDS.getrandbits(128):032x}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What translating the answer back needs to know about the request."""

    model: str  # reported as the answer's model
    response_tool: str | None = None  # response_format's forced tool: its input is the text


def finish_reason(stop_reason: Any, plan: Plan) -> str:
    reason = FINISH_REASONS.get(stop_reason if isinstance(stop_reason, str) else "", "stop")
    if reason == "tool_calls" and plan.response_tool is not None:
        return "stop"  # the forced tool answered: for the client that is plain text
    return reason


def converse_request(body: dict[str, Any], model: str) -> tuple[dict[str, Any], Plan]:
    """The Converse body for a chat-completions ``body``, and the plan of its answer;
    :class:`BadRequest` for what Converse cannot express."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    used_tools: dict[str, None] = {}  # tool names in the history, in order
    for i, msg in enumerate(body.get("messages") or []):
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _text(msg.get("content"))
            if text.strip():
                system.append({"text": text})
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), i)
        elif role == "assistant":
            blocks = _assistant_blocks(msg)
            used_tools.update((b["toolUse"]["name"], None) for b in blocks if "toolUse" in b)
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg)]
        else:
            continue
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    out: dict[str, Any] = {"messages": turns}
    if system:
        out["system"] = system
    config = _inference_config(body)
    if config:
        out["inferenceConfig"] = config
    tool_config, response_tool = _tool_config(body, used_tools, any(
        "toolResult" in b for t in turns for b in t["content"]))
    if tool_config is not None:
        out["toolConfig"] = tool_config
    return out, Plan(model, response_tool)


def _text(content: Any) -> str:
    """A message's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", "input_text"))
    return ""


def _image_block(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise BadRequest(f"{where}: bedrock providers take images as base64 data: URLs "
                         "(data:image/png;base64,...); Converse cannot fetch a URL.",
                         param=where, code="unsupported_image")
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    image_format = _IMAGE_FORMATS.get(media_type.lower())
    if not sep or encoding != "base64" or image_format is None:
        raise BadRequest(f"{where}: bedrock providers take png, jpeg, gif or webp images as "
                         "base64 data: URLs.", param=where, code="unsupported_image")
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _user_blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content if isinstance(content, list) else []):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        where = f"messages[{index}].content[{j}]"
        if kind in ("text", "input_text"):
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                blocks.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            blocks.append(_image_block(image.get("url") if isinstance(image, dict) else image,
                                       where))
        else:
            raise BadRequest(f"{where}: content parts of type '{kind}' are not supported by "
                             "bedrock providers (text and images are).", param=where,
                             code="unsupported_content")
    return blocks


def _assistant_blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text(msg.get("content"))
    if text.strip():
        blocks.append({"text": text})
    for call in msg.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        blocks.append({"toolUse": {"toolUseId": str(call.get("id") or ""),
                                   "name": str(function.get("name") or ""),
                                   "input": tool_input_from_arguments(function.get("arguments"))}})
    return blocks


def _tool_result(msg: dict[str, Any]) -> dict[str, Any]:
    text = _text(msg.get("content"))
    # Blank text blocks are refused; an empty result is an empty content list.
    return {"toolResult": {"toolUseId": str(msg.get("tool_call_id") or ""),
                           "content": [{"text": text}] if text.strip() else []}}


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    if stops := [s for s in stops if s]:
        config["stopSequences"] = stops
    return config


def _tool_spec(name: str, description: str, schema: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name,
                            "inputSchema": {"json": schema if isinstance(schema, dict)
                                            and schema else _OPEN_SCHEMA}}
    if description:
        spec["description"] = description
    return {"toolSpec": spec}


def _response_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The forced tool standing in for ``response_format``, or None for plain text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_schema", "json_object"):
        return None
    if fmt["type"] == "json_object":
        return _tool_spec(_JSON_TOOL, _JSON_TOOL_DOC, _OPEN_SCHEMA)
    spec = fmt.get("json_schema") or {}
    name = spec.get("name") if isinstance(spec, dict) else None
    return _tool_spec(name if isinstance(name, str) and name else _JSON_TOOL,
                      str(spec.get("description") or _JSON_TOOL_DOC), spec.get("schema"))


def _tool_config(body: dict[str, Any], used: dict[str, None], has_results: bool
                 ) -> tuple[dict[str, Any] | None, str | None]:
    tools = [_tool_spec(str(f.get("name") or ""), str(f.get("description") or ""),
                        f.get("parameters"))
             for t in body.get("tools") or []
             if isinstance(t, dict) and isinstance(f := t.get("function"), dict)]
    forced = _response_tool(body)
    if forced is not None:
        if tools:
            raise BadRequest("bedrock providers answer response_format through a forced tool, "
                             "so it cannot be combined with tools.", param="response_format",
                             code="unsupported_parameter")
        name = forced["toolSpec"]["name"]
        tools = [forced, *(_tool_spec(n, "", None) for n in used if n != name)]
        return {"tools": tools, "toolChoice": {"tool": {"name": name}}}, name
    choice = body.get("tool_choice")
    if choice == "none" and not used and not has_results:
        return None, None
    declared = {t["toolSpec"]["name"] for t in tools}
    tools += [_tool_spec(n, "", None) for n in used if n not in declared]
    if not tools:
        return None, None
    config: dict[str, Any] = {"tools": tools}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        config["toolChoice"] = {"tool": {"name": str(choice["function"].get("name") or "")}}
    return config, None


def chat_usage(usage: Any) -> dict[str, Any]:
    """Converse ``usage`` as OpenAI's: the prompt includes cache reads and writes. A
    count that is not one is passed on as sent, for hub.usage to reject."""
    u = usage if isinstance(usage, dict) else {}
    cache_read = summed(u.get("cacheReadInputTokens"))
    prompt = summed(u.get("inputTokens"), u.get("cacheReadInputTokens"),
                    u.get("cacheWriteInputTokens"))
    completion = summed(u.get("outputTokens"))
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if isinstance(prompt, int) and isinstance(completion, int):
        out["total_tokens"] = prompt + completion
    if cache_read:
        out["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return out


def missing_output(answer: dict[str, Any]) -> str | None:
    """What a Converse answer lacks to be an answer at all, or None: no
    ``output.message``, or no content block and no ``stopReason`` either. A message
    with no content but a stop reason is an answer (the model had nothing to say, as
    Claude may after a tool result, or was stopped): passed on, not retried."""
    output = answer.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    if not isinstance(message, dict):
        return "no output message"
    content = message.get("content")
    if (not isinstance(content, list) or not content) and not answer.get("stopReason"):
        return "no content and no stop reason"
    return None


def converse_answer(answer: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The ``chat.completion`` for a Converse answer."""
    output = answer.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = [b for b in (message or {}).get("content") or [] if isinstance(b, dict)]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(use := block.get("toolUse"), dict):
            arguments = orjson.dumps(use.get("input") or {}).decode()
            if plan.response_tool is not None and use.get("name") == plan.response_tool:
                texts.append(arguments)
            else:
                calls.append({"id": use.get("toolUseId"), "type": "function",
                              "function": {"name": use.get("name"), "arguments": arguments}})
    text = "".join(texts)
    chat_message: dict[str, Any] = {"role": "assistant",
                                    "content": text if text or not calls else None,
                                    "refusal": None}
    if calls:
        chat_message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": [{"index": 0, "message": chat_message, "logprobs": None,
                     "finish_reason": finish_reason(answer.get("stopReason"), plan)}],
        "usage": chat_usage(answer.get("usage")),
    }
