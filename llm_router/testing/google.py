"""The fake upstream's Google side: the Gemini API, Vertex AI and Google's OAuth token
endpoint, spoken natively.

Written from Google's wire format (docs/providers.md cites the references), never from
the router's translators, and strict where Google is strict, so a translator's mistake
fails a test the way it would fail in production:

- ``POST /v1beta/models/{model}:generateContent`` / ``:streamGenerateContent?alt=sse`` /
  ``:batchEmbedContents`` with ``x-goog-api-key``; ``GET /v1beta/models`` (paginated by
  ``pageSize`` / ``pageToken``).
- Vertex AI: ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:…``
  (the same bodies) and ``publishers/anthropic/models/{m}:rawPredict`` /
  ``:streamRawPredict`` (Anthropic Messages without ``model``, with
  ``anthropic_version: vertex-2023-10-16``), each with ``Authorization: Bearer`` a
  token this fake issued and that has not expired.
- ``POST /token``: the service-account JWT bearer grant. The assertion's RS256
  signature is checked with the public key registered by :meth:`GoogleFake.trust`, and
  its claims (``iss``, ``scope``, ``aud``, ``iat``, ``exp``) as Google checks them.

Requests are validated as Google does: unknown fields are 400 "Unknown name", a
``parameters`` schema may use only the OpenAPI subset, a function response needs the
name of a call in the turn before, and a function call the fake answered with a
``thoughtSignature`` must carry it back (as Gemini 3 requires). Answers are
deterministic: text from a fixed vocabulary, a ``functionCall`` when tools are offered,
``usageMetadata`` with thoughts (unless ``thinkingBudget`` is 0) and, for a prompt whose
leading turns the same key sent before, ``cachedContentTokenCount`` (implicit caching).
Streams send whole responses with running-total usage and no ``[DONE]``. Faults of the
main fake apply (:class:`~llm_router.testing.upstream.Fault`): a status answers a Google
error body, ``retry_after`` becoming a ``RetryInfo`` ``retryDelay``; a stream fault
with ``cut_after_chunks`` and a ``body`` sends the body as an in-band ``data:`` event
after that many events, and ends the stream cleanly, as Google does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

__all__ = ["VERTEX_ANTHROPIC_VERSION", "FakeHooks", "GoogleFake", "google_error_body"]

_Body = dict[str, Any]
VERTEX_ANTHROPIC_VERSION: Final = "vertex-2023-10-16"
_VOCABULARY: Final = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
                      "hotel", "india", "juliett", "kilo", "lima", "mike", "november")
_DEFAULT_WORDS: Final = 12
_PAGE_CAP: Final = 4  # models per page of GET /v1beta/models
_THOUGHT_TOKENS: Final = 12
_IMAGE_TOKENS: Final = 258  # what Gemini counts for an image
_TOOL_ARGS: Final = {"location": "Paris"}
_JWT_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
_MODELS: Final = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite",
                  "gemini-3-pro-preview", "text-embedding-004", "gemini-embedding-001")
_GEMINI_FIELDS: Final = frozenset({"contents", "systemInstruction", "tools", "toolConfig",
                                   "generationConfig", "safetySettings", "cachedContent"})
_VERTEX_FIELDS: Final = _GEMINI_FIELDS | {"labels"}
_PART_DATA: Final = frozenset({"text", "inlineData", "fileData", "functionCall",
                               "functionResponse", "executableCode", "codeExecutionResult"})
_PART_FIELDS: Final = _PART_DATA | {"thought", "thoughtSignature", "videoMetadata"}
_GENERATION_FIELDS: Final = frozenset({
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences",
    "seed", "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema",
    "responseJsonSchema", "responseLogprobs", "logprobs", "thinkingConfig",
    "responseModalities", "mediaResolution", "speechConfig"})
_SCHEMA_FIELDS: Final = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
    "maximum"})
_SCHEMA_TYPES: Final = frozenset({"string", "number", "integer", "boolean", "array", "object",
                                  "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT",
                                  "NULL", "TYPE_UNSPECIFIED"})
_STATUS_NAMES: Final = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                        404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                        503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class _Invalid(Exception):
    """A request Google would refuse: answered ``status`` with a Google error body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def google_error_body(status: int, message: str, retry_delay_s: float | None = None,
                      reason: str | None = None) -> bytes:
    """Google's error JSON (``google.rpc.Status``), with ``RetryInfo`` and ``ErrorInfo``
    details when given."""
    details: list[_Body] = []
    if reason is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": reason, "domain": "googleapis.com"})
    if retry_delay_s is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{retry_delay_s:g}s"})
    error: _Body = {"code": status, "message": message,
                    "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def _error(status: int, message: str, **kwargs: Any) -> web.Response:
    return web.Response(status=status, body=google_error_body(status, message, **kwargs),
                        content_type="application/json")


# ---------------------------------------------------------------- request validation


def _unknown(where: str, found: Any, known: frozenset[str]) -> None:
    if isinstance(found, dict):
        for name in found:
            if name not in known:
                raise _Invalid(f'Invalid JSON payload received. Unknown name "{name}" at '
                               f"'{where}': Cannot find field.")


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _Invalid(f"Invalid value at '{where}': a schema must be an object.")
    _unknown(where, schema, _SCHEMA_FIELDS)
    kind = schema.get("type")
    if kind is not None and kind not in _SCHEMA_TYPES:
        raise _Invalid(f"Invalid value at '{where}.type' ({kind!r}).")
    if kind in ("object", "OBJECT") and schema.get("properties") == {}:
        raise _Invalid(f"{where}.properties: should be non-empty for OBJECT type")
    for name, sub in (schema.get("properties") or {}).items():
        _check_schema(sub, f"{where}.properties[{name}]")
    if "items" in schema:
        _check_schema(schema["items"], f"{where}.items")
    for i, sub in enumerate(schema.get("anyOf") or []):
        _check_schema(sub, f"{where}.any_of[{i}]")


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise _Invalid(f"Invalid value at '{where}': a part must be an object.")
    _unknown(where, part, _PART_FIELDS)
    data = [k for k in part if k in _PART_DATA]
    if len(data) != 1:
        raise _Invalid(f"{where}: a part must hold exactly one of text, inlineData, fileData, "
                       "functionCall, functionResponse.")
    if "inlineData" in part:
        inline = part["inlineData"]
        if not isinstance(inline, dict) or not inline.get("mimeType"):
            raise _Invalid(f"{where}.inline_data: mimeType is required.")
        try:
            base64.b64decode(str(inline.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), "
                           "Base64 decoding failed.") from None
    if "fileData" in part and not (isinstance(part["fileData"], dict)
                                   and part["fileData"].get("fileUri")):
        raise _Invalid(f"{where}.file_data: fileUri is required.")
    if "functionCall" in part:
        call = part["functionCall"]
        if not isinstance(call, dict) or not call.get("name") or not isinstance(
                call.get("args", {}), dict):
            raise _Invalid(f"{where}.function_call: name and an object of args are required.")
    if "functionResponse" in part:
        resp = part["functionResponse"]
        if not isinstance(resp, dict) or not resp.get("name") or not isinstance(
                resp.get("response"), dict):
            raise _Invalid(f"{where}.function_response: name and an object response are "
                           "required.")


def _check_generate(body: Any, known: frozenset[str]) -> _Body:
    if not isinstance(body, dict):
        raise _Invalid("Invalid JSON payload received.")
    _unknown("", body, known)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        if not isinstance(content, dict):
            raise _Invalid(f"Invalid value at '{where}'.")
        _unknown(where, content, frozenset({"role", "parts"}))
        if content.get("role") not in ("user", "model"):
            raise _Invalid(f"Please use a valid role: user, model. ({where})")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not "
                           "be empty.")
        for j, part in enumerate(parts):
            _check_part(part, f"{where}.parts[{j}]")
    system = body.get("systemInstruction")
    if system is not None:
        _unknown("system_instruction", system, frozenset({"role", "parts"}))
        for j, part in enumerate(system.get("parts") or []):
            _check_part(part, f"system_instruction.parts[{j}]")
    _check_tools(body)
    generation = body.get("generationConfig")
    if generation is not None:
        _unknown("generation_config", generation, _GENERATION_FIELDS)
        if "responseSchema" in generation and "responseJsonSchema" in generation:
            raise _Invalid("generation_config: responseSchema and responseJsonSchema are "
                           "mutually exclusive.")
        if "responseSchema" in generation:
            _check_schema(generation["responseSchema"], "generation_config.response_schema")
        if ("responseSchema" in generation or "responseJsonSchema" in generation) and \
                generation.get("responseMimeType") != "application/json":
            raise _Invalid("generation_config: a response schema needs responseMimeType "
                           "application/json.")
    _check_turns(contents)
    return body


