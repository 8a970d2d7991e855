"""A fake AWS Bedrock runtime: Converse and ConverseStream, written from the wire format.

It answers ``POST /model/{modelId}/converse`` and ``/model/{modelId}/converse-stream``
(and the control plane's ``GET /foundation-models``) the way the real service does, and
shares nothing with the router's Bedrock provider: it checks SigV4 by recomputing the
signature from the secret it holds (AWS's "Create a signed AWS API request" steps: the
canonical request with the path encoded again, the string to sign, the derived key) or
takes a Bedrock API key as a bearer token; it frames ConverseStream with its own
``application/vnd.amazon.eventstream`` encoder; and it refuses what Bedrock refuses
(blank text blocks, turns that do not alternate, a first turn that is not the user's)
with a ``ValidationException``.

Errors are AWS-shaped: a JSON ``{"message": ...}`` body and the error's name in the
``x-amzn-ErrorType`` header (403 ``UnrecognizedClientException`` for an unknown access
key, ``InvalidSignatureException`` for a wrong signature, 429 ``ThrottlingException``
...). :class:`BedrockFault` injects a status or a mid-stream exception frame (also over
HTTP: ``POST /_fake/bedrock/faults`` with its fields as JSON), and
``cache_read_tokens`` / ``cache_write_tokens`` make answers report prompt-cache use.

``llm-router fake-upstream`` serves it beside the OpenAI and Anthropic routes with the
demo credentials below (docs/providers.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, unquote

import orjson
from aiohttp import web

__all__ = [
    "DEMO_ACCESS_KEY_ID",
    "DEMO_API_KEY",
    "DEMO_REGION",
    "DEMO_SECRET_ACCESS_KEY",
    "BedrockFault",
    "BedrockRequest",
    "FakeBedrock",
    "encode_event_message",
]

DEMO_ACCESS_KEY_ID: Final = "AKIAFAKEBEDROCK00001"
DEMO_SECRET_ACCESS_KEY: Final = "fake-bedrock-secret-access-key"
DEMO_API_KEY: Final = "fake-bedrock-api-key"
DEMO_REGION: Final = "us-east-1"

_Body = dict[str, Any]
_WORDS: Final = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing",
                 "elit", "sed", "do", "eiusmod", "tempor")
_DEFAULT_MAX_TOKENS: Final = 16
_TOOL_INPUT_PARTS: Final = ('{"location": ', '"Paris"}')
_TOOL_TOKENS: Final = 8
_SKEW_S: Final = 15 * 60  # AWS refuses a request signed more than 15 minutes away
_PATH: Final = re.compile(r"^/model/([^/?]+)/(converse|converse-stream)$")
_AUTH: Final = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/"
                          r"aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$")
_RECORD_CAP: Final = 1000
_FOUNDATION_MODELS: Final = (
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "Anthropic", ["TEXT"]),
    ("amazon.nova-lite-v1:0", "Amazon", ["TEXT"]),
    ("amazon.titan-embed-image-v1", "Amazon", ["EMBEDDING"]),
    ("meta.llama3-3-70b-instruct-v1:0", "Meta", ["TEXT"]),
)
# Padding of the real service's stream payloads (a field "p" of varying length), which
# a client must ignore.
_PADDING: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"


def encode_event_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (type 7) around ``payload``."""
    head = b"".join(
        bytes([len(name.encode())]) + name.encode() + b"\x07"
        + struct.pack("!H", len(value.encode())) + value.encode()
        for name, value in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack("!II", total, len(head))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack("!I", zlib.crc32(body))


def _event(event_type: str, payload: _Body) -> bytes:
    payload = {**payload, "p": _PADDING[:len(event_type) % 16 + 4]}
    return encode_event_message({":event-type": event_type, ":content-type": "application/json",
                                 ":message-type": "event"}, orjson.dumps(payload))


def _exception(exception_type: str, message: str) -> bytes:
    return encode_event_message({":exception-type": exception_type,
                                 ":content-type": "application/json",
                                 ":message-type": "exception"},
                                orjson.dumps({"message": message}))


@dataclass(slots=True)
class BedrockFault:
    """A misbehaviour for the requests it matches.

    ``status`` > 0 answers with that status and ``error_type`` (``ThrottlingException``
    ...); ``stream_exception`` (``throttlingException``, ``modelStreamErrorException``
    ...) instead lets a stream send ``after_events`` events, then that exception frame.
    """

    status: int = 0
    error_type: str = "ThrottlingException"
    message: str = "Too many requests, please wait before trying again."
    stream_exception: str | None = None
    after_events: int = 2
    times: int | None = 1  # None = every matching request
    access_key: str | None = None  # only requests signed with this access key id / bearer key


@dataclass(frozen=True, slots=True)
class BedrockRequest:
    """One request as received: the raw path segment of the model id, who signed it."""

    model_segment: str
    model_id: str
    stream: bool
    access_key: str  # the access key id, or the bearer key
    body: _Body
    headers: Mapping[str, str]


@dataclass
class FakeBedrock:
    """The fake service; :meth:`add_routes` puts it on an aiohttp application."""

    credentials: dict[str, tuple[str, str]] = field(default_factory=lambda: {
        DEMO_ACCESS_KEY_ID: (DEMO_SECRET_ACCESS_KEY, "")})  # id -> (secret, session token)
    api_keys: set[str] = field(default_factory=lambda: {DEMO_API_KEY})
    region: str = DEMO_REGION
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # A stream in writes of this many bytes, so frames span reads; None: one write (as
    # the OpenAI fake sends an unpaced stream, so benchmarks compare like with like).
    write_size: int | None = None
    requests: list[BedrockRequest] = field(default_factory=list)
    faults: list[BedrockFault] = field(default_factory=list)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/model/{rest:.+}", self._handle)
        app.router.add_post("/_fake/bedrock/faults", self._post_fault)
        app.router.add_get("/foundation-models", self._list_models)

    async def _list_models(self, request: web.Request) -> web.Response:
        """ListFoundationModels: a few summaries, one of them not a text model."""
        who = self._authenticate(request, b"")
        if isinstance(who, web.Response):
            return who
        return web.json_response({"modelSummaries": [
            {"modelId": model, "providerName": provider, "outputModalities": outputs,
             "responseStreamingSupported": True, "inferenceTypesSupported": ["ON_DEMAND"]}
            for model, provider, outputs in _FOUNDATION_MODELS]})

    async def _post_fault(self, request: web.Request) -> web.Response:
        """Arm a :class:`BedrockFault` from its fields as JSON (for another process)."""
        try:
            fields = orjson.loads(await request.read())
            fault = BedrockFault(**fields) if isinstance(fields, dict) else None
        except (orjson.JSONDecodeError, TypeError):
            fault = None
        if fault is None:
            return web.json_response({"error": "expected a JSON object of BedrockFault "
                                               "fields"}, status=400)
        self.faults.append(fault)
        return web.json_response({"faults": len(self.faults)})

    # ------------------------------------------------------------ auth

    def _authenticate(self, request: web.Request, body: bytes) -> str | web.Response:
        """The caller's key id (or bearer key), or the 403 AWS would send."""
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
            if key in self.api_keys:
                return key
            return _aws_error(403, "UnrecognizedClientException",
                              "The security token included in the request is invalid.")
        m = _AUTH.match(auth)
        if m is None:
            return _aws_error(403, "MissingAuthenticationTokenException",
                              "Missing Authentication Token")
        key_id, day, region, service, signed, signature = m.groups()
        known = self.credentials.get(key_id)
        if known is None:
            return _aws_error(403, "UnrecognizedClientException",
                              "The security token included in the request is invalid.")
        secret, token = known
        names = signed.split(";")
        amz_date = request.headers.get("x-amz-date", "")
        if "host" not in names or "x-amz-date" not in names or not amz_date.startswith(day):
            return _aws_error(403, "IncompleteSignatureException",
                              "host and x-amz-date must be signed, and match the scope.")
        if region != self.region or service != "bedrock":
            return _aws_error(403, "InvalidSignatureException",
                              f"Credential should be scoped to a valid region ({self.region}) "
                              "and service (bedrock).")
        if token and (request.headers.get("x-amz-security-token") != token
                      or "x-amz-security-token" not in names):
            return _aws_error(403, "UnrecognizedClientException",
                              "The security token included in the request is invalid.")
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return _aws_error(403, "IncompleteSignatureException", "Bad X-Amz-Date.")
        if abs(signed_at.timestamp() - time.time()) > _SKEW_S:
            return _aws_error(403, "InvalidSignatureException", "Signature expired.")
        canonical_headers = "".join(
            f"{n}:{' '.join(','.join(request.headers.getall(n, [])).split())}\n" for n in names)
        path = request.raw_path.partition("?")[0]
        canonical = "\n".join((request.method, quote(path, safe="/~"), "", canonical_headers,
                               signed, hashlib.sha256(body).hexdigest()))
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()))
        k = ("AWS4" + secret).encode()
        for part in (day, region, service, "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return _aws_error(403, "InvalidSignatureException",
                              "The request signature we calculated does not match the "
                              "signature you provided. Check your AWS Secret Access Key and "
                              "signing method.")
        return key_id

    # ------------------------------------------------------------ the routes

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        m = _PATH.match(request.raw_path)
        if m is None:
            return _aws_error(404, "UnknownOperationException", "Unknown operation")
        segment, operation = m.groups()
        raw = await request.read()
        who = self._authenticate(request, raw)
        if isinstance(who, web.Response):
            return who
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _aws_error(400, "SerializationException", "Invalid JSON body.")
        if not isinstance(body, dict):
            return _aws_error(400, "SerializationException", "Expected a JSON object.")
        stream = operation == "converse-stream"
        self.requests.append(BedrockRequest(segment, unquote(segment), stream, who, body,
                                            request.headers))
        del self.requests[:-_RECORD_CAP]
        fault = self._take_fault(who)
        if fault is not None and fault.status:
            return _aws_error(fault.status, fault.error_type, fault.message)
        problem = _validation_problem(body)
        if problem is not None:
            return _aws_error(400, "ValidationException", problem)
        answer = self._answer(body)
        if not stream:
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        return await self._stream(request, answer, fault)

    def _take_fault(self, who: str) -> BedrockFault | None:
        for fault in self.faults:
            if fault.access_key is not None and fault.access_key != who:
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            return fault
        return None

    def _answer(self, body: _Body) -> _Body:
        """The Converse answer: a tool call when tools are offered and no result came
        back yet, else ``maxTokens`` words (16 by default)."""
        config = body.get("inferenceConfig") or {}
        tool = _tool_to_call(body)
        prompt = _prompt_tokens(body)
        cache_read = min(self.cache_read_tokens, prompt)
        cache_write = min(self.cache_write_tokens, prompt - cache_read)
        usage: _Body = {"inputTokens": prompt - cache_read - cache_write}
        if tool is not None:
            content: list[_Body] = [{"toolUse": {
                "toolUseId": "tooluse_" + uuid.uuid4().hex[:22], "name": tool,
                "input": orjson.loads("".join(_TOOL_INPUT_PARTS))}}]
            output, stop = _TOOL_TOKENS, "tool_use"
        else:
            limit = config.get("maxTokens")
            output = limit if isinstance(limit, int) and limit < 64 else _DEFAULT_MAX_TOKENS
            text = " ".join(_WORDS[i % len(_WORDS)] for i in range(output))
            content = [{"text": text}]
            stop = "max_tokens" if isinstance(limit, int) and limit < 64 else "end_turn"
        usage["outputTokens"] = output
        usage["totalTokens"] = prompt + output
        if cache_read or cache_write:
            usage["cacheReadInputTokens"] = cache_read
            usage["cacheWriteInputTokens"] = cache_write
        return {"output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}}

    async def _stream(self, request: web.Request, answer: _Body,
                      fault: BedrockFault | None) -> web.StreamResponse:
        frames = [_event("messageStart", {"role": "assistant"})]
        for index, block in enumerate(answer["output"]["message"]["content"]):
            if "toolUse" in block:
                use = block["toolUse"]
                frames.append(_event("contentBlockStart", {
                    "contentBlockIndex": index,
                    "start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
                frames.extend(_event("contentBlockDelta", {
                    "contentBlockIndex": index, "delta": {"toolUse": {"input": part}}})
                    for part in _TOOL_INPUT_PARTS)
            else:
                words = block["text"].split(" ")
                frames.extend(_event("contentBlockDelta", {
                    "contentBlockIndex": index,
                    "delta": {"text": word if not i else " " + word}})
                    for i, word in enumerate(words))
            frames.append(_event("contentBlockStop", {"contentBlockIndex": index}))
        frames.append(_event("messageStop", {"stopReason": answer["stopReason"]}))
        frames.append(_event("metadata", {"usage": answer["usage"],
                                          "metrics": answer["metrics"]}))
        if fault is not None and fault.stream_exception:
            frames = frames[:fault.after_events]
            frames.append(_exception(fault.stream_exception, fault.message))
        response = web.StreamResponse(headers={
            "Content-Type": "application/vnd.amazon.eventstream",
            "x-amzn-RequestId": str(uuid.uuid4())})
        await response.prepare(request)
        try:
            data = b"".join(frames)
            step = self.write_size or len(data)
            for at in range(0, len(data), step):
                await response.write(data[at:at + step])
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response


def _aws_error(status: int, error_type: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"message": message}),
                        content_type="application/json",
                        headers={"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/"
                                                     "coral/com.amazon.bedrock/",
                                 "x-amzn-RequestId": str(uuid.uuid4())})


def _validation_problem(body: _Body) -> str | None:
    """What Bedrock's ValidationException would say about ``body``, or None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must contain at least one message."
    previous = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant."
        if i == 0 and message["role"] != "user":
            return "A conversation must start with a user message. Try again with a " \
                   "conversation that starts with a user message."
        if message["role"] == previous:
            return "A conversation must alternate between user and assistant roles. Make " \
                   "sure the conversation alternates between user and assistant roles " \
                   "and try again."
        previous = message["role"]
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"messages.{i}.content: must contain at least one block."
        for j, block in enumerate(content):
            if not isinstance(block, dict) or len(block) != 1:
                return f"messages.{i}.content.{j}: exactly one member must be set."
            if "text" in block and not str(block["text"]).strip():
                return (f"The text field in the ContentBlock object at "
                        f"messages.{i}.content.{j} is blank. Add text to the text field, "
                        "and try again.")
            if "image" in block:
                image = block["image"]
                try:
                    base64.b64decode(image["source"]["bytes"], validate=True)
                except (KeyError, TypeError, ValueError):
                    return f"messages.{i}.content.{j}.image: invalid image bytes."
                if image.get("format") not in ("png", "jpeg", "gif", "webp"):
                    return f"messages.{i}.content.{j}.image.format: invalid format."
    for j, block in enumerate(body.get("system") or []):
        if isinstance(block, dict) and "text" in block and not str(block["text"]).strip():
            return f"The text field in the SystemContentBlock at system.{j} is blank."
    return None


def _tool_to_call(body: _Body) -> str | None:
    tools = (body.get("toolConfig") or {}).get("tools") or []
    names = [t["toolSpec"]["name"] for t in tools if isinstance(t, dict) and "toolSpec" in t]
    if not names:
        return None
    last = body["messages"][-1].get("content") or []
    if any(isinstance(b, dict) and "toolResult" in b for b in last):
        return None  # the tool answered: now the model speaks
    choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
    named = (choice.get("tool") or {}).get("name") if isinstance(choice, dict) else None
    return named if isinstance(named, str) else names[0]


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_chars(v) for k, v in value.items() if k in ("text", "content", "json"))
    return 0


def _prompt_tokens(body: _Body) -> int:
    """About a token per 4 characters of text, 3 more per message, never under 1."""
    total = sum((_chars(m.get("content")) + 3) // 4 + 3 for m in body["messages"])
    if body.get("system"):
        total += (_chars(body["system"]) + 3) // 4 + 3
    return max(1, total)
