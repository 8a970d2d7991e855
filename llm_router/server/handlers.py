"""One function per route; thin. The work happens in :mod:`llm_router.gateway.proxy`."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import Group, Member
from ..dialects import anthropic as anthropic_in
from ..dialects.responses.check import INCLUDABLE
from ..dialects.responses.stream import EventWriter, replay_events
from ..errors import (
    BadRequest,
    Forbidden,
    ModelNotFound,
    RouterError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    echoed,
)
from ..gateway.proxy import forward
from ..gateway.request_body import read_json
from ..gateway.request_check import refuse_a_key, validate_body
from ..gateway.router_state import RouterState
from ..gateway.routing import Target, resolve_target
from ..hub.stream import Dialect
from ..ledger.accounting import extract_key
from ..observe.exchange import EXCHANGE, Exchange
from ..providers.registry import provider_type
from .fleet_status import FLEET
from .reload import RELOADER
from .status import build_status, status_page

__all__ = ["DIRECT", "STATE", "Direct", "routes"]

STATE: Final = web.AppKey("state", RouterState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        content_type="application/json")


class Direct(NamedTuple):
    """What the edge calls for a model route instead of its aiohttp handler, sparing a
    coroutine and two lookups per request: set the exchange's kind and dialect, then
    ``serve(request, state, exchange)``."""

    kind: str
    client: Dialect
    serve: Callable[[web.Request, RouterState, Exchange], Awaitable[web.StreamResponse]]


# Each model route's aiohttp handler, and what the edge calls directly for it.
DIRECT: Final[dict[Handler, Direct]] = {}


def _model_route(kind: str, client: Dialect) -> Handler:
    serve = _count_tokens if kind == "count_tokens" else forward

    async def handler(request: web.Request) -> web.StreamResponse:
        ex = request[EXCHANGE]
        ex.kind, ex.client = kind, client
        return await serve(request, request.app[STATE], ex)

    handler.__name__ = f"{kind}_handler"
    DIRECT[handler] = Direct(kind, client, serve)
    return handler


async def _count_tokens(request: web.Request, state: RouterState,
                        ex: Exchange) -> web.StreamResponse:
    local = await _count_tokens_locally(request, state, ex)
    if local is not None:
        return local
    try:
        return await forward(request, state, ex)
    except (UpstreamError, UpstreamTimeout, Unavailable) as err:
        # Counting is advisory: when no member can count (failing, timing out, cooling
        # down), the estimate serves better than an error. The failure stays in the
        # access line; the header says the answer is an estimate.
        assert ex.body is not None
        ex.error = ex.error or err.code
        return _estimate(ex, ex.body)


async def _count_tokens_locally(request: web.Request, state: RouterState,
                                ex: Exchange) -> web.Response | None:
    """Answer count_tokens with the documented estimate unless an Anthropic-speaking
    member could count exactly; the body is kept for ``forward`` to reuse."""
    cfg = state.config
    body = await read_json(request, cfg)
    ex.body = body
    model = validate_body(ex.kind, body)
    refuse_a_key(model, cfg, state.keys)
    ex.group = model  # until resolved: a 404's access line keeps the name sent (cut)
    target = resolve_target(cfg, model, ex.caller.aliases, state.catalog)
    ex.caller.check(target)
    if any("count_tokens" in provider_type(cfg.providers[m.provider].type).serves
           for m in target.group.members):
        return None
    ex.group, ex.asked, ex.alias = target.name, target.asked, target.alias
    return _estimate(ex, body)


def _estimate(ex: Exchange, body: dict[str, Any]) -> web.Response:
    """count_tokens answered by the router's documented estimate (docs/anthropic.md)."""
    ex.status = 200
    resp = _json({"input_tokens": anthropic_in.estimate_input_tokens(body)})
    resp.headers["X-Router-Count"] = "estimate"
    return resp