def _check_tools(body: _Body) -> None:
    for i, tool in enumerate(body.get("tools") or []):
        _unknown(f"tools[{i}]", tool, frozenset({"functionDeclarations", "googleSearch",
                                                 "codeExecution", "urlContext"}))
        for k, decl in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{k}]"
            _unknown(where, decl, frozenset({"name", "description", "parameters",
                                             "parametersJsonSchema", "response",
                                             "responseJsonSchema", "behavior"}))
            if not decl.get("name"):
                raise _Invalid(f"* {where}.name: Name cannot be empty.")
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise _Invalid(f"{where}: parameters and parametersJsonSchema are mutually "
                               "exclusive.")
            if "parameters" in decl:
                _check_schema(decl["parameters"], f"{where}.parameters")
    config = body.get("toolConfig")
    if config is not None:
        _unknown("tool_config", config, frozenset({"functionCallingConfig",
                                                   "retrievalConfig"}))
        calling = config.get("functionCallingConfig") or {}
        _unknown("tool_config.function_calling_config", calling,
                 frozenset({"mode", "allowedFunctionNames"}))
        if calling.get("mode") not in (None, "AUTO", "ANY", "NONE", "VALIDATED"):
            raise _Invalid(f"Invalid value at 'tool_config.function_calling_config.mode' "
                           f"({calling.get('mode')!r}).")
        if calling.get("allowedFunctionNames") and calling.get("mode") not in ("ANY",
                                                                               "VALIDATED"):
            raise _Invalid("allowed_function_names may be set only when the mode is ANY.")


