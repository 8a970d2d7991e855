"""A fast, deterministic fake model server speaking the OpenAI and Anthropic APIs (and,
through :mod:`.bedrock`, AWS Bedrock's Converse; through :mod:`.azure`, Azure OpenAI).

Two layers. The content generators (``chat_completion``, ``chat_chunks``,
``messages_events``, ...) are pure functions of a request body: the same body always
yields the same text, tokens and tool calls (only ids and timestamps differ). The
built-in ``mock`` provider calls them in-process. :class:`FakeUpstream` serves them over
HTTP for tests, demos and benchmarks, with injectable :class:`Fault` s (status codes,
hangs, cut streams, malformed bodies), latency and stream pacing, and a log of what it
received. Control routes under ``/_fake/`` let another process drive it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import math
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from . import responses as fake_responses
from .azure import FakeAzure, OpenAIAnswers
from .bedrock import FakeBedrock
from .google import FakeHooks, GoogleFake
from .model_lists import MODELS_WIRES, FakeModel, anthropic_entry, fake_model, model_entry
from .prompt_cache import PromptCache, report_cached

__all__ = [
    "FakeUpstream",
    "Fault",
    "RecordedRequest",
    "chat_chunks",
    "chat_completion",
    "completion_chunks",
    "count_prompt_tokens",
    "count_tokens",
    "embeddings",
    "messages_events",
    "messages_response",
    "models_list",
    "serve_fake_upstream",
    "text_completion",
]

_Body = dict[str, Any]

_VOCABULARY = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit",
               "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore",
               "magna", "aliqua")
_DEFAULT_COMPLETION_TOKENS = 16
_MAX_COMPLETION_TOKENS = 4096
_TOOL_ARGUMENTS = '{"location": "Paris"}'
_TOOL_TOKENS = 8  # what a short tool call costs a real model, roughly
_DEFAULT_DIMENSIONS = 8
_MODEL_IDS = ("fake-gpt", "gpt-4o-mini", "text-embedding-3-small", "claude-3-5-haiku-latest")
# What GET /v1/models lists to a client that sends anthropic-version (Anthropic's shape).
_ANTHROPIC_MODEL_IDS = ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5",
                        "claude-3-5-haiku-latest", "claude-3-opus-latest")
_RECORD_CAP = 10_000
_RATE_REQUESTS = 1_000_000
_RATE_TOKENS = 100_000_000


# ---------------------------------------------------------------- content generators


def _estimate(chars: int) -> int:
    return (chars + 3) // 4


def _chars(content: Any) -> int:
    """Characters of text in a message content: a string, or a list of parts/blocks."""
    if isinstance(content, str):
        return len(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
                if "content" in part:  # Anthropic tool_result blocks nest their content
                    total += _chars(part["content"])
    return total


def _items(value: Any) -> list[Any]:
    """The separate inputs of a ``prompt`` / ``input``: a str, a token list, or a list of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [value]
        return value
    return []


def _item_tokens(item: Any) -> int:
    return len(item) if isinstance(item, list) else _estimate(_chars(item))


def _block_tokens(content: Any) -> int:
    """Tokens of one message content (or Anthropic ``system``), as counted below."""
    return _estimate(_chars(content)) + 3


def count_prompt_tokens(body: _Body) -> int:
    """A deterministic prompt-token estimate: about one token per four characters.

    Chat and Anthropic Messages: ``ceil(chars / 4) + 3`` for each message (its string
    content, or the text parts of a list), the Anthropic ``system`` counting as one more
    message. Completions: the ``prompt``; embeddings: the ``input`` (a str, or a list of
    str; a token-id list counts its length). Never less than 1.
    """
    messages = body.get("messages")
    if isinstance(messages, list) or "system" in body:
        total = sum(
            _estimate(_chars(m.get("content"))) + 3
            for m in (messages if isinstance(messages, list) else ())
            if isinstance(m, dict)
        )
        if body.get("system"):
            total += _estimate(_chars(body["system"])) + 3
    else:
        source = body["prompt"] if "prompt" in body else body.get("input")
        total = sum(_item_tokens(item) for item in _items(source))
    return max(1, total)


