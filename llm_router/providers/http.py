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
            data = await content.readany()
            if not data:
                return
            yield data

    def close(self) -> None:
        # release() would drain a stream we no longer want; close() drops the connection.
        if not self._resp.closed:
            self._resp.close()


async def post(session: aiohttp.ClientSession, call: UpstreamCall, url: str,
               headers: Mapping[str, str]) -> HTTPResponse:
    """POST the call's body; returns once the upstream's status line and headers arrive."""
    t = call.provider.timeouts
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=None)
    resp = await session.post(url, data=call.body, headers=headers, timeout=timeout,
                              allow_redirects=False, auto_decompress=True)
    return HTTPResponse(resp)