def _signature(call: _Body) -> str:
    """The thoughtSignature this fake attaches to a function call it makes (stateless:
    derived from the call, so a later request can be checked without memory)."""
    digest = hashlib.sha256(b"fake-thought:" + orjson.dumps(
        [call.get("name"), call.get("args") or {}], option=orjson.OPT_SORT_KEYS)).digest()
    return base64.b64encode(digest + b"\xff\xfe").decode()  # '+' and '/' likely, as real


def _check_turns(contents: list[_Body]) -> None:
    previous_calls: set[str] = set()
    for i, content in enumerate(contents):
        calls = [p["functionCall"] for p in content["parts"] if "functionCall" in p]
        if content["role"] == "model" and calls:
            first = next(p for p in content["parts"] if "functionCall" in p)
            if first.get("thoughtSignature") != _signature(first["functionCall"]):
                raise _Invalid(f"Function call is missing a thought_signature in "
                               f"functionCall parts. This is required for tools to work "
                               f"correctly (contents[{i}]).")
        for part in content["parts"]:
            if "functionResponse" in part:
                name = part["functionResponse"]["name"]
                if name not in previous_calls:
                    raise _Invalid(f"contents[{i}]: function response '{name}' answers no "
                                   "function call of the turn before.")
        previous_calls = {str(c.get("name")) for c in calls}


# ---------------------------------------------------------------- answers


def _text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _part_tokens(part: _Body) -> int:
    if "text" in part:
        return _text_tokens(str(part["text"]))
    if "inlineData" in part or "fileData" in part:
        return _IMAGE_TOKENS
    return _text_tokens(orjson.dumps(part).decode())


