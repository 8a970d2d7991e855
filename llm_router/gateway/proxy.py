"""One request's way through the router: read, resolve, attempt loop, relay, account.

The attempt loop is a plain loop. Each turn collects the eligible candidates, picks one,
sends, and on failure asks one question — :func:`_try_again` — before going round.
Nothing is retried once a byte went to the client: a stream is only committed (headers
sent) when its first upstream event arrives, or when a keepalive comment must be sent
during a long wait (:mod:`downstream`); after that an upstream failure ends the stream
in-band. docs/resilience.md describes the rules for operators.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import orjson
from aiohttp import web

from ..dialects import anthropic_check
from ..errors import (
    BadRequest,
    RateLimited,
    RouterError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from ..hub import chat_check
from ..hub.usage import Usage
from ..ledger.accounting import cost_usd, estimate_cost, priced_target
from ..ledger.usage import CounterKey, completion_ceiling
from ..observe.labels import OTHER
from ..observe.redact import Redactor
from ..providers import (
    AttemptFailure,
    ProviderType,
    UpstreamCall,
    UpstreamResponse,
    failure_from_exception,
)
from ..providers.registry import provider_type
from . import relay as rl
from .affinity import (
    AffinityKey,
    affinity_key,
    applies,
    derived_cache_key,
    pick_with_affinity,
    response_key,
)
from .answer_stream import AnswerStream
from .compression import MIN_COMPRESS_BYTES, compress_body, negotiate
from .downstream import Downstream
from .exchange import Exchange
from .health import parse_retry_after
from .model_request import ModelRequest
from .request_body import BODY_SIZE, read_json
from .responses_turn import ResponsesTurn
from .router_state import RouterState
from .routing import (
    Candidate,
    CandidateSet,
    PickContext,
    Preferences,
    Target,
    can_serve,
    collect_candidates,
    is_retryable,
    pick_candidate,
    resolve_target,
)
from .upstream_events import upstream_events

__all__ = ["forward", "new_request_id", "validate_body"]

log = logging.getLogger("llm_router.access")

# Per route: the field every request needs, its types, and what it must be.
_REQUIRED: Final[dict[str, tuple[str, type | tuple[type, ...], str]]] = {
    "chat": ("messages", list, "a list of messages"),
    "messages": ("messages", list, "a list of messages"),
    "count_tokens": ("messages", list, "a list of messages"),
    "completions": ("prompt", (str, list), "a string or a list"),
    "embeddings": ("input", (str, list), "a string or a list"),
    "responses": ("input", (str, list), "a string or a list of input items"),
}
# Routes whose field above may be absent or null: OpenAI's completions schema makes
# `prompt` nullable, defaulting to <|endoftext|>, which the member applies.
_NULLABLE: Final = frozenset({"completions"})
# Per route: the dialect's own check of the fields the router reads (Responses bodies
# are checked by ResponsesTurn.begin, which needs the stored conversation too).
_BODY_CHECKS: Final[dict[str, Callable[[dict[str, Any]], None]]] = {
    "chat": chat_check.check_body,
    "messages": anthropic_check.check_body,
    "count_tokens": anthropic_check.check_body,
}
_JSON_TYPES: Final[dict[type, str]] = {
    bool: "a boolean", int: "a number", float: "a number", str: "a string",
    list: "a list", dict: "an object"}
_STREAMED_KINDS: Final = frozenset({"chat", "completions", "messages", "responses"})
_CUT_NOTICE_S: Final = 1.0  # how long a stream cut at shutdown may take to say so
_IDS: Final = random.Random()  # request ids (new_request_id)
_AUTH_RETRY_AFTER_S: Final = 30.0  # every key rejected: until an admin reloads fixed keys


def validate_body(kind: str, body: dict[str, Any]) -> str:
    """The request's model, once its body has the fields its route reads, each of the
    documented type; else :class:`BadRequest` naming the first field that does not."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: a group name or provider/model.", param="model",
                         code="missing_required_parameter")
    field_name, types, must = _REQUIRED[kind]
    value = body.get(field_name)
    if value is None:
        if kind not in _NULLABLE:
            raise BadRequest(f"'{field_name}' is required: {must}.", param=field_name,
                             code="missing_required_parameter")
    elif not isinstance(value, types):
        raise BadRequest(f"'{field_name}' must be {must}, not {_JSON_TYPES[type(value)]}.",
                         param=field_name)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", param="stream")
    check = _BODY_CHECKS.get(kind)
    if check is not None:
        check(body)
    return model


def _seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


