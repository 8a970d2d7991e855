"""The aiohttp application: the edge, routes and lifecycle.

The edge (``_make_edge``) is the server's request handler: it dispatches the routes
without a variable part itself and leaves the rest to aiohttp's router, for which it is
the one middleware. Around every request it does, in order:

* the connection's part (connections.py): reserve connections, the header block's size;
* request id, in-flight count, the caller behind ``Authorization: Bearer`` /
  ``x-api-key``, the compression of whole answers, the one access-log line and the
  request metrics, and the single place where errors become OpenAI-shaped (or, on
  ``/v1/messages``, Anthropic-shaped) JSON. Nothing else renders an error. One layer,
  not one per concern: each middleware layer costs every request a coroutine and a call
  (bench/profiles-issue27.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from multidict import istr

from ..errors import (
    BadRequest,
    BudgetExhausted,
    Forbidden,
    ModelNotFound,
    PayloadTooLarge,
    RateLimited,
    RouterError,
    Unauthorized,
    Unavailable,
    error_body,
)
from ..gateway.compression import compress_whole_answer
from ..gateway.downstream import client_connected
from ..gateway.router_state import RouterState
from ..ledger.accounting import ANONYMOUS
from ..observe.exchange import EXCHANGE, Exchange
from ..observe.metrics import REJECTION_REASONS
from ..observe.redact import RedactingFilter
from .connections import (
    ConnectionGuard,
    GuardedProtocol,
    GuardedRunner,
    server_handler_args,
)
from .fleet_status import share_traffic
from .handlers import DIRECT, STATE, Direct, routes
from .reload import RELOADER, ConfigReloader, config_watcher
from .snapshots import usage_snapshots

__all__ = ["ListenError", "create_app", "run_server", "start_server"]

log = logging.getLogger("llm_router")
access_log = logging.getLogger("llm_router.access")

_BACKLOG: Final = 1024
# The shared upstream pool: connections open at once over every provider (no per-host
# cap: one provider may take them all), DNS answers kept 5 minutes, and an idle
# connection kept 30 s for the next request to the same upstream.
_POOL_LIMIT: Final = 2048
_DNS_CACHE_S: Final = 300
_KEEPALIVE_S: Final = 30
# No key needed, not counted in flight. /ui is only the page: it asks for an admin key
# and sends it with each call to /admin/status.
_PUBLIC: Final = frozenset({"/health", "/health/live", "/health/ready", "/metrics", "/ui",
                            "/ui/"})
# The status page (/ui) sends this on its own polls of /admin/status, every 2 s while it
# is open: they are logged at DEBUG and not traced, so an open tab does not fill the
# access log and the trace store. A refused poll (a wrong key) is still logged at INFO.
_STATUS_POLL_HEADER: Final = istr("X-Router-Status-Poll")
_REQUEST_ID: Final = istr("X-Request-Id")
_IDS: Final = random.Random()  # request ids
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Edge(Protocol):
    """The server's request handler, and aiohttp's one middleware (:func:`_make_edge`)."""

    def __call__(self, request: web.Request, handler: Handler | None = None
                 ) -> Awaitable[web.StreamResponse]: ...


class ListenError(Exception):
    """The listening socket could not be opened (port in use, address not local, no
    permission): said in one line, without a traceback."""


def _error_response(err: RouterError, request: web.Request) -> web.Response:
    anthropic = request.path.startswith("/v1/messages")
    resp = web.Response(status=err.status, body=error_body(err, anthropic=anthropic),
                        content_type="application/json", headers=err.headers())
    if err.status == 408 or err.code == "invalid_body":
        # The rest of a body that came too slowly is not waited for; after one that did
        # not decode, the connection's parser is stopped and cannot read another request.
        resp.force_close()
    return resp


def _http_error(exc: web.HTTPException) -> RouterError:
    """aiohttp's own 404/405/413 in our shape."""
    if exc.status == 404:
        return ModelNotFound("Unknown route; see the OpenAI API reference for the paths this "
                             "router serves.", code="not_found")
    if exc.status == 413:
        return PayloadTooLarge("Request body too large.")
    err = BadRequest(exc.reason or "Bad request", code=f"http_{exc.status}")
    err.status = exc.status  # type: ignore[misc]
    return err


