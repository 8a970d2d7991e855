"""Client connections under limits: header timeout, a connection cap with a reserve for
probes, idle connections closed first, and oversized headers answered in JSON.

aiohttp bounds some of this itself and is configured for it (``server_handler_args``):
the keep-alive idle close, the size of one header line and the number of headers. What
it lacks is here, in a protocol subclass whose ``begin`` and ``end`` the edge
(server/app.py) calls around each request:

* **Header timeout.** A connection must complete its request line and headers within
  ``server.header_timeout_s`` of opening, or of the first byte of its next request.
  Slowloris connections sat open for minutes; one sweep per second closes them.
* **Connection cap.** ``server.max_connections`` counts open client connections. At the
  cap, a new connection closes the longest-idle one (no request running: waiting for
  headers, or kept alive), as nginx reuses keep-alive connections when it runs out; so
  idle sockets, however many, cannot starve clients with work to do. With none idle, up
  to ``server.reserve_connections`` more are admitted for ``/health``, ``/health/live``,
  ``/health/ready`` and ``/metrics`` only (others get 503); past that a connection gets
  a canned 503 and is closed at once. The cap is lowered to fit the open-file limit, so
  the process never reaches EMFILE, where asyncio stops accepting for everyone.
* **Header size.** A header block past ``server.max_header_bytes``, or more than
  ``server.max_headers`` headers, gets a JSON 431 (aiohttp answered plain-text 400);
  other unparsable requests a JSON 400, logged at debug level only (scanners send them).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from functools import partial
from itertools import chain
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from ..config import ServerSettings
from ..errors import BadRequest, HeadersTooLarge, RouterError, Unavailable, error_body

__all__ = ["RESERVE_PATHS", "ConnectionGuard", "GuardedProtocol", "GuardedRunner",
           "connection_limits", "server_handler_args"]

log = logging.getLogger("llm_router")

RESERVE_PATHS: Final = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})
_FDS_KEPT: Final = 128  # files, the listening socket, logs, redis …
_WARN_EVERY_S: Final = 60.0
_REFUSAL: Final = error_body(Unavailable(
    "The router is at its connection limit; retry shortly.", code="too_many_connections"))
_REFUSED: Final = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                   b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                   + str(len(_REFUSAL)).encode() + b"\r\n\r\n" + _REFUSAL)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_handler_args(server: ServerSettings) -> dict[str, Any]:
    """aiohttp's own per-connection bounds, from the config."""
    return {
        "keepalive_timeout": server.keepalive_timeout_s,
        "max_headers": server.max_headers,
        # One header may use the whole block; the block's total is checked per request.
        "max_field_size": server.max_header_bytes,
        # After a refused request (413, 408) read on at most this long before closing,
        # so the client sees the answer; aiohttp's default is 10 s.
        "lingering_time": 2.0,
    }