async def forward(request: web.Request, state: RouterState, ex: Exchange) -> web.StreamResponse:
    """Serve one model request end to end; raises :class:`RouterError` before any byte."""
    cfg = state.config  # this request keeps this config even if a reload swaps it
    body = ex.body if ex.body is not None else await read_json(request, cfg)
    model = validate_body(ex.kind, body)
    ex.group = model  # until resolved: a 404's access line keeps the name sent (cut)
    target = resolve_target(cfg, model, ex.caller.aliases, state.catalog)
    ex.group, ex.asked, ex.alias = target.name, target.asked, target.alias
    if target.alias:
        state.metrics.child(state.metrics.alias_requests, target.alias,
                            state.labels.group(target.name)).inc()
    if target.is_direct:
        member = target.group.members[0]
        listed = state.catalog.models(member.provider)
        if state.labels.model(member.provider, member.model) == OTHER and (
                listed is None or member.model not in listed):
            # A name from the client: bounded state. A model its provider listed is
            # kept under its own name: discovery bounds those (docs/catalog.md).
            target = target.folded(OTHER)
    ex.caller.check(target)
    if ex.caller.has_budget:  # every call it can reach must be charged
        target = priced_target(cfg.pricing, target)
    turn = None
    if ex.kind == "responses":
        turn = await ResponsesTurn.begin(body, target.answer_model, state.responses,
                                         ex.caller.user)
        turn.check_target(target, cfg.providers)
    if not can_serve(cfg, target, ex.kind):
        # Say what each provider type of the group does serve (the registry knows).
        types = sorted({cfg.providers[m.provider].type for m in target.group.members})
        served = "; ".join(f"{t} serves {', '.join(sorted(provider_type(t).serves))}"
                           for t in types)
        raise BadRequest(f"The model '{target.name}' cannot serve {request.path}: none of its "
                         f"providers offers it ({served}).", param="model",
                         code="unsupported_route")
    prefs = Preferences.from_headers(request.headers, cfg)
    stream = body.get("stream") is True and ex.kind in _STREAMED_KINDS
    ex.stream = stream
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    coding = negotiate(request.headers.get("Accept-Encoding"))
    ceiling = completion_ceiling(body)
    # About a token per 4 bytes. From the bytes really read: a client sending its body
    # chunked (no Content-Length) must not get its prompt reserved at zero.
    ex.prompt_estimate = request.get(BODY_SIZE, 0) // 4
    if turn is not None:
        ex.prompt_estimate += turn.history_bytes // 4  # previous_response_id's conversation
    # What the request will probably use: selection and tpm count this while it runs.
    estimate = state.counters.estimate(target.state_name, ex.prompt_estimate, ceiling)
    # Budgets and per-user/per-key limits are checked here, before anything is sent; the
    # estimates are reserved so that concurrent requests see each other. A budget
    # reserves the most the request may cost when the client capped its length, so a
    # burst passes the budget by one request at most (docs/teams.md).
    cost = (estimate_cost(cfg.pricing, target.group.members, ex.prompt_estimate,
                          ceiling if ceiling is not None else estimate - ex.prompt_estimate)
            if ex.caller.has_budget else 0.0)
    ex.admission = await state.store.admit(ex.caller, estimate, cost)
    down = Downstream(request, coding, cfg.keepalive_s) if stream else None
    req = ModelRequest(request, state, cfg, ex, target, prefs, body, include_usage, coding,
                       estimate, down, turn,
                       _affinity_key(request, state, ex, target, prefs, body))
    try:
        return await _attempt_loop(req)
    except RouterError as err:
        if turn is not None:
            turn.explain(err)  # a pinned conversation says why no one else could answer
        raise
    finally:
        state.store.release(ex.admission)


def _affinity_key(request: web.Request, state: RouterState, ex: Exchange, target: Target,
                  prefs: Preferences, body: dict[str, Any]) -> AffinityKey | None:
    """The request's affinity key when affinity steers it; counts ``off`` when it does
    not (the group's pick then stays plain inverse weight)."""
    use = applies(target, ex.kind, prefs)
    if use is None:
        return None
    key = affinity_key(body, request.headers, target.name, target.group.affinity) if use \
        else None
    if key is None:
        ex.affinity = "off"
        state.metrics.child(state.metrics.affinity, state.labels.group(target.name),
                            "off").inc()
    return key