# A route without a variable part: its frozen match, handler, metric label, whether it is
# public, and for a model route what to call instead of the handler (handlers.Direct);
# the same for every request (see _make_edge).
_Fast = tuple[UrlMappingMatchInfo, Handler, str, bool, Direct | None]


def _fast_routes(app: web.Application) -> dict[tuple[str, str], _Fast]:
    """``(method, path)`` of every route without a variable part, as aiohttp's router
    would resolve it, to what the edge needs: one dict lookup instead of the router's
    walk, a fresh match object and the middleware chain (about 10 % of a bare request's
    CPU). The match holds no values, so one frozen object serves every request."""
    table: dict[tuple[str, str], _Fast] = {}
    for resource in app.router.resources():
        if not isinstance(resource, web.PlainResource):
            continue
        for route in resource:
            info = UrlMappingMatchInfo({}, route)
            info.add_app(app)
            info.freeze()
            path = resource.canonical
            table[(route.method, path)] = (info, route.handler, path, path in _PUBLIC,
                                           DIRECT.get(route.handler))
    return table


def _make_edge(app: web.Application, state: RouterState, log_format: str) -> Edge:
    """The one layer around every request (module docstring), as the server's request
    handler. A request for a path without a variable part is dispatched here; any other
    (``/v1/models/{model}``, unknown paths, wrong methods, ``Expect: 100-continue``) goes
    through aiohttp's own dispatch, which calls this again as its only middleware."""
    table = _fast_routes(app)
    slow = app._handle

    @web.middleware
    async def _edge(request: web.Request, handler: Handler | None = None
                    ) -> web.StreamResponse:
        direct: Direct | None = None
        if handler is None:
            hit = table.get((request.method, request.rel_url.path_safe))
            if hit is None or request.headers.get(hdrs.EXPECT):
                return await slow(request)
            request._match_info, handler, route, public, direct = hit
        else:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            public = request.path in _PUBLIC
        proto = request.protocol
        conn = proto if isinstance(proto, GuardedProtocol) else None
        if conn is not None:
            refused = conn.begin(request)  # marks the connection busy
            if refused is not None:
                conn.end()
                return refused
        headers = request.headers
        rid = headers.get(_REQUEST_ID)  # the client's, if it is a sane one
        if not rid or len(rid) > 128 or not rid.isprintable():
            # 128 bits as 32 hex digits, like uuid4().hex. An id only correlates log
            # lines, so it needs uniqueness, not secrecy: a seeded PRNG spares a
            # getrandom() syscall per request (uuid4 and os.urandom showed in profiles).
            # Formatted printf-style: the same 32 digits for ~1k instructions less.
            rid = "%032x" % _IDS.getrandbits(128)  # noqa: UP031
        t0 = time.perf_counter()
        ex: Exchange | None = None
        rejected: str | None = None  # why the router itself refused, if it did
        quiet = False
        if not public:
            # Only API requests are "in flight": a /metrics scrape must not count itself.
            state.inflight += 1  # the gauge is set from this at scrape time
            task = request.task
            state.request_tasks.add(task)  # what a shutdown cuts after its grace
            if direct is None:  # a handler reads it there; a direct route is given it
                ex = request[EXCHANGE] = Exchange(route, rid, ANONYMOUS, "", "openai", t0)
            else:
                ex = Exchange(route, rid, ANONYMOUS, direct.kind, direct.client, t0)
            quiet = route == "/admin/status" and _STATUS_POLL_HEADER in headers
            if state.tracing is not None and not quiet:
                ex.span = state.tracing.start_request(headers, ex)
        resp: web.StreamResponse
        try:
            try:
                if ex is not None:  # the caller; public paths need none
                    ex.caller = state.keys.caller(headers)
                if direct is not None and ex is not None:
                    resp = await direct.serve(request, state, ex)
                else:
                    resp = await handler(request)
                compress_whole_answer(request, resp)
            except RouterError as err:
                resp = _error_response(err, request)
                rejected = _rejection_reason(err, ex)
                if ex is not None:
                    ex.refusal = err.code or err.type  # the access line says why
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                mapped = _http_error(exc)
                resp = _error_response(mapped, request)
                if ex is not None:
                    ex.refusal = mapped.code or mapped.type
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                raise
            except asyncio.CancelledError:
                if not (state.draining and ex is not None and not ex.status
                        and client_connected(request)):
                    raise
                # Cut at the end of the shutdown grace before any byte went out, with
                # the client still connected: a retryable answer, not a dropped line.
                ex.error = "shutdown"
                resp = _error_response(Unavailable(
                    "The router is shutting down and cut this request at the end of its "
                    "grace period; retry it.", code="shutting_down", retry_after=1.0),
                    request)
                resp.force_close()
            except Exception:
                log.exception("unhandled error serving %s %s (request %s)", request.method,
                              request.path, rid)
                resp = _error_response(RouterError("The router failed to handle this request; "
                                                   "it has been logged.", code="internal_error"),
                                       request)
            if not resp.prepared:
                out = resp.headers
                out["X-Request-Id"] = rid
                if ex is not None and ex.attempts and "X-Router-Attempts" not in out:
                    # Failed after trying upstreams: say how hard the router tried. (An
                    # answer names both already: the two are always set together.)
                    out.setdefault("X-Router-Group", ex.group)
                    out["X-Router-Attempts"] = str(ex.attempts)
            if ex is not None and not ex.status:
                ex.status = resp.status
            return resp
        finally:
            if ex is not None:
                state.inflight -= 1
                state.request_tasks.discard(task)
                _observe(state, ex, t0, log_format, rejected, quiet)
                if ex.span is not None and state.tracing is not None:
                    state.tracing.end_request(ex.span, ex, rejected)
            if conn is not None:
                conn.end()

    return _edge


