"""One exchange with a Gemini ``generateContent`` endpoint, seen by the router as an
OpenAI-compatible answer.

The router speaks the hub (OpenAI chat) to every provider of this shape: :func:`exchange`
translates the call's hub body into the Gemini request (:mod:`.request`), posts it to
the URL its caller chose (the Gemini API or Vertex AI: only the address and the
credentials differ), and returns an :class:`~llm_router.providers.UpstreamResponse`
whose status, headers, body and stream are already the hub's: a whole answer reads as a
``chat.completion``, a stream as ``chat.completion.chunk`` events ending in
``[DONE]``, an error as an OpenAI error body with ``Retry-After`` from Google's
``retryDelay``. So failover, cooldowns, accounting and every inbound dialect work on it
unchanged. A request Gemini cannot take (:class:`.request.Refused`) is answered 400
here, without a network round trip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from ...hub.sse import DONE, EventTooLarge, SSEParser, event_fields, frame, json_object
from .. import ResponseTooLarge, UpstreamCall, UpstreamProtocolError, UpstreamResponse
from ..http import HTTPResponse, post
from .answer import StreamToChat, chat_completion, has_answer
from .embed import embeddings_answer, embeddings_request
from .errors import google_error
from .request import Refused, generate_request

__all__ = ["ReadyResponse", "TranslatedResponse", "exchange", "model_path", "refusal"]

# An error answer is read before the router sees it (a bad key's 400 must read as 401);
# Google's are a few hundred bytes, and the rest of a larger one is not needed.
_MAX_ERROR_BYTES: Final = 64 * 1024
_JSON: Final = "application/json"
_SSE: Final = MappingProxyType({"Content-Type": "text/event-stream"})
_JSON_TYPE: Final = MappingProxyType({"Content-Type": _JSON})


class ReadyResponse:
    """An answer already complete in memory: a refusal or a translated error."""

    __slots__ = ("_body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self._body = body
        self.headers = headers

    def whole(self, limit: int) -> bytes | None:
        del limit
        return None  # read() it

    async def read(self, limit: int) -> bytes:
        return self._body[:limit]

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        self._body = b""

    def release(self) -> None:
        self._body = b""


def refusal(message: str, param: str | None) -> ReadyResponse:
    """A 400 the client gets as the upstream's answer (not retried elsewhere: every
    member of this provider type would refuse it alike)."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": "unsupported_by_provider"}}
    return ReadyResponse(400, orjson.dumps(body), {"Content-Type": _JSON})


class TranslatedResponse:
    """A 2xx Gemini answer, read as the hub's: see the module docstring."""

    __slots__ = ("_chat", "_embed", "_max_event", "_resp", "_stream", "headers", "model",
                 "status")

    def __init__(self, resp: HTTPResponse, model: str, stream: bool,
                 embed: tuple[Any, int] | None = None, max_event: int = 64 * 1024 * 1024
                 ) -> None:
        self._resp = resp
        self.model = model
        self._stream = stream
        # upstream_limits.max_event_bytes, for Gemini's own events: one is refused as
        # it grows past it, not buffered whole first.
        self._max_event = max_event
        self._embed = embed  # (encoding_format, estimated tokens) for embeddings
        self._chat: StreamToChat | None = None  # the stream's translation, once read
        self.status = resp.status
        # Only the type: the body the router reads is not Google's (its length and
        # encoding are not this one's), and Google sends no rate-limit headers to keep.
        kind = resp.headers.get("Content-Type", "")
        self.headers: Mapping[str, str] = _SSE if stream and "event-stream" in kind \
            else _JSON_TYPE

    def whole(self, limit: int) -> bytes | None:
        del limit
        return None  # read() it

    async def read(self, limit: int) -> bytes:
        raw = await self._resp.read(limit)
        doc = json_object(raw)
        if doc is None:
            return b""  # not a JSON object: the router fails the attempt as bad_response
        if self._embed is not None:
            try:
                answer = embeddings_answer(doc, self.model, *self._embed)
            except ValueError:
                return b""
            return orjson.dumps(answer)
        if not has_answer(doc):
            raise UpstreamProtocolError("Gemini answered 200 with no candidate and no "
                                        "blockReason")
        return orjson.dumps(chat_completion(doc, self.model))

    async def chunks(self) -> AsyncIterator[bytes]:
        parser = SSEParser(self._max_event)
        chat = self._chat = StreamToChat(self.model)
        try:
            async for data in self._resp.chunks():
                out = _translate(chat, parser.feed(data))
                if out:
                    yield out
                if chat.error is not None:
                    return  # an error event ends the stream, whatever follows it
            tail = parser.tail()
            out = _translate(chat, [tail] if tail.strip() else [])
        except EventTooLarge as exc:
            raise ResponseTooLarge(str(exc)) from None
        end = chat.finish()
        if end:
            out += _frames(end) + DONE
        elif chat.error is None:
            out += _frames(chat.unfinished())  # ended without a finishReason: cut short
        if out:
            yield out

    def unfinished(self) -> bytes:
        """After the stream broke (cut, timed out, an event too large) or its reader left:
        the usage chunk of the running usage Gemini reported so far
        (:meth:`StreamToChat.unfinished`), for the relay to count it rather than an
        estimate; b"" if there is none to give, or it was given already."""
        chat = self._chat
        return _frames(chat.unfinished()) if chat is not None else b""

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


def _frames(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(frame(orjson.dumps(chunk)) for chunk in chunks)


def _translate(chat: StreamToChat, events: list[bytes]) -> bytes:
    frames: list[bytes] = []
    for event in events:
        if chat.error is not None:
            break
        doc = json_object(event_fields(event)[1])
        if doc is not None:
            frames.extend(frame(orjson.dumps(chunk)) for chunk in chat.feed(doc))
    return b"".join(frames)


async def exchange(session: aiohttp.ClientSession, call: UpstreamCall, model_url: str,
                   headers: Mapping[str, str]) -> UpstreamResponse:
    """Send the hub call to the Gemini model at ``model_url`` (…/models/{model}, to
    which the method is appended) with ``headers`` (auth included)."""
    model = str(call.parsed.get("model") or "")
    embed: tuple[Any, int] | None = None
    try:
        if call.path == "embeddings":
            body, tokens = embeddings_request(call.parsed, model)
            embed = (call.parsed.get("encoding_format"), tokens)
            url = f"{model_url}:batchEmbedContents"
        elif call.path == "chat/completions":
            body = generate_request(call.parsed)
            url = f"{model_url}:streamGenerateContent?alt=sse" if call.stream \
                else f"{model_url}:generateContent"
        else:
            return refusal(f"Gemini providers do not serve /v1/{call.path}.", None)
    except Refused as refused:
        return refusal(str(refused), refused.param)
    wire = dataclasses.replace(call, body=orjson.dumps(body))
    resp = await post(session, wire, url, headers)
    if resp.status >= 400:
        try:
            raw = await resp.read(_MAX_ERROR_BYTES)
        except ResponseTooLarge:
            raw = b""
        finally:
            resp.close()
        err = google_error(resp.status, raw)
        out: dict[str, str] = {"Content-Type": _JSON}
        if err.retry_after_s is not None:
            out["Retry-After"] = f"{err.retry_after_s:g}"
        elif "Retry-After" in resp.headers:
            out["Retry-After"] = resp.headers["Retry-After"]
        return ReadyResponse(err.status, orjson.dumps(err.body), out)
    return TranslatedResponse(resp, model, call.stream, embed, call.max_event)


def model_path(model: str) -> str:
    """A model id as one URL path segment."""
    return quote(model, safe="@.-_")