async def _pin_response(req: ModelRequest, cand: Candidate) -> bool:
    """Pin a Responses answer's id once it is known, so the turn that names it as
    ``previous_response_id`` comes back here; whether the id is known yet."""
    turn = req.turn
    if turn is None or turn.response_id is None:
        return False
    if req.affinity is not None:
        group = req.target.group
        await req.state.affinity.remember(response_key(group.name, turn.response_id).digest,
                                          cand.counter_key, group.affinity.ttl_s)
    return True


@dataclass(slots=True)
class _Attempt:
    """One try at one candidate: what the relays and the accounting need about it."""

    cand: Candidate
    up: str  # the provider's wire dialect for this request (ProviderType.wire)
    ptype: ProviderType  # the provider's type: transport and wire <-> hub transforms
    sent: float = 0.0  # perf_counter when the upstream request went out
    sent_loop: float = 0.0  # the same moment on the loop's clock (deadlines run on it)
    reservation: Any = None  # the in-flight estimate on the candidate's counter
    ended: bool = False  # the upstream's terminal event was relayed: its answer is whole
    span: Any = None  # its trace span when tracing is on (tracing.Tracing)


async def _attempt_loop(req: ModelRequest) -> web.StreamResponse:
    ex, down = req.ex, req.down
    try:
        return await _attempts(req)
    except RouterError as err:
        if down is None or down.out is None:
            raise
        # Keepalives committed the stream while the router waited: only in-band now.
        ex.error = ex.error or err.code
        return await _end_in_band(req, down, err.message)
    except asyncio.CancelledError:
        if down is not None and down.out is not None and req.state.draining \
                and not down.client_gone:
            # Cut at the end of the shutdown grace, with the client still there (a stream
            # under way, or one keepalives committed): say why instead of just dropping.
            ex.status, ex.error = 200, "shutdown"
            with suppress(TimeoutError):
                async with asyncio.timeout(_CUT_NOTICE_S):  # the process is exiting
                    await _end_in_band(req, down, "The router is shutting down and cut this "
                                       "stream at the end of its grace period; retry the "
                                       "request.")
        raise


async def _attempts(req: ModelRequest) -> web.StreamResponse:
    state, cfg, ex, target, prefs = req.state, req.cfg, req.ex, req.target, req.prefs
    group = target.group
    tried: set[CounterKey] = set()
    ctx = PickContext(state.counters, cfg.pricing, state.latency, state.round_robin, group.name)
    last: AttemptFailure | None = None
    max_attempts: int | None = group.max_attempts
    start = time.monotonic()
    # No attempt starts after the group's longest total timeout has passed.
    deadline = start + max(cfg.providers[m.provider].timeouts.total for m in group.members)
    wait_until = min(start + group.max_wait_s, deadline)
    while True:
        cands = collect_candidates(cfg, target, ex.kind, state.health, state.counters, prefs,
                                   tried)
        if req.turn is not None:
            req.turn.narrow(cands)
        if max_attempts is None:
            max_attempts = max(1, min(3, cands.total))
        if not cands.total and last is None and cands.excluded:
            raise BadRequest(f"The X-Router-Provider-* headers exclude every provider of "
                             f"'{target.name}' (its providers: "
                             f"{', '.join(sorted(cands.excluded))}).",
                             code="no_provider_allowed")
        cand: Candidate | None
        if req.affinity is not None and not ex.attempts and cands.eligible:
            # The first attempt only: failover ignores affinity, and the pin then
            # follows whichever candidate answers (_attempt).
            pinned = await state.affinity.lookup(req.affinity.digest)
            cand, ex.affinity = pick_with_affinity(cands.eligible, pinned, ctx,
                                                   group.affinity.slack, req.estimate)
            state.metrics.child(state.metrics.affinity, state.labels.group(group.name),
                                ex.affinity).inc()
        else:
            cand = pick_candidate(cands.eligible, group.strategy, ctx, prefs)
        if cand is None:
            now = time.monotonic()
            if cands.soonest_recovery is not None and cands.soonest_recovery <= wait_until:
                await _wait(ex, req.down, cands.soonest_recovery - now + 0.001)
                continue
            raise _exhausted(last, cands, now, ex)
        ex.attempts += 1
        if ex.attempts == 2:
            state.metrics.child(state.metrics.fallbacks,
                                state.labels.group(group.name)).inc()
        try:
            return await _attempt(req, cand)
        except AttemptFailure as failure:
            last = failure
            tried.add(cand.counter_key)
            ex.failures.append(f"{cand.provider.name}/{cand.key.label}:{failure.reason}")
            if failure.status is not None and not is_retryable(failure.status):
                return _upstream_client_error(ex, cand, failure, state.redactor)
            if not _try_again(ex.attempts, max_attempts, prefs, deadline):
                # Tell the client when the soonest candidate recovers, tried ones included.
                every = collect_candidates(cfg, target, ex.kind, state.health, state.counters,
                                           prefs)
                raise _exhausted(last, every, time.monotonic(), ex) from None