class _RouterRequest(web.Request):
    """aiohttp's request, with ``on_response_prepare``'s one use of ours called directly
    rather than through the signal (a coroutine per receiver, for every response). Each
    application makes its own subclass (:func:`_request_class`) holding its state."""

    _router_state: RouterState
    _prepare_signal: Any  # the application's on_response_prepare: none of ours

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if self._router_state.draining:  # a call less for every response
            _close_while_draining(self._router_state, response)
        if self._prepare_signal and self._match_info is not None:
            await self._prepare_signal.send(self, response)


def _request_class(app: web.Application, state: RouterState) -> type[web.Request]:
    return type("RouterRequest", (_RouterRequest,), {
        "_router_state": state, "_prepare_signal": app.on_response_prepare})


def _rejection_reason(err: RouterError, ex: Exchange | None) -> str | None:
    """rejections_total's reason for an error the router raised itself, or None when it
    is not a refusal (bad input, upstream failures)."""
    if ex is None:
        return None
    if err.reason in REJECTION_REASONS:
        return err.reason  # the ledger names the limit
    if isinstance(err, Unauthorized):
        return "auth"
    if isinstance(err, BudgetExhausted) or err.code == "model_not_priced":
        return "budget"
    if isinstance(err, Forbidden):
        return "model_not_allowed" if err.code == "model_not_allowed" else "auth"
    if isinstance(err, RateLimited) and err.code == "quota_exceeded":
        return "quota"
    if isinstance(err, Unavailable) and ex.error == "cooling_down":
        return "cooling_down"
    return None