def connection_limits(configured: int) -> int:
    """``configured`` lowered to what the open-file limit allows, after raising the soft
    limit to the hard one (Go does the same at start). A proxied request holds two
    descriptors, the client's and the upstream's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return configured
    fits = max(64, (soft - _FDS_KEPT) // 2)
    if fits < configured:
        # Said at warning level only when the operator asked for more than the default.
        level = logging.WARNING if configured > ServerSettings().max_connections else \
            logging.DEBUG
        log.log(level, "server.max_connections lowered from %d to %d to fit the open-file "
                "limit (%d); raise it (ulimit -n) to allow more", configured, fits, soft)
    return min(configured, fits)


class ConnectionGuard:
    """The open client connections of one server, and the limits they live under."""

    __slots__ = ("_idle", "_loop", "_sweep", "_warned", "count", "header_timeout",
                 "max_connections", "reserve", "server")

    def __init__(self, server: ServerSettings) -> None:
        self.server = server
        self.max_connections = connection_limits(server.max_connections)
        self.reserve = server.reserve_connections
        self.header_timeout = server.header_timeout_s
        self.count = 0  # open connections, the reserve's included
        # Connections with no request running, oldest idle first (dicts keep order).
        self._idle: dict[GuardedProtocol, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._warned = 0.0

    def admit(self, proto: GuardedProtocol) -> bool:
        """Count a new connection; False means refuse it."""
        if self.count >= self.max_connections:
            if self._idle:
                oldest = next(iter(self._idle))
                self._forget(oldest)
                oldest.force_close()  # idle: no request is cut
                self._warn("at server.max_connections (%d): closing the longest-idle "
                           "connection for each new one", self.max_connections)
            elif self.count >= self.max_connections + self.reserve:
                self._warn("at server.max_connections (%d) plus the reserve (%d), every "
                           "connection busy: refusing new ones with 503",
                           self.max_connections, self.reserve)
                return False
            else:
                proto.reserve = True
        self.count += 1
        proto.counted = True
        self._idle[proto] = None
        if self._sweep is None:
            self._loop = asyncio.get_running_loop()
            self._sweep = self._loop.call_later(self._period(), self._sweep_slow)
        return True

    def closed(self, proto: GuardedProtocol) -> None:
        if proto.counted:
            self._forget(proto)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _forget(self, proto: GuardedProtocol) -> None:
        proto.counted = False
        self.count -= 1
        self._idle.pop(proto, None)

    def _period(self) -> float:
        return min(1.0, self.header_timeout / 2)

    def _sweep_slow(self) -> None:
        """Close connections whose request headers are overdue."""
        assert self._loop is not None
        late = self._loop.time() - self.header_timeout
        slow = [p for p in self._idle if 0.0 < p.headers_since < late]
        for proto in slow:
            self._forget(proto)
            proto.force_close()
        self._sweep = self._loop.call_later(self._period(), self._sweep_slow) \
            if self.count else None

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning(message, *args)


class GuardedProtocol(web.RequestHandler):
    """aiohttp's connection handler, counted by a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "busy", "counted", "headers_since", "reserve")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self.busy = False  # a request is being handled
        self.counted = False
        self.reserve = False  # admitted past the cap: probes and scrapes only
        self.headers_since = 0.0  # loop time the awaited request began; 0 = none awaited

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.admit(self):
            cast(asyncio.Transport, transport).write(_REFUSED)
            self.force_close()
            return
        self.headers_since = self._loop.time()

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self.headers_since:
            self.headers_since = self._loop.time()  # the next request's first bytes
        _DATA_RECEIVED(self, data)  # super().data_received, without making a super object

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.closed(self)
        super().connection_lost(exc)

    def begin(self, request: web.Request) -> web.Response | None:
        """A request starts on this connection: it is busy until :meth:`end`. The answer
        when the request is refused (a reserve connection off the probe paths, a header
        block too large), else None. Called first by the edge (server/app.py)."""
        self.busy = True
        self.headers_since = 0.0
        guard = self._guard
        guard._idle.pop(self, None)
        refusal: RouterError
        if self.reserve and request.path not in RESERVE_PATHS:
            refusal = Unavailable("The router is at its connection limit; retry shortly.",
                                  code="too_many_connections", retry_after=1.0)
        else:
            # aiohttp bounds each header (max_field_size) and their count; the block's
            # total is only known here. Summed by C builtins: a generator over the pairs
            # was ~1.5 % of a chat request's CPU.
            raw = request.raw_headers
            limit = guard.server.max_header_bytes
            if sum(map(len, chain.from_iterable(raw))) + 4 * len(raw) <= limit:
                return None
            refusal = HeadersTooLarge(f"Request headers total more than {limit} bytes.")
        resp = web.Response(status=refusal.status, content_type="application/json",
                            body=error_body(refusal, anthropic=request.path.startswith(
                                "/v1/messages")), headers=refusal.headers())
        resp.force_close()
        return resp

    def end(self) -> None:
        """The request of :meth:`begin` is over: the connection is idle again."""
        self.busy = False
        if self.counted:
            self._guard._idle[self] = None

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse, answered in JSON (never a traceback); and
        a handler's escaped error, which past the middlewares is only ever the client's
        connection going away: debug level, where aiohttp logged an ERROR traceback."""
        if isinstance(exc, ConnectionError):
            log.debug("client %s went away: %s", request.remote, exc)
        elif status == 500:
            log.error("unhandled error serving %s", request.path, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; nothing more can be sent")
        err: RouterError
        if isinstance(exc, LineTooLong) or (message or "").startswith("Too many headers"):
            err = HeadersTooLarge(f"Request headers too large: at most "
                                  f"{self._guard.server.max_headers} headers and "
                                  f"{self._guard.server.max_header_bytes} bytes in all.")
        elif status == 500:
            err = RouterError("The router failed to handle this request.",
                              code="internal_error")
        else:
            err = BadRequest(f"Malformed HTTP request: {message or 'unparsable'}.",
                             code="bad_http_request")
        if status != 500:
            log.debug("unparsable request from %s: %s", request.remote, message or exc)
        anthropic = request.path.startswith("/v1/messages") if request.path else False
        resp = web.Response(status=err.status, body=error_body(err, anthropic=anthropic),
                            content_type="application/json")
        resp.force_close()
        return resp


# aiohttp's own data_received, called directly: super() costs about 1,000 instructions
# per call, and this runs for every read of a client's socket.
_DATA_RECEIVED: Final = web.RequestHandler.data_received


class _GuardedServer(web.Server):
    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self, self.guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are :class:`GuardedProtocol`; with
    ``request_handler``, the server calls that instead of the application's dispatch
    (which it may fall back to), and with ``request_class`` it makes requests of that
    ``web.Request`` subclass."""

    __slots__ = ("guard", "request_class", "request_handler")

    def __init__(self, app: web.Application, guard: ConnectionGuard, *,
                 request_handler: Handler | None = None,
                 request_class: type[web.Request] | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.request_handler = request_handler
        self.request_class = request_class

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup
        factory = plain.request_factory
        if self.request_class is not None:
            factory = partial(self.app._make_request, _cls=self.request_class)
        # The same server, making guarded connections: aiohttp keeps the handler
        # arguments (ours and the app's handler_args merged) only in _kwargs.
        return _GuardedServer(self.request_handler or plain.request_handler,
                              request_factory=factory,
                              handler_cancellation=plain.handler_cancellation,
                              loop=plain._loop, guard=self.guard, **plain._kwargs)

    async def _cleanup_server(self) -> None:
        self.guard.close()
        await super()._cleanup_server()