def _try_again(attempts: int, max_attempts: int, prefs: Preferences, deadline: float) -> bool:
    """The one retry decision after a retryable failure: the client allows fallbacks, the
    group's ``max_attempts`` are not used up and the request's deadline has not passed."""
    return prefs.allow_fallbacks and attempts < max_attempts and time.monotonic() < deadline


async def _wait(ex: Exchange, down: Downstream | None, seconds: float) -> None:
    """Wait for a cooling candidate (``max_wait_s``); a stream gets keepalives meanwhile."""
    if down is None:
        await asyncio.sleep(seconds)
        return
    async with down.keepalive(ex, lambda out: _router_headers(out, ex, None)):
        await asyncio.sleep(seconds)


async def _end_in_band(req: ModelRequest, down: Downstream, message: str
                       ) -> web.StreamResponse:
    """End a committed stream with an error event in the client's dialect."""
    assert down.out is not None
    ex = req.ex
    if req.turn is not None:
        event = req.turn.fail_event(message)
    else:
        event = rl.end_event(ex.client, message)
    with suppress(ConnectionError):
        await down.write(ex, event)
        await down.finish(ex)
    return down.out


def _exhausted(last: AttemptFailure | None, cands: CandidateSet, now: float,
               ex: Exchange) -> RouterError:
    """The error for a request no candidate could serve."""
    soonest = cands.soonest_recovery
    wait = max(1.0, soonest - now) if soonest is not None else None
    if last is not None:
        ex.error = last.reason
        if last.status in (401, 403):
            return _auth_failed(ex)
        if last.status == 429:
            return RateLimited(f"{last.message}; every candidate is rate limited upstream.",
                               retry_after=parse_retry_after(last.retry_after) or wait or 1.0)
        if last.reason == "timeout":
            return UpstreamTimeout(last.message)
        return UpstreamError(last.message)
    if wait is not None:
        ex.error = "cooling_down"
        return Unavailable("Every upstream for this model is cooling down; retry later.",
                           retry_after=wait)
    if cands.over_quota:
        return RateLimited("Every upstream key for this model has used its daily request quota.",
                           code="quota_exceeded", retry_after=_seconds_to_utc_midnight())
    if cands.bad:
        return _auth_failed(ex)
    return Unavailable("No upstream can serve this model right now.", retry_after=1.0)


def _auth_failed(ex: Exchange) -> RouterError:
    # The operator must fix the keys (a reload clears 'bad'): nothing the client did, and
    # no quota. A short Retry-After lets well-behaved clients come back after a fix.
    ex.error = "upstream_auth_failed"
    return UpstreamError("Every upstream key for this model was rejected by its provider "
                         "(401/403); an admin must fix the router's keys.",
                         code="upstream_auth_failed", retry_after=_AUTH_RETRY_AFTER_S)


def _upstream_client_error(ex: Exchange, cand: Candidate, failure: AttemptFailure,
                           redactor: Redactor) -> web.Response:
    """An upstream 4xx that is the client's fault: pass it on in the client's dialect,
    without any configured secret it may echo."""
    assert failure.status is not None
    ex.status = failure.status
    ex.error = failure.reason
    # A Responses client reads OpenAI-shaped errors.
    client = "openai" if ex.client == "responses" else ex.client
    ptype = provider_type(cand.provider.type)
    up = ptype.wire(cand.provider, client, cand.member.model)
    body = failure.body
    try:
        orjson.loads(body)
        translated = rl.translate_error(client, up, ptype, failure.status, body)
        body = translated if translated is not None else body
    except orjson.JSONDecodeError:
        err = BadRequest(failure.message)
        body = error_body(err, anthropic=ex.client == "anthropic")
    resp = web.Response(status=failure.status, body=redactor.bytes(body),
                        content_type="application/json")
    _router_headers(resp, ex, cand)
    return resp


def _usd_text(cost: float) -> str:
    """``cost`` in plain decimal notation with the shortest digits that parse back to the
    same float, so the headers of many answers sum to exactly what /v1/usage and the
    access log count (8 fixed decimals lost up to 5e-9 USD an answer)."""
    return f"{Decimal(repr(cost)):f}"