def _observe(state: RouterState, ex: Exchange, t0: float, log_format: str,
             rejected: str | None = None, quiet: bool = False) -> None:
    """Request metrics and the one access line, from the finished :class:`Exchange`;
    ``quiet`` (the status page's own poll) logs the line at DEBUG unless it was refused."""
    if not ex.status:
        ex.status = 499  # cancelled: the client went away before an answer
    elapsed = time.perf_counter() - t0
    m = state.metrics
    user = ex.caller.user
    # Labels carry only names from the config (state.labels).
    m.finished(state.labels, ex.route, ex.group, ex.provider, ex.model, ex.status, user, elapsed,
               elapsed - ex.upstream_s if ex.attempts else None)
    if rejected is not None:
        m.child(m.rejections, ex.route, state.labels.group(ex.group), user, rejected).inc()
    state.traffic.record(ex, elapsed)
    level = logging.DEBUG if quiet and ex.status < 400 else logging.INFO
    if access_log.isEnabledFor(level):
        line = ex.log_line()
        if log_format == "json":
            msg = orjson.dumps(line).decode()
        else:
            msg = " ".join(f"{k}={_logfmt_value(v)}" for k, v in line.items() if v is not None)
        handlers = access_log.handlers
        if (len(handlers) == 1 and not access_log.propagate and not access_log.filters
                and isinstance(handlers[0], AccessLogHandler) and handlers[0].direct(level)):
            handlers[0].write_line(msg)  # what handle() would write, minus the LogRecord
        else:
            # As access_log.info(msg), minus the walk up the stack for a caller nobody
            # reads.
            access_log.handle(access_log.makeRecord(access_log.name, level, __file__, 0, msg,
                                                    (), None))


_BARE_VALUE: Final = re.compile(r"[\w.:/@+-]+")


def _logfmt_value(value: object) -> str:
    """A ``key=value`` value that cannot be mistaken for more fields: anything but a
    plain word is JSON-quoted, so ``X-Request-Id: abc user=mallory`` stays one value."""
    if isinstance(value, bool | int | float):
        return str(value)
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    if text.isascii() and _BARE_VALUE.fullmatch(text):
        return text
    return orjson.dumps(text).decode()


class AccessLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes access lines to its stream without a flush (a write system call) per line,
    as ``StreamHandler`` does; :func:`_access_log_flusher` flushes every
    :data:`ACCESS_FLUSH_S`, and logging's exit handler at the end. Lines reach a pipe in
    batches, at most that late.

    As the access logger's only handler, with its own message-only formatter and no
    filters but the secrets' redaction (:class:`RedactingFilter`), the edge hands it
    each line as text (:meth:`write_line`): the same bytes, without a ``LogRecord`` (its
    creation and formatting were half a line's cost)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.setFormatter(_MESSAGE_ONLY)
        self._cleaners: tuple[RedactingFilter, ...] | None = ()  # None: another filter

    def addFilter(self, filter: Any) -> None:
        super().addFilter(filter)
        self._filters_changed()

    def removeFilter(self, filter: Any) -> None:
        super().removeFilter(filter)
        self._filters_changed()

    def _filters_changed(self) -> None:
        plain = all(type(f) is RedactingFilter for f in self.filters)
        self._cleaners = tuple(self.filters) if plain else None  # type: ignore[arg-type]

    def direct(self, level: int) -> bool:
        """Whether :meth:`write_line` writes what handling a record of ``level`` would."""
        return (self.formatter is _MESSAGE_ONLY and self._cleaners is not None
                and level >= self.level)

    def write_line(self, msg: str) -> None:
        for cleaner in self._cleaners or ():
            msg = cleaner.clean(msg)
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(msg + self.terminator)
            except RecursionError:
                raise
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": msg}))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


_MESSAGE_ONLY: Final = logging.Formatter("%(message)s")
ACCESS_FLUSH_S: Final = 0.5


async def _access_log_flusher(app: web.Application) -> AsyncIterator[None]:
    async def flush() -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_S)
            _flush_access_log()

    task = asyncio.get_running_loop().create_task(flush())
    yield
    task.cancel()
    _flush_access_log()