async def list_models(request: web.Request) -> web.Response:
    """Groups, aliases without wildcards, then ``provider/model`` ids, that the caller
    may use."""
    state = request.app[STATE]
    cfg = state.config
    caller = request[EXCHANGE].caller
    created = int(state.started)
    data: list[dict[str, object]] = []
    seen: set[str] = set()
    for name, group in cfg.groups.items():
        if caller.may_use(Target(name, group)):
            data.append({"id": name, "object": "model", "created": created,
                         "owned_by": "llm-router"})
            seen.add(name)
    for table in (caller.aliases, cfg.alias_table):
        for alias in table.plain if table else ():
            if alias.pattern in seen:
                continue
            seen.add(alias.pattern)
            try:
                target = resolve_target(cfg, alias.pattern, caller.aliases)
            except RouterError:
                continue
            if caller.may_use(target):
                data.append({"id": alias.pattern, "object": "model", "created": created,
                             "owned_by": "llm-router"})
    for name, group in cfg.groups.items():
        for m in group.members:
            mid = f"{m.provider}/{m.model}"
            if mid in seen:
                continue
            seen.add(mid)
            try:
                target = resolve_target(cfg, mid)
            except RouterError:
                continue
            if caller.may_use(target):
                data.append({"id": mid, "object": "model", "created": created,
                             "owned_by": m.provider})
        del name
    for provider, model in state.catalog.listed():
        mid = f"{provider}/{model}"
        if mid in seen:
            continue
        seen.add(mid)
        target = Target(mid, Group(name=mid, members=(Member(provider, model),)))
        if caller.may_use(target):
            data.append({"id": mid, "object": "model", "created": created,
                         "owned_by": provider})
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    """One model the caller may use (``models.retrieve``): a group or ``provider/model``."""
    state = request.app[STATE]
    cfg = state.config
    caller = request[EXCHANGE].caller
    model_id = request.match_info["model"]
    try:
        target = resolve_target(cfg, model_id, caller.aliases, state.catalog)
    except RouterError:
        target = None
    if target is None or not caller.may_use(target):
        raise ModelNotFound(f"The model '{echoed(model_id)}' does not exist or you may not use it; "
                            "GET /v1/models lists what you may use.", param="model")
    owner = "llm-router" if target.name in cfg.groups else target.name.partition("/")[0]
    return _json({"id": model_id, "object": "model", "created": int(state.started),
                  "owned_by": owner})


async def _held_response(request: web.Request) -> tuple[RouterState, str, object]:
    state = request.app[STATE]
    response_id = request.match_info["response_id"]
    entry = await state.responses.get(response_id)
    if entry is None or entry.owner != request[EXCHANGE].caller.user:
        raise ModelNotFound(f"No response with id '{echoed(response_id)}': the router keeps "
                            "responses for a limited time, and none created with "
                            "store: false.", param="response_id", code="response_not_found")
    return state, response_id, entry.response


_QUERY_BOOLEANS: Final = {"true": True, "false": False}


def _retrieve_query(request: web.Request) -> tuple[bool, int]:
    """``stream`` and ``starting_after`` of a retrieve, once every query parameter
    OpenAI's schema declares has a valid value; else a 400 naming it."""
    query = request.query
    for name in ("stream", "include_obfuscation"):
        if name in query and query[name] not in _QUERY_BOOLEANS:
            raise BadRequest(f"'{name}' must be true or false.", param=name)
    for name in ("include", "include[]"):
        for value in query.getall(name, ()):
            if value not in INCLUDABLE:
                raise BadRequest(f"'include' must be a list of: {', '.join(INCLUDABLE)}.",
                                 param="include")
    after = query.get("starting_after", "-1")
    if after != "-1" and not (after.isascii() and after.isdigit()):
        raise BadRequest("'starting_after' must be an integer of at least 0.",
                         param="starting_after")
    return _QUERY_BOOLEANS.get(query.get("stream", "false"), False), int(after)


async def get_response(request: web.Request) -> web.Response:
    """A response the router still holds (``responses.retrieve``); with ``stream=true``
    it is replayed as the Responses event stream that would have produced it, from the
    event after ``starting_after``."""
    stream, after = _retrieve_query(request)
    state, _, response = await _held_response(request)
    request[EXCHANGE].status = 200
    # As every answer relayed: a configured secret an upstream echoed never goes out.
    if not isinstance(response, dict) or not stream:
        return web.Response(body=state.redactor.bytes(orjson.dumps(response)),
                            content_type="application/json")
    writer = EventWriter()
    events = [writer.event(kind, payload) for kind, payload in replay_events(response)]
    return web.Response(body=state.redactor.bytes(b"".join(events[after + 1:])),
                        content_type="text/event-stream",
                        headers={"Cache-Control": "no-cache"})