def _router_headers(resp: web.StreamResponse, ex: Exchange, cand: Candidate | None) -> None:
    h = resp.headers
    h["X-Router-Group"] = ex.group
    if cand is not None:
        h["X-Router-Provider"] = cand.provider.name
        h["X-Router-Model"] = cand.member.model
        h["X-Router-Key"] = cand.key.label
    h["X-Router-Attempts"] = str(ex.attempts)
    if ex.dropped_tools:
        h["X-Router-Dropped-Tools"] = ",".join(ex.dropped_tools)


async def _attempt(req: ModelRequest, cand: Candidate) -> web.StreamResponse:
    state, cfg, ex, down = req.state, req.cfg, req.ex, req.down
    provider, key = cand.provider, cand.key
    ex.provider, ex.model, ex.key = provider.name, cand.member.model, key.label
    turn = req.turn
    ptype = provider_type(provider.type)
    if turn is None:
        att = _Attempt(cand, ptype.wire(provider, ex.client, cand.member.model), ptype)
        path, up_body = rl.upstream_request(ex.client, ex.kind, ptype, provider, req.body,
                                            cand.member.model, att.up, req.stream)
    else:
        att = _Attempt(cand, turn.dialect(ptype, provider, cand.member.model), ptype)
        path, up_body = turn.upstream_request(ptype, provider, att.up, cand.member.model,
                                              req.stream)
        ex.dropped_tools = turn.dropped
    if req.affinity is not None and ptype.sets_prompt_cache_key \
            and "prompt_cache_key" not in up_body:
        # So the provider's own cache routing groups requests as ours does (up_body is
        # the router's copy: the client's body stays untouched).
        up_body["prompt_cache_key"] = derived_cache_key(req.affinity)
    headers = ptype.passthrough_headers(ex.client, provider, req.http.headers)
    tracing = state.tracing
    if tracing is not None and ex.span is not None:  # writes traceparent into headers
        att.span = tracing.start_attempt(ex.span, ex, provider, key.label, cand.member.model,
                                         req.body, headers)
    call = UpstreamCall(provider, key, path, orjson.dumps(up_body), up_body, req.stream,
                        headers, cand.member.model)
    att.reservation = state.counters.reserve(cand.counter_key, req.estimate,
                                               req.target.state_name)
    probe = state.health.begin(provider.name, key.label)
    att.sent = time.perf_counter()
    att.sent_loop = asyncio.get_running_loop().time()  # deadlines run on the loop's clock
    t = provider.timeouts
    resp: UpstreamResponse | None = None
    failed: AttemptFailure | None = None
    try:
        assert state.session is not None
        try:
            # Connecting is bounded separately (sock_connect) and counts toward first_byte.
            if down is None:
                with state.deadlines.guard(att.sent_loop + min(t.first_byte, t.total)):
                    resp = await ptype.send(state.session, call)
            else:
                async with asyncio.timeout(min(t.first_byte, t.total)):
                    async with down.keepalive(ex, lambda out: _router_headers(out, ex, cand)):
                        resp = await ptype.send(state.session, call)
        except (Exception, TimeoutError) as exc:
            raise failure_from_exception(exc, provider.name) from None
        state.observe_latency(cand.counter_key, time.perf_counter() - att.sent)
        _ratelimit_gauges(state, cand, resp)
        if resp.status >= 400:
            raise await _status_failure(state, att, resp)
        if req.affinity is not None:
            # The upstream took the prompt, so its cache now holds it: pin (or refresh).
            await state.affinity.remember(req.affinity.digest, cand.counter_key,
                                          req.target.group.affinity.ttl_s)
        if down is not None and ptype.is_stream(resp.headers):
            return await _relay_stream(req, att, resp, down)
        if down is not None:
            # A whole answer to a stream request: relayed as the stream it would have
            # been, never as a raw JSON 200 to a stream client.
            return await _relay_stream(req, att, await _answer_as_stream(req, att, resp), down)
        return await _relay_body(req, att, resp)
    except AttemptFailure as failure:
        failed = failure
        ex.upstream_s += time.perf_counter() - att.sent
        state.counters.settle(att.reservation, 0, 0, cfg.error_penalty)
        if failure.status is None or failure.status >= 500 or failure.status == 429:
            state.health.record_failure(provider.name, key.label, cfg.circuit,
                                        rate_limited=failure.status == 429,
                                        retry_after=_retry_after_s(failure))
        state.metrics.child(state.metrics.upstream_errors, provider.name, key.label,
                            failure.reason).inc()
        if down is None or not down.committed:
            raise
        # Committed by keepalives: the failure can only be reported in-band.
        ex.error = failure.reason
        ex.failures.append(f"{provider.name}/{key.label}:{failure.reason}")
        return await _end_in_band(req, down, f"{failure.message} before answering")
    finally:
        # Settles at an estimate if nothing better is known (client gone, cancelled).
        state.counters.settle(att.reservation, 0, 0)
        if probe:
            state.health.release(provider.name, key.label)  # no-op once judged
        ex.key_state = state.health.label(provider.name, key.label)
        if resp is not None:
            # A whole answer's connection may still be reusable: release() lets its EOF
            # arrive in the background; anything else is cut.
            if att.ended:
                resp.release()
            else:
                resp.close()
        if att.span is not None and tracing is not None:
            tracing.end_attempt(att.span, ex, resp.status if resp is not None else None,
                                failed.reason if failed is not None else None)