def _flush_access_log() -> None:
    for handler in access_log.handlers:
        if isinstance(handler, AccessLogHandler):
            handler.flush()


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    """OpenTelemetry export when ``otel`` is configured (read at start-up only)."""
    state = app[STATE]
    settings = state.config.otel
    if settings is not None:
        try:
            from ..observe.tracing import Tracing
        except ImportError as exc:
            log.error("otel is configured but OpenTelemetry is not installed (%s): run "
                      "pip install '.[otel]' in the llm-router checkout; serving without "
                      "traces", exc)
        else:
            state.tracing = Tracing(settings)
            log.info("tracing: exporting spans to %s as service '%s'", settings.endpoint,
                     settings.service_name)
    yield
    if state.tracing is not None:
        tracing, state.tracing = state.tracing, None
        await tracing.shutdown()


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    """One shared upstream session with a sized pool, closed at shutdown."""
    state = app[STATE]
    state.loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=_POOL_LIMIT, limit_per_host=0,
                                     ttl_dns_cache=_DNS_CACHE_S, keepalive_timeout=_KEEPALIVE_S)
    state.session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                          trust_env=False)
    yield
    await state.session.close()


async def _discovery(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: list the models of providers with ``discover`` (catalog.py),
    for as long as the client session is open."""
    state = app[STATE]
    assert state.session is not None
    task = asyncio.create_task(state.catalog.run(lambda: state.config, state.session),
                               name="llm-router model discovery")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _state_store(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: connect the state store; after draining, flush and close it."""
    state = app[STATE]
    await state.store.start()
    yield
    await state.store.close()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: deliver webhook events; at exit, flush them briefly."""
    webhooks = app[STATE].webhooks
    await webhooks.start()
    yield
    await webhooks.close()


def _close_while_draining(state: RouterState, response: web.StreamResponse) -> None:
    """As a response is prepared: while draining, every answer closes its connection.

    A client on a keep-alive connection stays on this instance whatever the load balancer
    decides (a Kubernetes Service balances connections, not requests); told ``Connection:
    close`` during the unready delay, it reconnects and lands on an instance that stays,
    instead of having its idle connection closed under its next request when the
    listener shuts. Runs after aiohttp has set its own Connection header."""
    if state.draining:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"


INFLIGHT_PUBLISH_S: Final = 1.0


async def _inflight_publisher(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` under ``--workers N``: this worker's requests in flight, written
    to its metrics file every :data:`INFLIGHT_PUBLISH_S`, so a scrape answered by any
    worker adds up the fleet's (at most that old). One process alone sets the gauge when
    scraped, and the request path never touches it."""
    state = app[STATE]

    async def publish() -> None:
        while True:
            state.metrics.inflight.set(state.inflight)
            await asyncio.sleep(INFLIGHT_PUBLISH_S)

    task = asyncio.get_running_loop().create_task(publish())
    yield
    task.cancel()
    state.metrics.inflight.set(0)


def create_app(state: RouterState, *, log_format: str = "json") -> web.Application:
    """The router application around ``state``."""
    return _build_app(state, log_format)[0]


def _build_app(state: RouterState, log_format: str) -> tuple[web.Application, Edge]:
    app = web.Application(handler_args=server_handler_args(state.config.server))
    app[STATE] = state
    app.router.add_routes(routes())
    edge = _make_edge(app, state, log_format)
    app.middlewares.append(edge)  # aiohttp's dispatch, for what the edge leaves to it
    app.cleanup_ctx.append(_tracing)  # after the session closes: spans of the drain export
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_discovery)  # needs the session; stops before it closes
    app.cleanup_ctx.append(_access_log_flusher)
    if state.metrics.multiprocess_dir is not None:
        app.cleanup_ctx.append(_inflight_publisher)
    # Closed after the final snapshot below: what the last requests settled is flushed.
    app.cleanup_ctx.append(_state_store)
    share_traffic(app, state)  # after the store starts, before it closes
    # Exits run in reverse after draining: the watcher stops, the final snapshot is
    # written, then the upstream session closes.
    app.cleanup_ctx.append(usage_snapshots)
    # After the snapshot is restored (budget shares already past are not sent again);
    # closed before it and the store, so the last budget checks can still read spend.
    app.cleanup_ctx.append(_webhooks)
    if state.config_path is not None:
        app[RELOADER] = ConfigReloader(state, state.config_path)
        app.cleanup_ctx.append(config_watcher)
    return app, edge