def _completion_budget(body: _Body) -> tuple[int, bool]:
    """How many completion tokens to produce, and whether that is the client's limit."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            wanted = max(0, value)
            return min(wanted, _MAX_COMPLETION_TOKENS), wanted <= _MAX_COMPLETION_TOKENS
    return _DEFAULT_COMPLETION_TOKENS, False


@functools.lru_cache(maxsize=_MAX_COMPLETION_TOKENS + 1)
def _words(n: int) -> tuple[str, ...]:
    # Cached: the hot path of a benchmark asks for the same few lengths over and over.
    pieces = [_VOCABULARY[i % len(_VOCABULARY)] + " " for i in range(n)]
    if pieces:
        pieces[-1] = pieces[-1][:-1]
    return tuple(pieces)


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _include_usage(body: _Body) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _openai_tool(body: _Body) -> str | None:
    """The function to call, or None when the model should answer in text."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "tool":
            return None  # the tool already answered: now the model speaks
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        named = choice["function"].get("name")
        if isinstance(named, str):
            return named
    first = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = first.get("name") if isinstance(first, dict) else None
    return name if isinstance(name, str) else "tool"


def _anthropic_tool(body: _Body) -> str | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict) and choice.get("type") == "none":
        return None
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            return None
    if isinstance(choice, dict) and choice.get("type") == "tool":
        named = choice.get("name")
        if isinstance(named, str):
            return named
    name = tools[0].get("name") if isinstance(tools[0], dict) else None
    return name if isinstance(name, str) else "tool"


def _head(kind: str, prefix: str, model: str) -> _Body:
    return {"id": _new_id(prefix), "object": kind, "created": int(time.time()), "model": model}