def _retry_after_s(failure: AttemptFailure) -> float | None:
    return parse_retry_after(failure.retry_after)


async def _status_failure(state: RouterState, att: _Attempt,
                          resp: UpstreamResponse) -> AttemptFailure:
    cand, status = att.cand, resp.status
    try:
        async with asyncio.timeout(cand.provider.timeouts.idle):
            # Past the bound the body is dropped: the client gets the router's own message.
            body = await resp.read(state.config.upstream_limits.max_error_body_bytes)
    except (Exception, TimeoutError):
        body = b""
    if status in (401, 403):
        state.health.mark_bad(cand.provider.name, cand.key.label, status)
    failure = att.ptype.failure(cand.provider.name, status, resp.headers, body)
    # An upstream's retry hint is capped (circuit.cooldown_max_s): one answer must not
    # take a key out for longer than the operator allows.
    retry_after = parse_retry_after(failure.retry_after)
    if retry_after is not None:
        retry_after = min(retry_after, state.config.circuit.cooldown_max_s)
    failure.retry_after = f"{retry_after:g}" if retry_after is not None else None
    return failure


_RATELIMIT_HEADERS: Final = (("requests", "x-ratelimit-remaining-requests"),
                             ("tokens", "x-ratelimit-remaining-tokens"))


def _ratelimit_gauges(state: RouterState, cand: Candidate, resp: UpstreamResponse) -> None:
    for kind, header in _RATELIMIT_HEADERS:
        value = resp.headers.get(header)
        if value is not None:
            with suppress(ValueError):
                state.metrics.child(state.metrics.ratelimit_remaining, cand.provider.name,
                                    cand.key.label, kind).set(float(value))


def _account(req: ModelRequest, att: _Attempt, usage: Usage, events_seen: int = 0,
             *, complete: bool = True) -> None:
    """Count what one answer used: selection counters, the caller's spend and limits,
    metrics, and the exchange (access log, trace, cost header). The one place usage is
    counted, so the one place upstream counts out of range are replaced (upstream_usage).

    ``complete`` False: a stream that ended early. It counts what it reported, but at
    least one completion token per event relayed, and the prompt estimate if it
    reported no prompt; and it does not count as a success of the key.
    """
    state, cfg, ex, cand = req.state, req.cfg, req.ex, att.cand
    usage = state.rejected_usage.settle(cand.provider.name, usage, ex.prompt_estimate,
                                        max(req.estimate - ex.prompt_estimate, events_seen, 1))
    if not complete and (usage.completion < events_seen or not usage.prompt):
        # Reported counts of a stream cut short can be provisional: Anthropic's
        # message_start says output_tokens: 1 and gives the real count only at the end,
        # so a client that read the text and left early would otherwise pay for one token.
        usage = Usage(usage.prompt or ex.prompt_estimate, max(usage.completion, events_seen),
                      usage.cached)
    state.counters.settle(att.reservation, usage.prompt, usage.completion, cfg.request_penalty)
    if complete:
        state.health.record_success(cand.provider.name, cand.key.label, cfg.circuit)
    ex.prompt_tokens, ex.completion_tokens = usage.prompt, usage.completion
    ex.cost = cost_usd(cfg.pricing, cand.member.model, usage.prompt, usage.completion,
                       usage.cached)
    m = state.metrics
    model = state.labels.model(cand.provider.name, cand.member.model)
    for kind, n in (("prompt", usage.prompt), ("completion", usage.completion),
                    ("cached", usage.cached)):
        if n > 0:
            m.child(m.tokens, cand.provider.name, model, cand.key.label, ex.caller.user,
                    kind).inc(n)
    m.child(m.cost, ex.caller.user, cand.provider.name, model).inc(ex.cost or 0.0)
    if ex.admission is not None:
        state.store.record(ex.admission, cand.provider.name, cand.counted_model, usage.prompt,
                           usage.completion, ex.cost)