async def start_server(state: RouterState, host: str, port: int, *, log_format: str = "json",
                       reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Start serving ``state`` on ``host:port`` (0 picks a free port); returns the runner
    and the bound port. ``runner.cleanup()`` drains and stops it."""
    app, edge = _build_app(state, log_format)
    # handler_cancellation: a client that disconnects cancels its handler at once, which
    # closes the upstream request and releases its in-flight estimate.
    runner = GuardedRunner(app, ConnectionGuard(state.config.server), request_handler=edge,
                           request_class=_request_class(app, state), handler_cancellation=True,
                           access_log=None, shutdown_timeout=state.config.shutdown_grace_s)
    try:
        await runner.setup()
    except Exception:
        # A start-up step failed (an unwritable snapshot): undo the ones that ran, so the
        # upstream session is closed rather than reported unclosed under the real error.
        await app.cleanup()
        raise
    # aiohttp's default backlog of 128 drops SYNs when many clients connect at once
    # (1,000 streams in bench/): they retry after 1-7 s. The kernel caps it at somaxconn.
    # reuse_port: --workers N processes bind one port; the kernel spreads connections.
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None,
                       backlog=_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        # asyncio's bind error names the errno only in a long message: say it plainly.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {host}:{port}: {reason.lower()}") from None
    bound = runner.addresses[-1][1] if runner.addresses else port
    return runner, int(bound)


async def run_server(state: RouterState, host: str, port: int, *, log_format: str = "json",
                     reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests and
    streams finish within ``shutdown_grace_s``, run the cleanup (final snapshot), return."""
    runner, bound = await start_server(state, host, port, log_format=log_format,
                                       reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: already draining; requests still in flight are cut when "
                        "the grace period ends", sig.name)
            return
        log.info("%s received: shutting down", sig.name)
        state.draining = True  # /health/ready answers 503 from now on
        stop.set()

    # The handlers stay installed while draining, so a second signal cannot kill the
    # process before the final snapshot is written.
    signals = [signal.SIGTERM, signal.SIGINT]
    for sig in signals:
        loop.add_signal_handler(sig, on_stop, sig)
    reloader = runner.app.get(RELOADER)
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.request, "SIGHUP")
        signals.append(signal.SIGHUP)
    # Only now: a script that waits for this line and then signals must find the handlers.
    log.info("llm-router listening on http://%s:%d (%s)", host, bound, state.config.summary())
    try:
        await stop.wait()
    finally:
        state.draining = True
        await _drain(runner, state)
        for sig in signals:
            loop.remove_signal_handler(sig)
        log.info("stopped")


async def _drain(runner: web.AppRunner, state: RouterState) -> None:
    """Optionally keep accepting while readiness is 503, then stop accepting and let
    in-flight requests finish within ``shutdown_grace_s``; aiohttp then cuts the rest and
    runs the cleanup (final snapshot)."""
    cfg = state.config  # the latest reload's values apply
    if cfg.shutdown_delay_s > 0:
        log.info("draining in %.1f s: /health/ready answers 503 and every response closes "
                 "its connection; still accepting so load balancers can move traffic away",
                 cfg.shutdown_delay_s)
        await asyncio.sleep(cfg.shutdown_delay_s)
    log.info("draining: no new connections; waiting up to %g s for %d in-flight requests",
             cfg.shutdown_grace_s, state.inflight)
    # aiohttp waits up to its timeout, then cancels only the request's payload and waits
    # that long *again* before cancelling the handler: twice the grace, past a container
    # runtime's kill deadline. So we cut at the grace ourselves, and leave aiohttp's
    # timeout (no public setter; the runner was built with the start-up value) as a
    # backstop.
    runner._shutdown_timeout = cfg.shutdown_grace_s + 1.0

    async def cut() -> None:
        await asyncio.sleep(cfg.shutdown_grace_s)
        if state.request_tasks:
            log.warning("grace period of %g s over: cutting %d request(s) still in flight",
                        cfg.shutdown_grace_s, len(state.request_tasks))
            for task in list(state.request_tasks):
                task.cancel()

    watchdog = asyncio.create_task(cut())
    try:
        await runner.cleanup()
    finally:
        watchdog.cancel()
