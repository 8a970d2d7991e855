"""``type: bedrock``: AWS Bedrock's Converse API, spoken as the hub at its boundary.

The provider takes a hub (OpenAI chat) call and answers in the hub's dialect, so the
router relays and accounts for it as for any OpenAI-compatible upstream: :func:`send`
translates the body to Converse (:mod:`.converse`), POSTs it to
``{base_url}/model/{modelId}/converse`` (or ``/converse-stream``) with the model id
percent-encoded as one path segment, signed with SigV4 (:mod:`.sigv4`) over the exact
bytes sent, or with a Bedrock API key as a bearer token. :class:`BedrockResponse`
turns the answer back into a ``chat.completion``, a chunk stream (event-stream frames
decoded by :mod:`.eventstream`, translated by :mod:`.stream`) or an OpenAI-shaped error
whose status steers failover (:mod:`.errors`).

A request Converse cannot express (an image URL, audio) is answered here as a 400
without contacting AWS, so the client gets the reason, not a failover.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from yarl import URL

from ...errors import BadRequest, error_body
from .. import ResponseTooLarge, UpstreamCall, UpstreamProtocolError, UpstreamResponse
from ..http import HTTPResponse, post
from .converse import Plan, converse_answer, converse_request, missing_output
from .errors import ERROR_TYPE_HEADER, error_name, error_status
from .errors import error_body as aws_error_body
from .eventstream import FrameDecoder, FrameTooLarge, Message
from .sigv4 import Credentials, sign_headers
from .stream import ConverseStreamToChat

__all__ = ["BedrockResponse", "Refusal", "send"]

SERVICE: Final = "bedrock"  # SigV4's service name, though the host says bedrock-runtime
# The largest event-stream message accepted: Converse streams deltas of a few hundred
# bytes, so this only stops a broken or hostile stream from buffering without end
# (upstream_limits.max_event_bytes, when smaller, bounds it as for an SSE event).
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
_JSON: Final = "application/json"
_HUB_STREAM: Final = {"Content-Type": "text/event-stream"}
_HUB_JSON: Final = {"Content-Type": _JSON}


class BedrockResponse:
    """A Bedrock answer read as the hub's: JSON, an SSE chunk stream, or an error."""

    __slots__ = ("_inner", "_max_message", "_plan", "headers", "status", "stream")

    def __init__(self, inner: HTTPResponse, plan: Plan, stream: bool,
                 max_event: int = MAX_MESSAGE_BYTES) -> None:
        self._inner = inner
        self._plan = plan
        self.stream = stream
        self._max_message = min(max_event, MAX_MESSAGE_BYTES)
        name = error_name(inner.headers.get(ERROR_TYPE_HEADER))
        self.status = error_status(inner.status, name) if inner.status >= 400 else inner.status
        retry = inner.headers.get("Retry-After")
        headers = dict(_HUB_STREAM if stream and self.status < 400 else _HUB_JSON)
        if retry is not None:
            headers["Retry-After"] = retry
        self.headers: Mapping[str, str] = headers

    def whole(self, limit: int) -> bytes | None:
        del limit
        return None  # read() it

    async def read(self, limit: int) -> bytes:
        raw = await self._inner.read(limit)
        if self.status >= 400:
            name = error_name(self._inner.headers.get(ERROR_TYPE_HEADER))
            return aws_error_body(self.status, name, raw)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw  # not JSON: the caller fails the attempt as a bad response
        if not isinstance(answer, dict):
            return raw
        missing = missing_output(answer)
        if missing is not None:
            raise NoOutput(f"Bedrock answered 200 with {missing}")
        return orjson.dumps(converse_answer(answer, self._plan))

    async def chunks(self) -> AsyncIterator[bytes]:
        decoder = FrameDecoder(self._max_message)
        rewrite = ConverseStreamToChat(self._plan)
        held = b""  # messageStart's role chunk, until the answer begins (rewrite.answered)
        async for data in self._inner.chunks():
            try:
                messages = decoder.feed(data)
            except FrameTooLarge as exc:  # reported like an oversized SSE event
                raise ResponseTooLarge(str(exc)) from None
            if rewrite.answered:
                out = b"".join(rewrite.feed(m) for m in messages)
            else:
                out, held = _opening(rewrite, messages, held)
                if not rewrite.answered:
                    continue
            if out:
                yield out
            if rewrite.done:
                return
        if decoder.pending or not rewrite.answered:
            # The body ended inside a message (cut, however complete it looked: in-band),
            # or before any answer (nothing was sent: the attempt fails as closed).
            return
        tail = rewrite.finish()
        if tail:
            yield tail

    def close(self) -> None:
        self._inner.close()

    def release(self) -> None:
        self._inner.release()