async def _relay_body(req: ModelRequest, att: _Attempt, resp: UpstreamResponse
                      ) -> web.Response:
    state, ex, cand, up = req.state, req.ex, att.cand, att.up
    try:
        # total counts from the attempt's start, the wait for headers included.
        with state.deadlines.guard(att.sent_loop + cand.provider.timeouts.total):
            raw = await resp.read(req.cfg.upstream_limits.max_response_bytes)
    except (Exception, TimeoutError) as exc:
        raise failure_from_exception(exc, cand.provider.name) from None
    ex.upstream_s += time.perf_counter() - att.sent
    # Passed on untouched: read only its usage if that is cheap (rl.passthrough_usage).
    usage = rl.passthrough_usage(up, raw) if ex.client == up and req.turn is None else None
    out: bytes | None = None
    if req.turn is not None:
        try:
            out, usage = await req.turn.answer(up, att.ptype, raw, cand)
            await _pin_response(req, cand)
        except (ValueError, KeyError, TypeError):
            raise AttemptFailure("bad_response", f"upstream '{cand.provider.name}' sent an "
                                 "answer that is not a valid JSON response") from None
    elif usage is None:
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError
            out = rl.translate_answer(ex.client, up, att.ptype, doc, ex.answer_model)
        except (ValueError, KeyError, TypeError):
            raise AttemptFailure("bad_response", f"upstream '{cand.provider.name}' sent an "
                                 "answer that is not a valid JSON response") from None
        usage = rl.answer_usage(ex.client, up, att.ptype, doc)
    _account(req, att, usage)
    payload = state.redactor.bytes(raw if out is None else out)
    if att.span is not None and req.state.tracing is not None:
        req.state.tracing.record_output(att.span, payload)
    ex.status = 200
    resp_out = web.Response(status=200, body=payload, content_type="application/json")
    coding = req.coding
    if coding is not None and len(payload) >= MIN_COMPRESS_BYTES:
        resp_out.body = compress_body(coding, payload)
        resp_out.headers["Content-Encoding"] = coding
        resp_out.headers["Vary"] = "Accept-Encoding"
    _router_headers(resp_out, ex, cand)
    elapsed = time.perf_counter() - ex.t0
    resp_out.headers["X-Router-Latency-Ms"] = f"{elapsed * 1000:.1f}"
    resp_out.headers["X-Router-Overhead-Ms"] = f"{max(0.0, elapsed - ex.upstream_s) * 1000:.3f}"
    resp_out.headers["X-Router-Cost-USD"] = _usd_text(ex.cost or 0.0)
    ex.bytes_out = len(resp_out.body) if isinstance(resp_out.body, bytes) else len(payload)
    return resp_out


async def _answer_as_stream(req: ModelRequest, att: _Attempt, resp: UpstreamResponse
                            ) -> UpstreamResponse:
    """The events of a whole answer (answer_stream.py); ``bad_response`` if it is not a
    valid completion of the kind asked for."""
    name = att.cand.provider.name
    try:
        with req.state.deadlines.guard(att.sent_loop + att.cand.provider.timeouts.total):
            raw = await resp.read(req.cfg.upstream_limits.max_response_bytes)
    except (Exception, TimeoutError) as exc:
        raise failure_from_exception(exc, name) from None
    events = rl.answer_events(att.up, req.ex.kind, raw) if req.turn is None else None
    if events is None:
        raise AttemptFailure("bad_response", f"upstream '{name}' answered a stream request "
                             "without a stream, and not with a valid completion either")
    return AnswerStream(events)


async def _relay_stream(req: ModelRequest, att: _Attempt, resp: UpstreamResponse,
                        down: Downstream) -> web.StreamResponse:
    t = att.cand.provider.timeouts
    relay = rl.make_relay(req.ex.client, att.up, att.ptype, req.ex.answer_model,
                          req.include_usage) \
        if req.turn is None else req.turn.relay(att.up, att.ptype)
    max_event = req.cfg.upstream_limits.max_event_bytes
    events = upstream_events(resp, att.sent + t.first_byte, t.idle, att.sent + t.total,
                             max_event, att.ptype.events(max_event))
    try:
        return await _relay_events(req, att, relay, events, down)
    finally:
        await events.aclose()  # stops its watchdog now, even if the client went away