def chat_completion(body: _Body, model: str) -> _Body:
    """A complete OpenAI ``chat.completion`` answering ``body``, reporting ``model``."""
    prompt = count_prompt_tokens(body)
    tool = _openai_tool(body)
    if tool is not None:
        call = {
            "id": _new_id("call_"),
            "type": "function",
            "function": {"name": tool, "arguments": _TOOL_ARGUMENTS},
        }
        message: _Body = {"role": "assistant", "content": None, "tool_calls": [call]}
        completion, finish = _TOOL_TOKENS, "tool_calls"
    else:
        completion, limited = _completion_budget(body)
        message = {"role": "assistant", "content": "".join(_words(completion))}
        finish = "length" if limited else "stop"
    message["refusal"] = None
    answer = _head("chat.completion", "chatcmpl-", model)
    answer["choices"] = [
        {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    ]
    answer["usage"] = _usage(prompt, completion)
    answer["system_fingerprint"] = "fp_fake"
    return answer


def chat_chunks(body: _Body, model: str) -> list[_Body]:
    """The :func:`chat_completion` answer as ``chat.completion.chunk`` objects, in order.

    With ``stream_options.include_usage`` every chunk carries ``"usage": null`` and a
    last chunk with ``choices: []`` carries the usage, as OpenAI does.
    """
    head = _head("chat.completion.chunk", "chatcmpl-", model)
    head["system_fingerprint"] = "fp_fake"

    def chunk(delta: _Body, finish: str | None = None) -> _Body:
        return {**head, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    tool = _openai_tool(body)
    if tool is not None:
        call = {"index": 0, "id": _new_id("call_"), "type": "function",
                "function": {"name": tool, "arguments": ""}}
        chunks = [
            chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": _TOOL_ARGUMENTS}}]}),
            chunk({}, "tool_calls"),
        ]
        completion = _TOOL_TOKENS
    else:
        completion, limited = _completion_budget(body)
        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks.extend(chunk({"content": word}) for word in _words(completion))
        chunks.append(chunk({}, "length" if limited else "stop"))
    return _with_usage(chunks, head, body, completion)


def _with_usage(chunks: list[_Body], head: _Body, body: _Body, completion: int) -> list[_Body]:
    """Apply OpenAI's ``include_usage`` rule: ``usage: null`` everywhere, then a usage chunk."""
    if _include_usage(body):
        for chunk in chunks:
            chunk["usage"] = None
        usage = _usage(count_prompt_tokens(body), completion)
        chunks.append({**head, "choices": [], "usage": usage})
    return chunks


def text_completion(body: _Body, model: str) -> _Body:
    """A legacy OpenAI ``text_completion`` (one choice, whatever the number of prompts)."""
    completion, limited = _completion_budget(body)
    answer = _head("text_completion", "cmpl-", model)
    answer["choices"] = [{
        "text": "".join(_words(completion)), "index": 0, "logprobs": None,
        "finish_reason": "length" if limited else "stop",
    }]
    answer["usage"] = _usage(count_prompt_tokens(body), completion)
    return answer


def completion_chunks(body: _Body, model: str) -> list[_Body]:
    """:func:`text_completion` as stream chunks, with the same ``include_usage`` rule."""
    head = _head("text_completion", "cmpl-", model)
    completion, limited = _completion_budget(body)
    texts = [*_words(completion), ""]
    chunks = [
        {**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": None}]}
        for text in texts
    ]
    chunks[-1]["choices"][0]["finish_reason"] = "length" if limited else "stop"
    return _with_usage(chunks, head, body, completion)


def _vector(item: Any, dimensions: int) -> list[float]:
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = hashlib.shake_128(seed).digest(dimensions)
    vector = [b / 127.5 - 1.0 for b in raw]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def embeddings(body: _Body, model: str) -> _Body:
    """One unit-length ``embedding`` per input, a function of the input text alone.

    ``dimensions`` (default 8) is honoured; ``encoding_format: "base64"`` gives
    little-endian float32 bytes in base64, the openai SDK's default request.
    """
    dims = body.get("dimensions")
    dims = dims if isinstance(dims, int) and 0 < dims <= 8192 else _DEFAULT_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(_items(body.get("input"))):
        vector = _vector(item, dims)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt = count_prompt_tokens(body)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


_LISTED: tuple[FakeModel, ...] = tuple(
    FakeModel(m, input_modalities=("text",)) if "embedding" in m else FakeModel(m)
    for m in _MODEL_IDS)


def models_list(models: tuple[FakeModel, ...] = _LISTED, wire: str = "openai") -> _Body:
    """The ``list`` of models this fake claims to serve, as ``wire`` (``openai``,
    ``vllm``, ``openrouter``: :mod:`.model_lists`) writes it."""
    data = [model_entry(m, wire) for m in models]
    return {"data": data} if wire == "openrouter" else {"object": "list", "data": data}


def anthropic_models_page(query: Mapping[str, str], max_page: int) -> _Body:
    """One page of Anthropic's ``GET /v1/models`` (``limit`` 1-1000, default 20, and
    ``after_id``; ``has_more``, ``first_id``, ``last_id``), at most ``max_page`` long."""
    try:
        limit = min(max(int(query.get("limit", "20")), 1), 1000, max_page)
    except ValueError:
        limit = 20
    ids = list(_ANTHROPIC_MODEL_IDS)
    after = query.get("after_id")
    start = ids.index(after) + 1 if after in ids else 0
    page = ids[start:start + limit]
    data = [anthropic_entry(m) for m in page]
    return {"data": data, "has_more": start + limit < len(ids),
            "first_id": page[0] if page else None, "last_id": page[-1] if page else None}


def count_tokens(body: _Body) -> dict[str, int]:
    """The Anthropic ``/v1/messages/count_tokens`` answer."""
    return {"input_tokens": count_prompt_tokens(body)}


def _anthropic_answer(body: _Body) -> tuple[str | None, int, str]:
    tool = _anthropic_tool(body)
    if tool is not None:
        return tool, _TOOL_TOKENS, "tool_use"
    completion, limited = _completion_budget(body)
    return None, completion, "max_tokens" if limited else "end_turn"


def _message(model: str, content: list[_Body], stop: str | None, usage: _Body) -> _Body:
    return {"id": _new_id("msg_"), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage}


def messages_response(body: _Body, model: str) -> _Body:
    """A complete Anthropic ``message``: text, or one ``tool_use`` block when tools apply."""
    tool, completion, stop = _anthropic_answer(body)
    block: _Body = (
        {"type": "tool_use", "id": _new_id("toolu_"), "name": tool, "input": {"location": "Paris"}}
        if tool is not None else {"type": "text", "text": "".join(_words(completion))}
    )
    usage = {"input_tokens": count_prompt_tokens(body), "output_tokens": completion}
    return _message(model, [block], stop, usage)


def messages_events(body: _Body, model: str) -> list[tuple[str, _Body]]:
    """:func:`messages_response` as Anthropic's stream: ``(event type, data)`` in order."""
    tool, completion, stop = _anthropic_answer(body)
    start = _message(model, [], None,
                     {"input_tokens": count_prompt_tokens(body), "output_tokens": 1})
    if tool is not None:
        block: _Body = {"type": "tool_use", "id": _new_id("toolu_"), "name": tool, "input": {}}
        half = len(_TOOL_ARGUMENTS) // 2
        deltas = [{"type": "input_json_delta", "partial_json": part}
                  for part in (_TOOL_ARGUMENTS[:half], _TOOL_ARGUMENTS[half:])]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": word} for word in _words(completion)]
    events: list[tuple[str, _Body]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start",
         {"type": "content_block_start", "index": 0, "content_block": block}),
        ("ping", {"type": "ping"}),
    ]
    events.extend(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
                  for d in deltas)
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": completion}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


# ---------------------------------------------------------------- the server


@dataclass(slots=True)
class Fault:
    """A misbehaviour to inject into the requests it matches (all given filters)."""

    status: int = 500  # HTTP status to answer with; 0 = none (with hang_s / cut_after_chunks)
    times: int | None = 1  # how many matching requests it applies to; None = forever
    key: str | None = None  # only requests authenticated with this API key
    retry_after: str | None = None  # Retry-After header sent with the status
    hang_s: float = 0.0  # sleep this long before sending response headers
    cut_after_chunks: int | None = None  # streams: N events, then drop the connection
    body: bytes | None = None  # raw body instead of an error JSON (e.g. malformed JSON)
    path: str | None = None  # only this path, e.g. "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request to a model route, as received (the API key is the raw secret)."""

    path: str
    api_key: str | None
    model: str | None
    stream: bool
    body: _Body | None
    headers: Mapping[str, str]


@dataclass(slots=True)
class _ArmedFault:
    fault: Fault
    left: int | None  # counted here so the caller's Fault is never mutated


_Answer = Callable[[_Body, str], Any]
# path -> (answer, stream answer or None, required list/str field)
_ROUTES: dict[str, tuple[_Answer, _Answer | None, str | None]] = {
    "/v1/chat/completions": (chat_completion, chat_chunks, "messages"),
    "/v1/completions": (text_completion, completion_chunks, None),
    "/v1/embeddings": (embeddings, None, "input"),
    "/v1/messages": (messages_response, messages_events, "messages"),
    "/v1/messages/count_tokens": (lambda body, _model: count_tokens(body), None, "messages"),
    "/v1/models": (lambda _body, _model: models_list(), None, None),  # GET
    "/v1/responses": (fake_responses.response_object, fake_responses.response_events, "input"),
}
_ISSUED_CAP = 10_000  # response ids remembered for previous_response_id
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                 403: "permission_error", 404: "invalid_request_error", 429: "requests"}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 529: "overloaded_error"}