def _content_tokens(content: _Body) -> int:
    return sum(_part_tokens(p) for p in content.get("parts") or [])


def _sample(schema: Any) -> Any:
    kind = str(schema.get("type", "string")).lower() if isinstance(schema, dict) else "string"
    if kind == "object":
        props = schema.get("properties") if isinstance(schema, dict) else None
        return {name: _sample(sub) for name, sub in (props or {"answer": {}}).items()}
    if kind == "array":
        return [_sample(schema.get("items") if isinstance(schema, dict) else None)]
    return {"integer": 7, "number": 1.5, "boolean": True}.get(kind, "alpha")


@dataclass(slots=True)
class _Answer:
    parts: list[_Body]
    words: list[str]  # text pieces, for streaming
    candidates_tokens: int
    finish: str


def _answer(body: _Body) -> _Answer:
    contents = body["contents"]
    last = contents[-1]
    generation = body.get("generationConfig") or {}
    declarations = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations")
                    or []]
    calling = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {})
    answered = any("functionResponse" in p for p in last["parts"])
    if declarations and calling.get("mode") != "NONE" and not answered \
            and last["role"] == "user":
        allowed = calling.get("allowedFunctionNames") or [declarations[0]["name"]]
        call = {"name": allowed[0], "args": dict(_TOOL_ARGS)}
        return _Answer([{"functionCall": call, "thoughtSignature": _signature(call)}], [],
                       8, "STOP")
    if generation.get("responseMimeType") == "application/json":
        schema = generation.get("responseSchema") or generation.get("responseJsonSchema")
        text = orjson.dumps(_sample(schema or {"type": "object"})).decode()
        return _Answer([{"text": text}], [text], _text_tokens(text), "STOP")
    limit = generation.get("maxOutputTokens")
    count = _DEFAULT_WORDS if not isinstance(limit, int) else min(limit, _DEFAULT_WORDS)
    seed = sum(_content_tokens(c) for c in contents)
    words = [_VOCABULARY[(seed + i) % len(_VOCABULARY)] + " " for i in range(count)]
    if answered:
        words = ["the ", "tool ", "answered ", *words[3:]]
    text = "".join(words).rstrip()
    finish = "MAX_TOKENS" if isinstance(limit, int) and limit < _DEFAULT_WORDS else "STOP"
    return _Answer([{"text": text}] if text else [], words, count, finish)


def _usage(prompt: int, cached: int, candidates: int, thoughts: int) -> _Body:
    usage: _Body = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                    "totalTokenCount": prompt + candidates + thoughts}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if cached:
        usage["cachedContentTokenCount"] = cached
    return usage