async def delete_response(request: web.Request) -> web.Response:
    """Forget a held response (``responses.delete``): it can no longer be continued."""
    state, response_id, _ = await _held_response(request)
    await state.responses.delete(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


async def own_usage(request: web.Request) -> web.Response:
    """The caller's own spend, tokens and requests per model and period, and limits left."""
    state = request.app[STATE]
    return _json(await state.store.usage(request[EXCHANGE].caller))


async def admin_usage(request: web.Request) -> web.Response:
    """Every user and key, plus the provider keys' counters and health; admins only."""
    state = request.app[STATE]
    if not request[EXCHANGE].caller.is_admin:
        raise Forbidden("Only users with role 'admin' may read /admin/usage; "
                        "GET /v1/usage shows your own.", code="admin_only")
    report = await state.store.admin_usage(state.config)
    report["provider_keys"] = _provider_keys(state)
    return _json(report)


def _provider_keys(state: RouterState) -> list[dict[str, object]]:
    health = state.health.snapshot()
    out: list[dict[str, object]] = []
    for p in state.config.providers.values():
        for k in p.keys:
            tokens = {m: n for (prov, key, m), n in sorted(state.counters.tokens.items())
                      if prov == p.name and key == k.label}
            out.append({"provider": p.name, "key": k.label,
                        "state": health.get((p.name, k.label), "ok"),
                        "requests_today": state.counters.requests_today(p.name, k.label),
                        "daily_request_limit": k.daily_request_limit,
                        "tokens": tokens})
    return out


async def admin_status(request: web.Request) -> web.Response:
    """The status page's data (README: ``GET /admin/status``); admins only."""
    state = request.app[STATE]
    caller = request[EXCHANGE].caller
    if not caller.is_admin:
        raise Forbidden(f"The key of user '{caller.user}' is not an admin key: /admin/status "
                        "and the status page need a key of a user with role 'admin'.",
                        code="admin_only")
    resp = _json(await build_status(state, request.app.get(RELOADER),
                                    fleet=request.app.get(FLEET), exclude_inflight=1))
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def status_ui(request: web.Request) -> web.Response:
    """The read-only status page: one self-contained document, nothing loaded from
    elsewhere (its Content-Security-Policy forbids it)."""
    del request
    body, csp = status_page()
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


async def status_ui_slash(request: web.Request) -> web.Response:
    """``/ui/`` is a common way to type it: send the browser to the page."""
    del request
    raise web.HTTPPermanentRedirect("/ui")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"status": "draining" if state.draining else "ok",
                  "uptime_s": round(time.time() - state.started, 1)})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ok = state.ready
    # A degraded state backend does not make the router unready: limits fall back to
    # this replica (docs/scaling.md), and traffic keeps flowing.
    body = {"ready": ok, "draining": state.draining,
            "config": state.config.source or "loaded", "state": state.store.status()}
    if state.snapshot_failing:
        body["usage_snapshot"] = "failing"  # docs/operations.md: writes keep failing
    return _json(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _check_scraper(request, state)
    await state.refresh_user_gauges()
    state.metrics.inflight.set(state.inflight)
    # Under --workers N: every worker's values added up (observe/metrics.py).
    return web.Response(body=generate_latest(state.metrics.exposition),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def _check_scraper(request: web.Request, state: RouterState) -> None:
    """``metrics: {allow_networks, require_key}``: 403 from another network, 401 without
    a valid key, 403 for a key of a non-admin user. Open when neither is set."""
    settings = state.config.metrics
    if settings.networks:
        peer = _peer_address(request.remote)
        if peer is None or not any(peer in net for net in settings.networks):
            raise Forbidden("Your address may not read /metrics (metrics.allow_networks).",
                            code="metrics_forbidden")
    if settings.require_key:
        key = extract_key(request.headers.get("Authorization"), request.headers.get("x-api-key"))
        if not state.keys.authenticate(key).is_admin:
            raise Forbidden("Only keys of users with role 'admin' may read /metrics.",
                            code="admin_only")


def _peer_address(remote: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The TCP peer (X-Forwarded-For is not trusted: anyone can send it)."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return None  # a unix socket, or no peer
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.1.2.3 on a dual-stack socket is 10.1.2.3
    return ip


# Made once: DIRECT is keyed by these handlers.
_MODEL_ROUTES: Final = (
    ("/v1/chat/completions", _model_route("chat", Dialect.OPENAI)),
    ("/v1/completions", _model_route("completions", Dialect.OPENAI)),
    ("/v1/embeddings", _model_route("embeddings", Dialect.OPENAI)),
    ("/v1/messages", _model_route("messages", Dialect.ANTHROPIC)),
    ("/v1/messages/count_tokens", _model_route("count_tokens", Dialect.ANTHROPIC)),
    ("/v1/responses", _model_route("responses", Dialect.RESPONSES)),
)


def routes() -> list[web.RouteDef]:
    return [
        *(web.post(path, handler) for path, handler in _MODEL_ROUTES),
        web.get("/v1/responses/{response_id}", get_response),
        web.delete("/v1/responses/{response_id}", delete_response),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", get_model),
        web.get("/health", health),
        web.get("/health/live", health),
        web.get("/health/ready", ready),
        web.get("/metrics", metrics),
        web.get("/v1/usage", own_usage),
        web.get("/admin/usage", admin_usage),
        web.get("/admin/status", admin_status),
        web.get("/ui", status_ui),
        web.get("/ui/", status_ui_slash),
    ]