def _error(status: int, message: str, anthropic: bool,
           headers: Mapping[str, str] | None = None) -> web.Response:
    if anthropic:
        error: _Body = {"type": "error", "error": {
            "type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    else:
        fallback = "server_error" if status >= 500 else "invalid_request_error"
        kind = _OPENAI_TYPES.get(status, fallback)
        error = {"error": {"message": message, "type": kind, "param": None,
                           "code": _OPENAI_CODES.get(status)}}
    return web.Response(status=status, body=orjson.dumps(error),
                        content_type="application/json", headers=headers)


_CLOSING = web.AppKey("fake_upstream_closing", asyncio.Event)


async def _pause(request: web.Request, seconds: float) -> None:
    """Sleep, but wake when the server shuts down.

    aiohttp waits for in-flight handlers on shutdown (60 s by default), so a hung fake
    would otherwise stall every test teardown that left a request hanging.
    """
    closing = request.app[_CLOSING]
    if not closing.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await closing.wait()


async def _wake_sleepers(app: web.Application) -> None:
    app[_CLOSING].set()


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


_FAULT_FIELD_TYPES: dict[str, Any] = {
    "status": int, "times": int | None, "key": str | None, "retry_after": str | None,
    "hang_s": int | float, "cut_after_chunks": int | None, "body": bytes | None,
    "path": str | None,
}


def _fault_from_json(data: Any) -> Fault:
    """A :class:`Fault` from the control route's JSON (``body`` as text)."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object of Fault fields")
    if isinstance(data.get("body"), str):
        data["body"] = data["body"].encode()
    if isinstance(data.get("retry_after"), int | float):
        data["retry_after"] = str(data["retry_after"])
    for name, value in data.items():
        expected = _FAULT_FIELD_TYPES.get(name)
        if expected is None:
            known = ", ".join(_FAULT_FIELD_TYPES)
            raise ValueError(f"unknown Fault field {name!r} (known: {known})")
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"Fault field {name!r} has the wrong type")
    return Fault(**data)


class FakeUpstream:
    """An OpenAI- and Anthropic-compatible model server; build it with :meth:`app`.

    ``latency_ms`` delays every answer (for streams: the first event, after the
    headers); ``tokens_per_second`` paces stream events (0 = as fast as possible).
    Both may be changed while serving. ``prompt_cache_ttl_s`` > 0 turns on a per-key
    prompt cache (:mod:`fake_prompt_cache`): chat and Messages answers then report the
    cached part of each prompt, as OpenAI and Anthropic do.
    """

    def __init__(self, latency_ms: float = 0.0, tokens_per_second: float = 0.0,
                 prompt_cache_ttl_s: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.tokens_per_second = tokens_per_second
        self.prompt_cache = (PromptCache(prompt_cache_ttl_s, _block_tokens)
                             if prompt_cache_ttl_s > 0 else None)
        self.requests: list[RecordedRequest] = []  # the last ~10,000 model-route requests
        self.total_requests = 0
        self.max_models_page = 1000  # Anthropic model lists: longest page (tests page them)
        # GET /v1/models: these models, in the shape of this server (.model_lists).
        self.listed_models: tuple[FakeModel, ...] = _LISTED
        self.models_wire = "openai"
        self._faults: list[_ArmedFault] = []
        self._remaining_requests = _RATE_REQUESTS
        self._remaining_tokens = _RATE_TOKENS
        # Responses this fake issued (store not false) → the API key that created them:
        # previous_response_id works only with that key, as upstream state is per account.
        self.issued: dict[str, str | None] = {}
        # AWS Bedrock's Converse routes (/model/...), with the demo credentials.
        self.bedrock = FakeBedrock()
        self.google = GoogleFake()  # the Gemini API, Vertex AI and Google's token endpoint
        # An Azure OpenAI resource (/openai/...) and its Entra ID token endpoint.
        self.azure = FakeAzure()

    def add_fault(self, fault: Fault) -> None:
        """Arm ``fault``; faults are tried in the order they were added."""
        if fault.times is None or fault.times > 0:
            self._faults.append(_ArmedFault(fault, fault.times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def app(self) -> web.Application:
        """A fresh aiohttp application serving this fake's model and control routes."""
        # Large enough for anything the router forwards (its own limit is 32 MiB).
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app[_CLOSING] = asyncio.Event()
        app.on_shutdown.append(_wake_sleepers)
        app.on_response_prepare.append(self._stamp_headers)
        for path in _ROUTES:
            add = app.router.add_get if path == "/v1/models" else app.router.add_post
            add(path, self._model_route)
        app.router.add_post("/_fake/faults", self._post_fault)
        app.router.add_delete("/_fake/faults", self._delete_faults)
        app.router.add_get("/_fake/requests", self._get_requests)
        app.router.add_post("/_fake/settings", self._post_settings)
        self.bedrock.add_routes(app)
        self.google.add_routes(app, FakeHooks(
            self._record_as, self._take_fault, _pause, messages_response, messages_events,
            lambda request, events, cut: self._stream(request, events, True, cut)))
        self.azure.install(app, OpenAIAnswers(chat_completion, chat_chunks, text_completion,
                                              completion_chunks, embeddings))
        return app

    def _record_as(self, request: web.Request, who: str, model: str, stream: bool,
                   body: Any) -> None:
        """Log a request whose model is in its URL and whose caller is ``who`` (a Gemini
        API key, a Vertex service account's email), as :meth:`_record` logs the others."""
        self.requests.append(RecordedRequest(request.path, who, model, stream,
                                             body if isinstance(body, dict) else None,
                                             request.headers))
        self.total_requests += 1

    def _take_fault(self, path: str, key: str | None, stream: bool) -> Fault | None:
        for armed in self._faults:
            fault = armed.fault
            if (fault.path is not None and fault.path != path) or (
                fault.key is not None and fault.key != key
            ):
                continue
            if fault.status == 0 and fault.cut_after_chunks is not None and not stream:
                continue  # a cut only means something to a stream; keep it for one
            if armed.left is not None:
                armed.left -= 1
                if armed.left <= 0:
                    self._faults.remove(armed)
            return fault
        return None

    def _record(self, request: web.Request, key: str | None, body: _Body | None,
                stream: bool, size: int) -> None:
        model = body.get("model") if body is not None else None
        self.requests.append(RecordedRequest(
            request.path, key, model if isinstance(model, str) else None, stream, body,
            request.headers))
        # Trim in batches so recording stays O(1) amortised under benchmark load.
        if len(self.requests) > _RECORD_CAP + _RECORD_CAP // 10:
            del self.requests[:-_RECORD_CAP]
        self.total_requests += 1
        self._remaining_requests = self._remaining_requests - 1 or _RATE_REQUESTS
        self._remaining_tokens -= size // 4 + _DEFAULT_COMPLETION_TOKENS
        if self._remaining_tokens <= 0:
            self._remaining_tokens = _RATE_TOKENS

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if "x-request-id" not in headers:
            headers["x-request-id"] = _new_id("req_")
        headers["x-ratelimit-limit-requests"] = str(_RATE_REQUESTS)
        headers["x-ratelimit-limit-tokens"] = str(_RATE_TOKENS)
        headers["x-ratelimit-remaining-requests"] = str(self._remaining_requests)
        headers["x-ratelimit-remaining-tokens"] = str(self._remaining_tokens)

    async def _model_route(self, request: web.Request) -> web.StreamResponse:
        answer, stream_answer, required = _ROUTES[request.path]
        anthropic = request.path.startswith("/v1/messages")
        raw = await request.read()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        stream = stream_answer is not None and body is not None and body.get("stream") is True
        key = _api_key(request)
        self._record(request, key, body, stream, len(raw))

        fault = self._take_fault(request.path, key, stream) if self._faults else None
        if fault is not None:
            if fault.hang_s > 0:
                await _pause(request, fault.hang_s)
            if fault.status:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                if fault.body is not None:
                    return web.Response(status=fault.status, body=fault.body, headers=headers,
                                        content_type="application/json")
                return _error(fault.status, f"injected fault ({fault.status})", anthropic,
                              headers)

        if request.method == "GET":
            if "anthropic-version" in request.headers:
                return _json(anthropic_models_page(request.query, self.max_models_page))
            return _json(models_list(self.listed_models, self.models_wire))
        if body is None:
            message = "invalid JSON body" if parsed is None else "body must be a JSON object"
            return _error(400, message, anthropic)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", anthropic)
        if required is not None and not isinstance(body.get(required), list | str):
            return _error(400, f"missing required parameter: '{required}'", anthropic)

        cached = (self.prompt_cache.use(key, body)
                  if self.prompt_cache is not None and required == "messages" else None)
        if request.path == "/v1/responses":
            unknown = self._unknown_previous(body, key)
            if unknown is not None:
                return unknown
        if stream and stream_answer is not None:
            cut = fault.cut_after_chunks if fault is not None else None
            events = stream_answer(body, model)
            if cached is not None:
                for event in events:
                    report_cached(event[1] if anthropic else event, anthropic, cached)
            if request.path == "/v1/responses":
                self._issue(body, events[0][1]["response"]["id"], key)
            named = anthropic or request.path == "/v1/responses"
            return await self._stream(request, events, named, cut)
        if self.latency_ms > 0:
            await _pause(request, self.latency_ms / 1000)
        result = answer(body, model)
        if cached is not None:
            report_cached(result, anthropic, cached)
        if request.path == "/v1/responses":
            self._issue(body, result["id"], key)
        return _json(result)

    def _unknown_previous(self, body: _Body, key: str | None) -> web.Response | None:
        previous = body.get("previous_response_id")
        if previous is None or (previous in self.issued and self.issued[previous] == key):
            return None
        err = {"message": f"Previous response with id '{previous}' not found.",
               "type": "invalid_request_error", "param": "previous_response_id",
               "code": "previous_response_not_found"}
        return web.Response(status=400, body=orjson.dumps({"error": err}),
                            content_type="application/json")

    def _issue(self, body: _Body, response_id: str, key: str | None) -> None:
        if body.get("store") is False:
            return
        self.issued[response_id] = key
        if len(self.issued) > _ISSUED_CAP:
            del self.issued[next(iter(self.issued))]

    async def _stream(self, request: web.Request, events: list[Any], named: bool,
                      cut: int | None) -> web.StreamResponse:
        if named:  # Anthropic and Responses events: "event: <type>", no [DONE]
            frames = [b"event: %b\ndata: %b\n\n" % (name.encode(), orjson.dumps(data))
                      for name, data in events]
        else:
            frames = [b"data: %b\n\n" % orjson.dumps(chunk) for chunk in events]
            frames.append(b"data: [DONE]\n\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        tps = self.tokens_per_second
        try:
            await response.prepare(request)
            if self.latency_ms > 0:
                await _pause(request, self.latency_ms / 1000)
            if tps <= 0 and cut is None:
                # Unpaced: every event is ready at once, so one write (with the chunked
                # terminator) doubles the req/s a benchmark can drive.
                await response.write_eof(b"".join(frames))
                return response
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i, frame in enumerate(frames):
                if cut is not None and i >= cut:
                    # Close (not abort) so the events already written reach the client,
                    # but never the chunked terminator: the stream reads as truncated.
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if tps > 0 and i > 0:
                    delay = started + i / tps - loop.time()
                    if delay > 0:
                        await _pause(request, delay)
                await response.write(frame)
        except ConnectionResetError:
            pass  # the client went away mid-stream: routine, nothing to report
        return response

    async def _post_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            fault = _fault_from_json(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return _error(400, str(exc), False)
        self.add_fault(fault)
        return _json({"faults": len(self._faults)})

    async def _delete_faults(self, request: web.Request) -> web.StreamResponse:
        self.clear_faults()
        return _json({"faults": 0})

    async def _get_requests(self, request: web.Request) -> web.StreamResponse:
        recent = [{"path": r.path, "api_key": r.api_key, "model": r.model, "stream": r.stream}
                  for r in self.requests[-20:]]
        return _json({"count": self.total_requests, "recent": recent})

    async def _post_settings(self, request: web.Request) -> web.StreamResponse:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON body", False)
        if not isinstance(data, dict) or set(data) - {"latency_ms", "tokens_per_second",
                                                      "models_wire", "models"}:
            return _error(400, "expected {latency_ms, tokens_per_second, models_wire, "
                          "models}", False)
        wire = data.pop("models_wire", self.models_wire)
        if wire not in MODELS_WIRES:
            return _error(400, f"models_wire must be one of {', '.join(MODELS_WIRES)}", False)
        listed = self.listed_models
        if "models" in data:
            models = data.pop("models")
            try:
                if not isinstance(models, list) or not models:
                    raise ValueError("a non-empty list of models")
                listed = tuple(fake_model(m) for m in models)
            except ValueError as exc:
                return _error(400, f"models: {exc}", False)
        for name, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                return _error(400, f"{name} must be a number >= 0", False)
        for name, value in data.items():
            setattr(self, name, float(value))
        self.models_wire, self.listed_models = wire, listed
        return _json({"latency_ms": self.latency_ms, "tokens_per_second": self.tokens_per_second,
                      "models_wire": self.models_wire,
                      "models": [m.id for m in self.listed_models]})


async def serve_fake_upstream(host: str, port: int, latency_ms: float = 0.0,
                              tokens_per_second: float = 0.0,
                              prompt_cache_ttl_s: float = 0.0) -> None:
    """Serve a :class:`FakeUpstream` on ``host:port`` until cancelled.

    Prints ``fake-upstream listening on http://host:port`` once accepting (the real
    port when ``port`` is 0).
    """
    fake = FakeUpstream(latency_ms, tokens_per_second, prompt_cache_ttl_s)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    try:
        # As the router's (app.start_server): bench/ opens 1,000 streams at once, and the
        # default backlog of 128 would drop SYNs.
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        print(f"fake-upstream listening on http://{host}:{bound}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
