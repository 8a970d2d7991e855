"""Response compression: br, gzip or deflate, with a flush after every SSE event.

The codecs are the ``brotli`` package and the standard library's ``zlib``; this module
only negotiates ``Accept-Encoding`` and flushes each write so a compressed stream still
reaches the client event by event.
"""

from __future__ import annotations

import zlib
from typing import Final

import brotli
from aiohttp import hdrs, web

__all__ = ["MIN_COMPRESS_BYTES", "StreamEncoder", "compress_body", "compress_whole_answer",
           "negotiate"]

# Below this a compressed JSON body is rarely smaller enough to be worth the CPU.
MIN_COMPRESS_BYTES: Final = 512
_PREFERENCE: Final = ("br", "gzip", "deflate")


# Accept-Encoding values seen -> their coding: a client sends the same value on every
# request, and parsing it was ~2 % of a chat request's CPU (bench/profiles-issue27.md).
# Bounded: past this many distinct values, new ones are parsed each time, not kept.
_NEGOTIATED: dict[str, str | None] = {}
_MAX_NEGOTIATED: Final = 256


def negotiate(accept_encoding: str | None) -> str | None:
    """The coding to use for a client's ``Accept-Encoding``: br, gzip, deflate or None."""
    if not accept_encoding:
        return None
    try:
        return _NEGOTIATED[accept_encoding]
    except KeyError:
        pass
    best = _negotiate(accept_encoding)
    if len(_NEGOTIATED) < _MAX_NEGOTIATED:
        _NEGOTIATED[accept_encoding] = best
    return best


def _negotiate(accept_encoding: str) -> str | None:
    quality: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        quality[name.strip()] = q
    star = quality.get("*")
    best: str | None = None
    best_q = 0.0
    for coding in _PREFERENCE:
        q = quality.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    return best


class StreamEncoder:
    """Compresses a stream piecewise; every :meth:`encode` output is decodable at once.

    The codec's state is made at the first :meth:`encode`: a stream whose events all go
    out with its end (a whole answer in one upstream read, a cached answer replayed) is
    compressed by :meth:`finish` in one block instead, without a streaming encoder.
    """

    __slots__ = ("_br", "_coding", "_z")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._br: brotli.Compressor | None = None
        self._z: zlib._Compress | None = None

    def _start(self) -> None:
        if self._coding == "br":
            # Measured with brotli 1.2.1 on a realistic chat stream (bench/sse_compression.py,
            # README "Compression"): quality 2 costs 1.4 µs a flushed ~280-byte event and
            # sends 25 bytes (11x); quality 3 sends 16 (18x) for 4.6 µs, and a burst of 20
            # events costs 17 µs against 25. Quality 1 keeps no context across flushes
            # (244 bytes an event). Both set up a 256 KB hash table per stream; lgwin 16
            # (a 64 KB window, which SSE chunks repeating their neighbours never outgrow)
            # bounds the ring buffer a long stream holds.
            self._br = brotli.Compressor(quality=2, lgwin=16)
        else:
            self._z = zlib.compressobj(6, zlib.DEFLATED, 31 if self._coding == "gzip" else 15)

    def encode(self, data: bytes) -> bytes:
        br = self._br
        if br is not None:
            return bytes(br.process(data)) + bytes(br.flush())
        if self._z is None:
            self._start()
            return self.encode(data)
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes = b"") -> bytes:
        """``data`` (the last events, if any) and the end of the compressed stream."""
        br = self._br
        if br is not None:
            if data:
                return bytes(br.process(data)) + bytes(br.finish())
            return bytes(br.finish())
        z = self._z
        if z is None:
            if self._coding == "br":
                # The whole stream in one block: within one block quality 1 finds the
                # repeats quality 2 does (a 20-event burst: 13.5x for 10 µs, against
                # 13.9x for 17 µs), and sets up no 256 KB table.
                # (brotli.compress does this, one Python call more.)
                one = brotli.Compressor(quality=1, lgwin=16)
                return bytes(one.process(data) + one.finish())
            self._start()
            z = self._z
            assert z is not None
        if data:
            return z.compress(data) + z.flush(zlib.Z_FINISH)
        return z.flush(zlib.Z_FINISH)


def compress_body(coding: str, data: bytes) -> bytes:
    """A whole response body in one go."""
    if coding == "br":
        # Quality 3: on JSON answers of 0.7 to 17 KB it took 55 to 75 %
        # of quality 4's CPU (15 against 28 µs at 0.7 KB, 138 against 252 at 17 KB,
        # brotli 1.2) for 0.5 to 2.5 % more bytes (7 % on a 1 KB Responses object).
        return bytes(brotli.compress(data, quality=3))
    if coding == "gzip":
        z = zlib.compressobj(6, zlib.DEFLATED, 31)
        return z.compress(data) + z.flush()
    return zlib.compress(data, 6)


def compress_whole_answer(request: web.Request, resp: web.StreamResponse) -> None:
    """Compress a whole, not yet sent answer the client accepts compressed: /metrics, the
    status page and the usage reports (model answers and streams compress themselves).
    Called by the edge middleware on what a handler returned (server/app.py)."""
    if type(resp) is not web.Response:
        return
    body = resp.body  # its size first: a small answer (the usual one) costs one read
    if isinstance(body, bytes) and len(body) >= MIN_COMPRESS_BYTES and not resp.prepared \
            and hdrs.CONTENT_ENCODING not in resp.headers:
        coding = negotiate(request.headers.get(hdrs.ACCEPT_ENCODING))
        if coding is not None:
            resp.body = compress_body(coding, body)
            resp.headers[hdrs.CONTENT_ENCODING] = coding
            resp.headers.add(hdrs.VARY, hdrs.ACCEPT_ENCODING)
