"""The HTTP transport shared by every network provider type (openai, anthropic)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp

from . import UpstreamCall

__all__ = ["HTTPResponse", "post"]


class HTTPResponse:
    """An upstream answer read lazily; ``chunks`` yields bytes as the socket delivers them."""

    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        return await self._resp.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        while True:
            try:
                data = await content.readany()
            except aiohttp.ClientError:
                # aiohttp raises a lost connection before handing over bytes that arrived
                # ahead of it (aio-libs/aiohttp#3026): pass those on first, so a cut stream
                # keeps every event the upstream did send, however the reads were timed.
                rest = _buffered(content)
                if rest:
                    yield rest
                raise
            if not data:
                return
            yield data

    def close(self) -> None:
        # release() would drain a stream we no longer want; close() drops the connection.
        if not self._resp.closed:
            self._resp.close()


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """Bytes received but not yet read; the public read methods raise a pending error
    first. Private aiohttp API, so a version without it just loses the tail, as before."""
    read_nowait = getattr(content, "_read_nowait", None)
    if read_nowait is None:
        return b""
    try:
        data = read_nowait(-1)
    except (TypeError, ValueError):  # an internal API that changed shape: as before
        return b""
    return data if isinstance(data, bytes) else b""


async def post(session: aiohttp.ClientSession, call: UpstreamCall, url: str,
               headers: Mapping[str, str]) -> HTTPResponse:
    """POST the call's body; returns once the upstream's status line and headers arrive."""
    t = call.provider.timeouts
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=None)
    resp = await session.post(url, data=call.body, headers=headers, timeout=timeout,
                              allow_redirects=False, auto_decompress=True)
    return HTTPResponse(resp)
