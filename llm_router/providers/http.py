"""The HTTP transport shared by every network provider type, and their base class.

:class:`HTTPProvider` sends a call in four steps a type overrides as it needs: the URL,
the fixed headers, an async ``authorize`` (a fetched, cached token) and ``sign`` (over
the final body bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final, TypeVar

import aiohttp
import orjson
from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..config import Provider
from .base import ProviderType, ResponseTooLarge, UpstreamCall

__all__ = ["HTTPProvider", "HTTPResponse", "fixed_headers", "get_json", "post"]

# What every request to one provider (and key) sends the same is built once, not per
# request: profiles of the request path showed the dicts and the ClientTimeout. Entries
# are keyed by object identity and hold the objects, so an id cannot be reused while
# cached; a config swap brings new Provider objects, and the old entries, never looked
# up again, go when the cache outgrows any real config and is emptied.
_MAX_CACHED: Final = 1024
_T = TypeVar("_T")
_TIMEOUTS: dict[tuple[int, ...], tuple[tuple[object, ...], aiohttp.ClientTimeout]] = {}
_HEADERS: dict[tuple[int, ...], tuple[tuple[object, ...], CIMultiDictProxy[str]]] = {}


def _per_objects(cache: dict[tuple[int, ...], tuple[tuple[object, ...], _T]],
                 ident: tuple[int, ...], owners: tuple[object, ...],
                 build: Callable[[], _T]) -> _T:
    """``build()``, made once per ``ident`` (the ids of ``owners``, plus any flag). The
    entry holds the owners, so none of those ids can be reused while it is cached."""
    hit = cache.get(ident)
    if hit is not None:
        return hit[1]
    if len(cache) >= _MAX_CACHED:
        cache.clear()
    value = build()
    cache[ident] = (owners, value)
    return value


class HTTPResponse:
    """An upstream answer read lazily; ``chunks`` yields bytes as the socket delivers them."""

    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self, limit: int) -> bytes:
        # A declared length says it at once; without one (chunked, or compressed, whose
        # decoded size only reading tells) the bytes are counted as they come.
        resp = self._resp
        declared = resp.content_length
        if declared is not None and declared > limit and "Content-Encoding" not in resp.headers:
            raise ResponseTooLarge(f"an answer of {declared} bytes, over the limit of {limit}")
        parts: list[bytes] = []
        size = 0
        content = resp.content
        while data := await content.readany():
            size += len(data)
            if size > limit:
                raise ResponseTooLarge(f"an answer larger than the limit of {limit} bytes")
            parts.append(data)
            if content.at_eof():  # the whole body came: no read only to learn it ended
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def whole(self, limit: int) -> bytes | None:
        # A small answer usually comes in the same reads as its headers: then it is all
        # in the buffer already, and reading it needs no wait (nor a deadline).
        content = self._resp.content
        if not content.is_eof() or content.exception() is not None:
            return None
        data = content.read_nowait()
        if len(data) > limit:
            raise ResponseTooLarge(f"an answer larger than the limit of {limit} bytes")
        return data

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self._resp.content)

    def close(self) -> None:
        # aiohttp's release() would drain a stream we no longer want; close() drops the
        # connection.
        if not self._resp.closed:
            self._resp.close()

    def release(self) -> None:
        resp = self._resp
        if resp.closed:
            return  # its EOF came already: the connection went back to the pool
        task = asyncio.get_running_loop().create_task(_await_eof(resp))
        _RELEASING.add(task)
        task.add_done_callback(_RELEASING.discard)


# Answers whose EOF is awaited after the client's response ended (HTTPResponse.release):
# held here so the tasks are not collected mid-wait.
_RELEASING: set[asyncio.Task[None]] = set()
_RELEASE_WAIT_S: Final = 1.0
_RELEASE_MAX_BYTES: Final = 64 * 1024


async def _await_eof(resp: aiohttp.ClientResponse) -> None:
    """Read what follows an answer's terminal event (a chunked terminator, a stray
    newline) so its connection returns to the pool; past a second or 64 KiB, close it."""
    try:
        async with asyncio.timeout(_RELEASE_WAIT_S):
            left = _RELEASE_MAX_BYTES
            while left > 0 and (data := await resp.content.readany()):
                left -= len(data)
    except (aiohttp.ClientError, TimeoutError):
        pass  # closed below, as close() would have
    finally:
        if not resp.closed:
            resp.close()


class _Chunks:
    """:meth:`HTTPResponse.chunks`: each read's bytes, until the end of the answer. A
    class, not an async generator: the event loop tracks every async generator a stream
    starts (a weak set, a finalizer), which showed in stream profiles."""

    __slots__ = ("_content", "_error")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._error: aiohttp.ClientError | None = None

    def __aiter__(self) -> _Chunks:
        return self

    def ready(self) -> bytes:
        """The bytes that arrived and were not read yet, without a wait: b"" if none did,
        or if the answer failed (the next :meth:`__anext__` then reports it as it would
        have: aiohttp keeps the error, and the bytes that came before it)."""
        try:
            return self._content.read_nowait() if self._error is None else b""
        except Exception:  # any error aiohttp set: for __anext__ to report
            return b""

    async def __anext__(self) -> bytes:
        if self._error is not None:
            raise self._error
        content = self._content
        try:
            data = await content.readany()
        except aiohttp.ClientError as exc:
            # aiohttp raises a lost connection before handing over bytes that arrived
            # ahead of it (aio-libs/aiohttp#3026): pass those on first, so a cut stream
            # keeps every event the upstream did send, however the reads were timed.
            rest = _buffered(content)
            if not rest:
                raise
            self._error = exc
            return rest
        if not data:
            raise StopAsyncIteration
        return data


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


def fixed_headers(call: UpstreamCall,
                  build: Callable[[UpstreamCall], Mapping[str, str]]) -> Mapping[str, str]:
    """``build(call)``, made once per (provider, key, stream): for headers that depend on
    nothing else. The result is read-only, since every request shares it."""
    ident = (id(call.provider), id(call.key), call.stream)
    hit = _HEADERS.get(ident)
    if hit is not None:  # the usual call: no closure made to build what is there
        return hit[1]
    return _per_objects(_HEADERS, ident, (call.provider, call.key),
                        lambda: CIMultiDictProxy(CIMultiDict(build(call))))


def _timeout(provider: Provider) -> aiohttp.ClientTimeout:
    # Connecting is bounded here; the wait for headers and the body are bounded by the
    # caller (first_byte, idle, total), which knows when a stream is waiting on whom.
    hit = _TIMEOUTS.get((id(provider),))
    if hit is not None:  # the entry holds the provider: its id is not reused meanwhile
        return hit[1]
    return _per_objects(_TIMEOUTS, (id(provider),), (provider,), lambda: aiohttp.ClientTimeout(
        total=None, sock_connect=provider.timeouts.connect, sock_read=None))


# aiohttp 3's ClientSession.post() only wraps _request() in a context manager (a
# typing.Generic coroutine) and passes its keyword arguments on a second time: about
# 10k instructions of a chat request's ~950k. Where that is what it does, the request
# path awaits _request() itself, with the same arguments; elsewhere, post().
_DIRECT_POST: Final = aiohttp.__version__.startswith("3.") and hasattr(
    aiohttp.ClientSession, "_request")


async def post(session: aiohttp.ClientSession, call: UpstreamCall, url: str | URL,
               headers: Mapping[str, str]) -> HTTPResponse:
    """POST the call's body; returns once the upstream's status line and headers arrive.
    A ``URL`` built with ``encoded=True`` goes out exactly as given (a string is
    normalised, which decodes ``%3A`` in a path)."""
    return HTTPResponse(await _posting(session, url, call.body, headers,
                                       _timeout(call.provider)))


def _posting(session: aiohttp.ClientSession, url: str | URL, body: bytes,
             headers: Mapping[str, str], timeout: aiohttp.ClientTimeout
             ) -> Awaitable[aiohttp.ClientResponse]:
    """The POST to await, with no redirect followed. No auto_decompress: every session
    here is the proxy's (server/app.py), which decompresses, and each keyword argument
    costs a few hundred instructions."""
    if _DIRECT_POST:
        return session._request(hdrs.METH_POST, url, data=body, headers=headers,
                                timeout=timeout, allow_redirects=False)
    return session.post(url, data=body, headers=headers, timeout=timeout,
                        allow_redirects=False)


async def get_json(session: aiohttp.ClientSession, provider: Provider, url: str,
                   headers: Mapping[str, str], limit: int = 4 * 1024 * 1024) -> object:
    """GET a JSON document (a model list): bounded in size and by the provider's
    ``total`` timeout; aiohttp errors and TimeoutError propagate."""
    async with asyncio.timeout(provider.timeouts.total):
        async with session.get(url, headers=headers, timeout=_timeout(provider),
                               allow_redirects=False) as resp:
            resp.raise_for_status()
            body = await HTTPResponse(resp).read(limit)
    return orjson.loads(body)


class HTTPProvider(ProviderType):
    """A provider type reached over HTTP: ``send`` = url, headers, authorize, sign, POST."""

    # Whether a subclass overrides authorize / sign: one that does not is sent without
    # awaiting a coroutine or calling a method that would return the headers unchanged.
    _authorizes: bool = False
    _signs: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._authorizes = cls.authorize is not HTTPProvider.authorize
        cls._signs = cls.sign is not HTTPProvider.sign

    def url(self, call: UpstreamCall) -> str:
        """Where the call goes (from ``call.path``, ``call.model``, ``call.stream``)."""
        raise NotImplementedError

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        """The request's headers before auth that is fetched or signed."""
        raise NotImplementedError

    async def authorize(self, session: aiohttp.ClientSession, call: UpstreamCall,
                        headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` with a fetched credential added (default: unchanged)."""
        del session, call
        return headers

    def sign(self, call: UpstreamCall, url: str,
             headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` with a signature over ``call.body`` added (default: unchanged)."""
        del call, url
        return headers

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> HTTPResponse:
        url = self.url(call)
        headers = self.headers(call)
        if self._authorizes:
            headers = await self.authorize(session, call, headers)
        if self._signs:
            headers = self.sign(call, url, headers)
        # post(), inline: one coroutine less on the request's every resumption.
        provider = call.provider
        hit = _TIMEOUTS.get((id(provider),))
        return HTTPResponse(await _posting(
            session, url, call.body, headers,
            hit[1] if hit is not None else _timeout(provider)))