async def _relay_events(req: ModelRequest, att: _Attempt, relay: rl.Relay,
                        events: AsyncGenerator[list[bytes], None], down: Downstream
                        ) -> web.StreamResponse:
    state, cfg, ex, cand = req.state, req.cfg, req.ex, att.cand
    provider = cand.provider

    def headers(out: web.StreamResponse) -> None:
        _router_headers(out, ex, cand)

    # Wait for the first event before committing, so a failure here can still fail over;
    # a long wait commits early to send keepalive comments through idle-timeout proxies.
    try:
        async with down.keepalive(ex, headers):
            batch = await events.__anext__()
    except StopAsyncIteration:
        raise AttemptFailure("closed", f"upstream '{provider.name}' closed the stream "
                             "before sending anything") from None
    except (Exception, TimeoutError) as exc:
        raise failure_from_exception(exc, provider.name) from None
    ex.ttft = time.perf_counter() - ex.t0
    ex.upstream_s += time.perf_counter() - att.sent
    names = state.labels
    state.metrics.child(state.metrics.ttft, names.group(ex.group), provider.name,
                        names.model(provider.name, cand.member.model)).observe(ex.ttft)
    seen = 0
    answered = False  # a Responses answer was stored (and its id pinned)
    failure: str | None = None
    try:
        await down.commit(ex, headers)
        while True:
            parts: list[bytes] = []
            for raw in batch:
                seen += 1
                data = relay.feed(raw)
                if data:
                    parts.append(data)
            if req.turn is not None and not answered:
                await req.turn.after_events(cand)  # stored before the client can follow up
                answered = await _pin_response(req, cand)
            if parts:  # one write (one flush) for the events of one upstream read
                await down.write(ex, state.redactor.bytes(
                    parts[0] if len(parts) == 1 else b"".join(parts)))
            if relay.done or relay.failure is not None:
                # The terminal event ([DONE], message_stop, response.completed) or an
                # error event went out: end the client's response now, not at the
                # upstream's EOF, which may linger (a client that left then was a 499).
                att.ended = relay.done
                break
            waited = time.perf_counter()
            try:
                batch = await events.__anext__()
            except StopAsyncIteration:
                break
            finally:
                ex.upstream_s += time.perf_counter() - waited
        if not relay.done:
            failure = relay.failure or "closed"
    except (ConnectionError, asyncio.CancelledError):
        # The client went away, or the server is cutting streams at the end of its grace
        # period (then _attempt_loop tells a client still there why): stop the upstream
        # at once and count what was used so far.
        ex.status = 499
        ex.error = "client_disconnected"
        _account(req, att, relay.usage, seen, complete=False)
        raise
    except (Exception, TimeoutError) as exc:
        failure = failure_from_exception(exc, provider.name).reason
    if failure is not None:
        ex.error = failure
        state.metrics.child(state.metrics.upstream_errors, provider.name, cand.key.label,
                            failure).inc()
        state.health.record_failure(provider.name, cand.key.label, cfg.circuit)
        # b"" when the upstream's own error event already ended the client's stream.
        event = relay.fail(f"upstream '{provider.name}' stream was interrupted ({failure})")
        if event:
            with suppress(ConnectionError):
                await down.write(ex, event)
        _account(req, att, relay.usage, seen, complete=False)
    else:
        _account(req, att, relay.usage, seen)
        _observe_decoding(req, att, ex.completion_tokens)
    with suppress(ConnectionError):
        await down.finish(ex)
    assert down.out is not None
    return down.out


def _observe_decoding(req: ModelRequest, att: _Attempt, completion_tokens: int) -> None:
    """time_per_output_token_seconds: the stream's time after its first event, per token
    after the first (the first token's wait is TTFT's)."""
    ex = req.ex
    if completion_tokens > 1 and ex.ttft is not None:
        decoding = time.perf_counter() - ex.t0 - ex.ttft
        m, names = req.state.metrics, req.state.labels
        provider = att.cand.provider.name
        m.child(m.tpot, names.group(ex.group), provider,
                names.model(provider, att.cand.member.model)).observe(
            decoding / (completion_tokens - 1))


def new_request_id(header: str | None) -> str:
    if header and len(header) <= 128 and header.isprintable():
        return header
    # 128 bits as 32 hex digits, like uuid4().hex. An id only correlates log lines, so it
    # needs uniqueness, not secrecy: a seeded PRNG spares a getrandom() syscall per
    # request (uuid4 and os.urandom both showed in profiles).
    return f"{_IDS.getrandbits(128):032x}"
