"""The client's side of a streamed answer: committed late, kept alive, ended cleanly.

A stream is *committed* (status and headers sent) only when it must be: when the first
upstream event is ready, or when ``keepalive_s`` pass without a byte to the client while
the router waits — for the upstream's headers, its first event, or a cooling key. Until
then a failed attempt can still fail over or become an error status. After it, a failure
can only end the stream in-band (an error event in the client's dialect), never a status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Final

from aiohttp import web

from .compression import StreamEncoder
from .deadlines import Deadlines

if TYPE_CHECKING:
    from ..observe.exchange import Exchange

__all__ = ["KEEPALIVE", "Downstream", "Keepalive", "client_connected"]

KEEPALIVE = b": keepalive\n\n"  # an SSE comment: clients ignore it, idle timers reset

_SSE: Final = (("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
               ("X-Accel-Buffering", "no"))  # nginx: flush every event
# A stream's own headers by its coding: the response's header map is made from them in
# one call, not set one by one.
_STREAM_HEADERS: Final[dict[str | None, tuple[tuple[str, str], ...]]] = {
    None: _SSE, **{coding: (*_SSE, ("Content-Encoding", coding), ("Vary", "Accept-Encoding"))
                   for coding in ("br", "gzip", "deflate")}}


def client_connected(request: web.Request) -> bool:
    """Whether the client's connection is still open (not closed, not closing)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


class Downstream:
    """One request's client stream, created before the first attempt and shared by all."""

    __slots__ = ("_request", "coding", "deadlines", "encoder", "keepalive_s", "last_write",
                 "out")

    def __init__(self, request: web.Request, coding: str | None, keepalive_s: float,
                 deadlines: Deadlines | None = None) -> None:
        """``deadlines``: the wheel that times the first keepalive comment of a wait (the
        router's shared one; a new one if None)."""
        self._request = request
        self.coding = coding
        self.encoder = StreamEncoder(coding) if coding else None
        self.keepalive_s = keepalive_s  # 0 disables keepalive comments
        self.deadlines = deadlines if deadlines is not None or not keepalive_s else Deadlines()
        self.last_write = time.monotonic()
        self.out: web.StreamResponse | None = None

    @property
    def committed(self) -> bool:
        """Whether the status line went out: from here on nothing can be retried."""
        return self.out is not None

    async def commit(self, ex: Exchange, headers: Callable[[web.StreamResponse], None],
                     *, data_follows: bool = False) -> web.StreamResponse:
        """Send status 200 and the SSE headers (once); ``headers`` adds the router's own.
        ``data_follows``: the caller writes at once, and the status line and headers go
        out with those bytes, in one send on the socket instead of two."""
        if self.out is None:
            out = (_WithFirstWrite if data_follows else web.StreamResponse)(
                status=200, headers=_STREAM_HEADERS[self.coding])
            headers(out)
            ex.status = 200
            self.out = out
            self.last_write = time.monotonic()
            await out.prepare(self._request)
        return self.out

    async def open(self, ex: Exchange, items: list[tuple[str, str]], *,
                   data_follows: bool = False) -> web.StreamResponse:
        """:meth:`commit` with the router's own headers given as (name, value) pairs: the
        response's header map is made from all of them in one call."""
        if self.out is None:
            out = (_WithFirstWrite if data_follows else web.StreamResponse)(
                status=200, headers=[*_STREAM_HEADERS[self.coding], *items])
            ex.status = 200
            self.out = out
            self.last_write = time.monotonic()
            await out.prepare(self._request)
        return self.out

    @property
    def client_gone(self) -> bool:
        return not client_connected(self._request)

    async def write(self, ex: Exchange, data: bytes) -> None:
        """Send bytes (compressed and flushed per call when a coding was negotiated)."""
        assert self.out is not None
        if self.encoder is not None:
            data = self.encoder.encode(data)
        ex.bytes_out += len(data)
        self.last_write = time.monotonic()
        await self.out.write(data)

    async def finish(self, ex: Exchange, data: bytes = b"") -> None:
        """End the stream: ``data`` (the last events, if any), the encoder's tail and the
        chunked terminator, in one write (one send on the socket, not up to three)."""
        assert self.out is not None
        if self.encoder is not None:
            data = self.encoder.finish(data)  # no flush: finishing ends the block
        ex.bytes_out += len(data)
        if data:
            self.last_write = time.monotonic()
        await self.out.write_eof(data)

    def keepalive(self, ex: Exchange, headers: Callable[[web.StreamResponse], None]
                  ) -> Keepalive:
        """``async with``: while the body waits, send ``: keepalive`` whenever
        ``keepalive_s`` pass without a write, committing the stream at the first one.

        The body must not write itself; the comments stop before it returns.
        """
        return Keepalive(self, ex, headers)

    async def _beat(self, stop: asyncio.Event, ex: Exchange,
                    headers: Callable[[web.StreamResponse], None]) -> None:
        while not stop.is_set():
            delay = self.last_write + self.keepalive_s - time.monotonic()
            if delay > 0:
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                continue
            await self.commit(ex, headers, data_follows=True)
            await self.write(ex, KEEPALIVE)


