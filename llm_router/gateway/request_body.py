"""A client's request body, read within bounds: size, time and JSON nesting.

Every bound answers with an error the client can read, never a 500: 413 past
``max_body_bytes``; 408 when the body arrives slower than ``server.body_timeout_s``
plus its size at ``server.body_min_bytes_per_s`` (a ``Content-Length`` larger than what
is sent held connections for minutes); 400 ``invalid_body`` for a body whose
``Content-Encoding`` (gzip, deflate, br) does not decode (it was a 500 with a traceback in
the log); 400 ``invalid_json`` for anything orjson will not parse, or nested deeper than it
can write back (255 levels: such a body used to pass the parse and fail later as a 500).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, Final

import orjson
from aiohttp import web

from ..config import Config
from ..errors import BadRequest, PayloadTooLarge, RequestTimeout, echoed

__all__ = ["BODY_SIZE", "MAX_JSON_DEPTH", "buffered_body", "parse_json", "read_json"]

BODY_SIZE: Final = web.RequestKey("body_size", int)  # bytes read_json read
# Bodies from this size are parsed with the garbage collector paused (_loads_paused).
_GC_PAUSE_BYTES: Final = 64 << 10
MAX_JSON_DEPTH: Final = 254  # orjson.dumps refuses deeper; the body is re-encoded upstream


async def read_json(request: web.Request, cfg: Config) -> dict[str, Any]:
    """The request body as a JSON object, or the :class:`RouterError` that says why not."""
    raw = buffered_body(request, cfg)
    if raw is None:
        raw = await _read_slow(request, cfg)
    request[BODY_SIZE] = len(raw)  # a chunked body has no Content-Length to estimate from
    return parse_json(raw)


def buffered_body(request: web.Request, cfg: Config) -> bytes | None:
    """The whole body when it came with the headers (the usual case), taken from the
    buffer as is: nothing to wait for (read() would await two more reads for it), so no
    coroutine either; None when it is still arriving (then :func:`read_json`).
    413 past ``max_body_bytes`` by its ``Content-Length``, or by its size decoded (a
    gzip body of a few hundred bytes on the wire may be 100 KB in the buffer)."""
    length = request.content_length
    if length is None:
        return None
    if length > cfg.max_body_bytes:
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is "
                              f"{cfg.max_body_bytes}.")
    content = request.content
    if not content.is_eof():
        return None
    raw = content.read_nowait()
    if len(raw) > cfg.max_body_bytes:  # a Content-Encoding'd body, decoded
        raise PayloadTooLarge(f"Request body is {len(raw)} bytes decompressed; the limit is "
                              f"{cfg.max_body_bytes}.")
    return raw


def parse_json(raw: bytes) -> dict[str, Any]:
    """A body read whole, as a JSON object (the bounds of the module docstring)."""
    if not raw:
        raise BadRequest("Request body is empty; expected a JSON object.")
    try:
        if len(raw) < _GC_PAUSE_BYTES or not gc.isenabled():
            body = orjson.loads(raw)
        else:
            body = _loads_paused(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc.msg} at position {exc.pos}.",
                         code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.", code="invalid_json")
    # Nesting that deep needs that many brackets: count them (fast) before checking.
    if len(raw) > MAX_JSON_DEPTH and raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH \
            and _too_deep(body):
        raise BadRequest(f"Request body is nested deeper than {MAX_JSON_DEPTH} levels.",
                         code="invalid_json")
    return body


def _loads_paused(raw: bytes) -> Any:
    """``orjson.loads(raw)`` with the garbage collector paused until the event loop next
    turns: through this request's parse, checks and translation, which run without a
    pause in between.

    Each container orjson makes (and each one a translator makes from them) counts toward
    a collection, and CPython's full collections walk every object in the process: a body
    of many small objects (32 MiB of tool schemas) set off a dozen as it was parsed,
    checked and translated, more than the work itself, with the loop stalled all along.
    The collector finds nothing there to free (a parsed body holds no cycle), so it
    waits. The allocations still count: once the loop turns, the next one starts a young
    collection, as it would have, which walks the body once, and the generations take
    it on as any other objects.

    Not gc.freeze(): it moved every object alive (young cyclic garbage too) straight to
    the oldest generation, where only a full collection looks, without counting it
    toward one, and reset the count that starts collections. With a large body in every
    turn the collector never ran again, and garbage grew without bound.
    """
    gc.disable()
    try:
        return orjson.loads(raw)
    finally:
        try:
            asyncio.get_running_loop().call_soon(gc.enable)
        except RuntimeError:  # not on a loop: no stretch to wait for
            gc.enable()


def _too_deep(body: dict[str, Any]) -> bool:
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        return True
    return False


async def _read_slow(request: web.Request, cfg: Config) -> bytes:
    """A body still arriving: read until its end, ``max_body_bytes`` or the rate bound
    (``body_timeout_s`` of grace, then ``body_min_bytes_per_s`` of what came so far)."""
    max_bytes, server = cfg.max_body_bytes, cfg.server
    grace, rate = server.body_timeout_s, server.body_min_bytes_per_s
    chunks: list[bytes] = []
    size = 0
    start = asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout_at(start + grace) as bound:
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} "
                                          "bytes.")
                chunks.append(chunk)
                bound.reschedule(start + grace + size / rate)
    except web.RequestPayloadError:
        # aiohttp decodes a Content-Encoding as the body arrives; a body that does not
        # decode (not gzip at all, cut short, a zip bomb's garbage) fails the read.
        # The connection's parser stopped at the error: end the body here, or aiohttp's
        # wait for the rest of it after the answer meets the error again and logs it.
        request.content.feed_eof()
        encoding = request.headers.get("Content-Encoding", "")
        raise BadRequest(f"The request body could not be decoded as its Content-Encoding "
                         f"says ({echoed(encoding)}); send it uncompressed, or compressed "
                         "whole.", code="invalid_body") from None
    except TimeoutError:
        raise RequestTimeout(f"The request body came too slowly: {size} bytes in "
                             f"{asyncio.get_running_loop().time() - start:.0f} s (at least "
                             f"{rate} bytes/s are needed after {grace:g} s).") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