def _opening(rewrite: ConverseStreamToChat, messages: list[Message], held: bytes
             ) -> tuple[bytes, bytes]:
    """(bytes to send, bytes held) for ``messages`` read before the answer began.

    Until content, a stop or an exception comes, nothing goes out (messageStart's role
    chunk is held): so an exception frame then is the stream's first event, which fails
    over, and a stream that ends with no content and no stop fails (failover, or a 502)
    instead of a 200 with an empty answer. The held role chunk goes out before the
    answer, but not before an exception (it carries nothing: the error is the first).

    One role chunk is held, the first: before the answer only messageStart makes bytes,
    and an upstream repeating it had every copy held, joined one by one (100,000 of
    them, 10 MB, kept the loop busy for 110 s), then sent."""
    for i, message in enumerate(messages):
        piece = rewrite.feed(message)
        if rewrite.answered:
            if rewrite.error is not None:  # this message was the exception (done now)
                return piece, b""
            return held + piece + b"".join(rewrite.feed(m) for m in messages[i + 1:]), b""
        if rewrite.done:
            raise NoOutput("Bedrock streamed no content block and no stop reason")
        held = held or piece
    return b"", held


class NoOutput(UpstreamProtocolError):
    """A 200 from Bedrock without an answer in it (:func:`.converse.missing_output`): the
    attempt fails as ``bad_response`` and fails over, else the client gets a 502."""


class Refusal:
    """A 400 for a request Converse cannot express, answered without contacting AWS."""

    __slots__ = ("_body", "headers", "status")

    def __init__(self, err: BadRequest) -> None:
        self.status = err.status
        self.headers: Mapping[str, str] = _HUB_JSON
        self._body = error_body(err)

    def whole(self, limit: int) -> bytes | None:
        del limit
        return None  # read() it

    async def read(self, limit: int) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


@functools.lru_cache(maxsize=256)  # one entry per configured base_url
def _host(base_url: str) -> tuple[str, str]:
    """(Host header as aiohttp sends it, path prefix) of a base URL."""
    parts = urlsplit(base_url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").lower()
    if parts.port is not None and parts.port != default:
        host = f"{host}:{parts.port}"
    return host, parts.path.rstrip("/")


def model_path(prefix: str, model: str, stream: bool) -> str:
    """``/model/{modelId}/converse[-stream]`` with the id encoded as one segment (an ARN's
    ``:`` and ``/`` included), as the AWS SDKs encode a path label."""
    operation = "converse-stream" if stream else "converse"
    return f"{prefix}/model/{quote(model, safe='')}/{operation}"


async def send(session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
    """Translate the hub call to Converse, sign it, POST it; the answer reads as the hub's."""
    provider, key = call.provider, call.key
    model = str(call.parsed.get("model") or "")
    try:
        converse, plan = converse_request(call.parsed, model)
    except BadRequest as err:
        return Refusal(err)
    body = orjson.dumps(converse)
    host, prefix = _host(provider.base_url)
    path = model_path(prefix, model, call.stream)
    headers = {**provider.headers, **call.headers, "Content-Type": _JSON,
               "Accept": "application/vnd.amazon.eventstream" if call.stream else _JSON}
    if key.access_key_id:
        headers.update(sign_headers(
            method="POST", host=host, path=path, body=body, content_type=_JSON,
            credentials=Credentials(key.access_key_id, key.secret, key.session_token),
            region=provider.region, service=SERVICE, now=datetime.now(UTC)))
    else:
        headers["Authorization"] = f"Bearer {key.secret}"
    base = provider.base_url[:len(provider.base_url) - len(prefix)] if prefix \
        else provider.base_url
    sent = UpstreamCall(provider, key, path, body, converse, call.stream, call.headers)
    # encoded=True: the path goes out as signed (yarl would decode %3A to ':').
    inner = await post(session, sent, URL(base + path, encoded=True), headers)
    return BedrockResponse(inner, plan, call.stream, call.max_event)
