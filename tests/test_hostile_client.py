"""A hostile client or a careless operator, over real sockets: what they send gets a clear
error in the route's shape (never a 500 or a traceback), and nothing they do puts a
secret in a log line."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from typing import Any

import orjson
import pytest

from .conftest import Router, StartRouter
from .helpers import AUTH, HELLO

_MOCK = {"providers": [{"name": "local", "type": "mock"}],
         "groups": [{"name": "g", "models": [{"provider": "local", "name": "m"}]}]}


async def _raw(router: Router, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``request`` as is; the answer's status and JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


def _post(path: str, body: bytes, encoding: str, connection: str = "keep-alive") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}"
            f"\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {connection}\r\n\r\n").encode() + body


async def test_a_request_body_that_does_not_decompress_is_a_400_not_a_500(
        start_router: StartRouter, caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(_MOCK)
    caplog.set_level(logging.DEBUG)
    chat = orjson.dumps({"model": "g", "messages": HELLO})
    cut_gzip = gzip.compress(chat)[:-12]  # a gzip stream cut short
    for path, body, encoding in (
            ("/v1/chat/completions", b"this is not gzip", "gzip"),
            ("/v1/chat/completions", b"this is not deflate", "deflate"),
            ("/v1/chat/completions", b"this is not brotli", "br"),
            ("/v1/chat/completions", cut_gzip + b"garbage after the cut", "gzip"),
            ("/v1/embeddings", b"\x1f\x8b but no more", "gzip"),
            ("/v1/messages", b"this is not gzip", "gzip")):
        status, doc = await _raw(router, _post(path, body, encoding))
        assert status == 400, (path, encoding, doc)
        if path == "/v1/messages":
            assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
        else:
            assert doc["error"]["code"] == "invalid_body", doc
        assert encoding in doc["error"]["message"]
        # (_raw reads to the end: the router closed the keep-alive connection, whose
        # parser stopped at the bad body.)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    # A body that does decompress is served.
    status, doc = await _raw(router, _post("/v1/chat/completions", zlib.compress(chat),
                                           "deflate", "close"))
    assert status == 200, doc


async def test_max_body_bytes_bounds_a_compressed_body_by_its_decompressed_size(
        start_router: StartRouter) -> None:
    router = await start_router({**_MOCK, "max_body_bytes": 4096})
    big = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "a" * 100_000}]})
    small = orjson.dumps({"model": "g", "messages": HELLO})
    for encoding, pack in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        body = pack(big)  # a few hundred bytes on the wire, 100 KB once decoded
        assert len(body) < 4096
        status, doc = await _raw(router, _post("/v1/chat/completions", body, encoding,
                                               "close"))
        assert status == 413, doc
        assert doc["error"]["code"] == "request_too_large"
        status, doc = await _raw(router, _post("/v1/chat/completions", pack(small), encoding,
                                               "close"))
        assert status == 200, doc