class _WithFirstWrite(web.StreamResponse):
    """A stream response whose status line and headers wait for its first write and go
    out with it, as aiohttp's ``Response`` sends them with its body (the same class
    attribute). On loopback a send is several µs of the router's CPU. Were aiohttp to
    drop the attribute, the headers would again go out at ``prepare``, as before."""

    _send_headers_immediately = False


class Keepalive:
    """:meth:`Downstream.keepalive`. Most waits end long before the first comment is due,
    so entering only puts this on the shared wheel of :mod:`.deadlines` (a loop timer per
    wait cost more; the first comment may go out one tick late); the task that writes
    comments (and the Event that stops it) exist only once the wheel fires it. A class,
    not an ``asynccontextmanager``: a stream enters two of these, and the generator
    behind the decorator showed in profiles."""

    __slots__ = ("_beat", "_bucket", "_down", "_ex", "_headers", "_stop", "when")

    def __init__(self, down: Downstream, ex: Exchange,
                 headers: Callable[[web.StreamResponse], None]) -> None:
        self._down, self._ex, self._headers = down, ex, headers
        self._bucket = -1  # the wheel's
        self.when = 0.0
        self._stop: asyncio.Event | None = None
        self._beat: asyncio.Task[None] | None = None

    def delay(self) -> float | None:
        """Seconds until the first comment is due; None if they are off."""
        down = self._down
        if down.keepalive_s <= 0:
            return None
        return down.last_write + down.keepalive_s - time.monotonic()

    async def __aenter__(self) -> None:
        delay = self.delay()
        if delay is not None:
            deadlines = self._down.deadlines
            assert deadlines is not None
            self.when = asyncio.get_running_loop().time() + delay  # the wheel's clock
            deadlines.add(self)

    def fire(self) -> None:
        """The first comment is due: start the task that writes them."""
        self._stop = asyncio.Event()
        self._beat = beat = asyncio.create_task(
            self._down._beat(self._stop, self._ex, self._headers))
        # If the request is cancelled while waiting, the beat still ends by itself (stop
        # is set on exit); its outcome is collected here so nothing is left unretrieved.
        beat.add_done_callback(_collect)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bucket >= 0:
            deadlines = self._down.deadlines
            assert deadlines is not None
            deadlines.discard(self)
        if self._beat is not None:
            await self.stop()

    @property
    def beating(self) -> bool:
        """Whether comments started (:meth:`fire`): :meth:`stop` them after the wait."""
        return self._beat is not None

    async def stop(self) -> None:
        """End the comments started by :meth:`fire` (when the wait did not use ``async
        with``: the stream's first event, whose watchdog fires this)."""
        assert self._stop is not None and self._beat is not None
        self._stop.set()
        # Let a comment being written finish rather than cut it in half. A client that
        # went away is noticed by the next write of the request itself.
        with suppress(ConnectionError):
            await self._beat


def _collect(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