@dataclass(frozen=True, slots=True)
class FakeHooks:
    """What the Google side shares with the main fake (testing/upstream.py), passed in so
    neither module imports the other: its request log, faults, pauses, and its
    Anthropic answers and stream writer (for Vertex's Claude models)."""

    record: Callable[[web.Request, str, str, bool, Any], None]  # request, who, model, stream, body
    take_fault: Callable[[str, str | None, bool], Any]  # path, key, stream -> Fault | None
    pause: Callable[[web.Request, float], Awaitable[None]]
    messages_response: Callable[[_Body, str], _Body]
    messages_events: Callable[[_Body, str], list[tuple[str, _Body]]]
    stream_named: Callable[[web.Request, list[tuple[str, _Body]], int | None],
                           Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class GoogleFake:
    """Google's APIs over the main fake's app (:meth:`add_routes`)."""

    token_ttl_s: float = 3600.0  # expires_in of the tokens /token issues
    token_requests: int = 0  # assertions received at /token, valid or not
    _trusted: dict[str, Any] = field(default_factory=dict)  # client_email -> public key
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # -> (email, expiry)
    _prefixes: dict[bytes, int] = field(default_factory=dict)  # implicit cache: digests
    clock: Callable[[], float] = time.time  # tokens' clock: tests may move it
    _hooks: FakeHooks | None = None

    def trust(self, client_email: str, public_key: Any) -> None:
        """Accept assertions from ``client_email`` signed by ``public_key`` (a
        ``cryptography`` RSA public key)."""
        self._trusted[client_email] = public_key

    def expire_tokens(self) -> None:
        """Every issued token expires now (as if its hour had passed)."""
        self._tokens = {t: (email, 0.0) for t, (email, _) in self._tokens.items()}

    @property
    def hooks(self) -> FakeHooks:
        assert self._hooks is not None, "add_routes first"
        return self._hooks

    def add_routes(self, app: web.Application, hooks: FakeHooks) -> None:
        self._hooks = hooks
        app.router.add_post("/v1beta/models/{call}", self._gemini)
        app.router.add_get("/v1beta/models", self._list_models)
        app.router.add_post("/v1/projects/{project}/locations/{location}/publishers/"
                            "{publisher}/models/{call}", self._vertex)
        app.router.add_post("/token", self._token)
        app.router.add_post("/_fake/google/trust", self._post_trust)

    # -------------------------------------------------------------- routes

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _error(403, "Method doesn't allow unregistered callers (callers without "
                          "established identity). Please use API Key or other form of API "
                          "consumer identity to call this API.")
        if key.startswith("invalid"):
            return _error(400, "API key not valid. Please pass a valid API key.",
                          reason="API_KEY_INVALID")
        return await self._model_call(request, key, _GEMINI_FIELDS)

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        email, expiry = self._tokens.get(token, ("", 0.0))
        if not email or expiry <= self.clock():
            return _error(401, "Request had invalid authentication credentials. Expected "
                          "OAuth 2 access token, login cookie or other valid authentication "
                          "credential.")
        if request.match_info["publisher"] == "anthropic":
            return await self._claude(request, email)
        if request.match_info["publisher"] != "google":
            return _error(404, "Publisher model not found.")
        return await self._model_call(request, email, _VERTEX_FIELDS)

    async def _model_call(self, request: web.Request, who: str,
                          known: frozenset[str]) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        stream = method == "streamGenerateContent"
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "Invalid JSON payload received.")
        self.hooks.record(request, who, model, stream, body)
        fault = self.hooks.take_fault(request.path, who, stream)
        if fault is not None and fault.hang_s > 0:
            await self.hooks.pause(request, fault.hang_s)
        if fault is not None and fault.status:
            if fault.body is not None:
                return web.Response(status=fault.status, body=fault.body,
                                    content_type="application/json")
            delay = float(fault.retry_after) if fault.retry_after else None
            return _error(fault.status, f"injected fault ({fault.status})",
                          retry_delay_s=delay)
        try:
            if method == "batchEmbedContents":
                return web.json_response(self._embed(body, model), dumps=_dumps)
            if method not in ("generateContent", "streamGenerateContent"):
                return _error(404, f"Method {method} not found.")
            if stream and request.query.get("alt") != "sse":
                return _error(400, "this fake streams only with alt=sse")
            _check_generate(body, known)
        except _Invalid as invalid:
            return _error(invalid.status, str(invalid))
        answer = _answer(body)
        prompt, cached = self._prompt_tokens(who, model, body)
        thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        thoughts = 0 if thinking.get("thinkingBudget") == 0 else _THOUGHT_TOKENS
        head = {"modelVersion": model, "responseId": secrets.token_urlsafe(12)}
        if not stream:
            return web.json_response({
                "candidates": [{"content": {"role": "model", "parts": answer.parts},
                                "finishReason": answer.finish, "index": 0}],
                "usageMetadata": _usage(prompt, cached, answer.candidates_tokens, thoughts),
                **head}, dumps=_dumps)
        events = self._stream_events(answer, prompt, cached, thoughts, head)
        return await self._send_stream(request, events, fault)

    def _stream_events(self, answer: _Answer, prompt: int, cached: int, thoughts: int,
                       head: _Body) -> list[_Body]:
        pieces = ["".join(answer.words[i:i + 3]) for i in range(0, len(answer.words), 3)]
        if not answer.words:
            pieces = [""]
        events: list[_Body] = []
        done = 0
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            parts = answer.parts if not answer.words else [
                {"text": piece.rstrip() if last else piece}]
            done = answer.candidates_tokens if last else done + 3
            candidate: _Body = {"content": {"role": "model", "parts": parts}, "index": 0}
            if last:
                candidate["finishReason"] = answer.finish
            # usageMetadata on every event, a running total (thoughts counted up front).
            events.append({"candidates": [candidate],
                           "usageMetadata": _usage(prompt, cached, done, thoughts), **head})
        return events

    async def _send_stream(self, request: web.Request, events: list[_Body],
                           fault: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        cut = fault.cut_after_chunks if fault is not None else None
        if cut is None:
            # Every event is ready at once: one write, as the OpenAI side does unpaced
            # (so a benchmark compares the router's work, not the fake's write pattern).
            # Vertex and Gemini streams end their lines with CRLF.
            await response.write_eof(b"".join(b"data: " + orjson.dumps(event) + b"\r\n\r\n"
                                              for event in events))
            return response
        for i, event in enumerate(events):
            if cut is not None and i >= cut:
                if fault.body is not None:  # Google's way: an error event, then the end
                    await response.write(b"data: " + fault.body + b"\r\n\r\n")
                    await response.write_eof()
                elif request.transport is not None:
                    request.transport.close()  # truncated: no terminator
                return response
            await response.write(b"data: " + orjson.dumps(event) + b"\r\n\r\n")
        await response.write_eof()
        return response

    def _prompt_tokens(self, who: str, model: str, body: _Body) -> tuple[int, int]:
        """(promptTokenCount, cachedContentTokenCount): the implicit cache remembers, per
        caller and model, every leading run of turns (after the system instruction and
        tools); the longest run sent before is cached."""
        h = hashlib.blake2b(digest_size=16)
        h.update(orjson.dumps([who, model, body.get("systemInstruction"), body.get("tools")],
                              option=orjson.OPT_SORT_KEYS))
        system = body.get("systemInstruction") or {}
        tokens = _content_tokens(system) if isinstance(system, dict) else 0
        cached = 0
        for content in body["contents"]:
            h.update(orjson.dumps(content, option=orjson.OPT_SORT_KEYS))
            tokens += _content_tokens(content)
            digest = h.digest()
            if digest in self._prefixes:
                cached = tokens  # the chained digest covers every turn before it too
            self._prefixes[digest] = tokens
        return max(1, tokens), cached

    def _embed(self, body: Any, model: str) -> _Body:
        if not isinstance(body, dict):
            raise _Invalid("Invalid JSON payload received.")
        _unknown("", body, frozenset({"requests"}))
        out = []
        for i, one in enumerate(body.get("requests") or []):
            _unknown(f"requests[{i}]", one, frozenset({"model", "content", "taskType", "title",
                                                       "outputDimensionality"}))
            if one.get("model") != f"models/{model}":
                raise _Invalid(f"requests[{i}].model: the model of each request must be the "
                               f"batch's (models/{model}).")
            text = "".join(str(p.get("text") or "") for p in one["content"]["parts"])
            dims = one.get("outputDimensionality") or 8
            seed = hashlib.sha256(text.encode()).digest()
            out.append({"values": [round((seed[j % 32] - 128) / 128, 4) for j in range(dims)]})
        return {"embeddings": out}

    async def _list_models(self, request: web.Request) -> web.Response:
        if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
            return _error(403, "Method doesn't allow unregistered callers.")
        # At most _PAGE_CAP a page whatever was asked, as a server may: clients must
        # follow nextPageToken.
        size = min(int(request.query.get("pageSize") or 50), _PAGE_CAP)
        start = int(request.query.get("pageToken") or 0)
        page = _MODELS[start:start + size]
        models = [{"name": f"models/{m}", "displayName": m, "inputTokenLimit": 1048576,
                   "outputTokenLimit": 65536, "supportedGenerationMethods":
                   ["embedContent"] if "embedding" in m else ["generateContent",
                                                               "countTokens"]}
                  for m in page]
        doc: _Body = {"models": models}
        if start + size < len(_MODELS):
            doc["nextPageToken"] = str(start + size)
        return web.json_response(doc, dumps=_dumps)

    async def _claude(self, request: web.Request, email: str) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        stream = method == "streamRawPredict"
        self.hooks.record(request, email, model, stream, body)
        problem = None
        if not isinstance(body, dict):
            problem = "body must be a JSON object"
        elif "model" in body:
            problem = "model: Extra inputs are not permitted"
        elif body.get("anthropic_version") != VERTEX_ANTHROPIC_VERSION:
            problem = f"anthropic_version: must be {VERTEX_ANTHROPIC_VERSION}"
        elif method not in ("rawPredict", "streamRawPredict"):
            return _error(404, f"Method {method} not found.")
        elif bool(body.get("stream")) != stream:
            problem = "stream must be true exactly for streamRawPredict"
        if problem is not None:
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": problem}}, status=400, dumps=_dumps)
        assert isinstance(body, dict)
        fault = self.hooks.take_fault(request.path, email, stream)
        if fault is not None and fault.status:  # Vertex's own errors are Google's shape
            if fault.body is not None:
                return web.Response(status=fault.status, body=fault.body,
                                    content_type="application/json")
            delay = float(fault.retry_after) if fault.retry_after else None
            return _error(fault.status, f"injected fault ({fault.status})",
                          retry_delay_s=delay)
        if not stream:
            return web.json_response(self.hooks.messages_response(body, model), dumps=_dumps)
        return await self.hooks.stream_named(request, self.hooks.messages_events(body, model),
                                             fault.cut_after_chunks if fault else None)

    async def _post_trust(self, request: web.Request) -> web.Response:
        """Control route for another process (``llm-router fake-upstream`` by hand):
        ``{"client_email", "public_key"}`` (PEM) is trusted as :meth:`trust` does."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            doc = orjson.loads(await request.read())
            key = load_pem_public_key(str(doc["public_key"]).encode())
            email = str(doc["client_email"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _oauth_error("invalid_request", "expected {client_email, public_key (PEM)}")
        self.trust(email, key)
        return web.json_response({"trusted": sorted(self._trusted)})

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != _JWT_GRANT:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        assertion = form.get("assertion")
        try:
            email = self._verify(str(assertion or ""), str(request.url))
        except _Invalid as invalid:
            return _oauth_error("invalid_grant", str(invalid))
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._tokens[token] = (email, self.clock() + self.token_ttl_s)
        return web.json_response({"access_token": token, "expires_in": int(self.token_ttl_s),
                                  "token_type": "Bearer"})

    def _verify(self, assertion: str, url: str) -> str:
        """The client_email of a valid assertion; raises :class:`_Invalid`."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        pieces = assertion.split(".")
        if len(pieces) != 3:
            raise _Invalid("Invalid JWT: not three segments.")
        try:
            header = orjson.loads(_unb64(pieces[0]))
            claims = orjson.loads(_unb64(pieces[1]))
            signature = _unb64(pieces[2])
        except (ValueError, orjson.JSONDecodeError):
            raise _Invalid("Invalid JWT: bad encoding.") from None
        if header.get("alg") != "RS256" or header.get("typ", "JWT") != "JWT":
            raise _Invalid("Invalid JWT: alg must be RS256.")
        email = claims.get("iss")
        key = self._trusted.get(email)
        if key is None:
            raise _Invalid("Invalid JWT: unknown issuer.")
        try:
            key.verify(signature, f"{pieces[0]}.{pieces[1]}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature:
            raise _Invalid("Invalid JWT Signature.") from None
        now = self.clock()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > 3600 \
                or exp <= now or iat > now + 300:
            raise _Invalid("Invalid JWT: Token must be a short-lived token (60 minutes) and "
                           "in a reasonable timeframe.")
        if claims.get("aud") != url:
            raise _Invalid(f"Invalid JWT: aud must be {url}.")
        if _SCOPE not in str(claims.get("scope") or "").split():
            raise _Invalid("Invalid JWT: the scope must include cloud-platform.")
        return str(email)


def _oauth_error(code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=400)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
