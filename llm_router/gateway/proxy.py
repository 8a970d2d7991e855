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
import time
from contextlib import suppress
from dataclasses import replace
from typing import Final

import orjson
from aiohttp import web
from multidict import istr

from ..errors import (
    BadRequest,
    RouterError,
)
from ..hub.usage import BYTES_PER_TOKEN
from ..ledger.accounting import estimate_cost
from ..ledger.usage import CounterKey, completion_ceiling
from ..observe.exchange import Exchange
from ..observe.labels import OTHER
from ..observe.metrics import Series
from ..providers import (
    UPSTREAM_ERRORS,
    AttemptFailure,
    UpstreamCall,
    UpstreamResponse,
    failure_from_exception,
)
from ..providers.base import ProviderType
from ..providers.registry import PROVIDER_TYPES, provider_type
from ..state.health import parse_retry_after
from ..state.store import MemoryStore
from .affinity import (
    SPILLED,
    MemoryAffinityStore,
    SharedAffinityStore,
    affinity_key,
    pick_one,
    pick_with_affinity,
)
from .answer import answer_as_stream, relay_body, relay_stream
from .attempt import Attempt, router_headers
from .cached_answer import open_cache, serve_hit
from .capabilities import (
    NoCapableMember,
    filters,
    is_context_error,
    known_window,
    narrow,
    usable_window,
)
from .compression import negotiate
from .deadlines import Guard
from .downstream import Downstream
from .failures import exhausted, upstream_client_error
from .model_request import ModelRequest
from .relay import end_event, upstream_request
from .request_body import BODY_SIZE, buffered_body, parse_json, read_json
from .request_check import refuse_a_key, validate_body
from .responses_turn import ResponsesTurn
from .router_state import RouterState
from .routing import (
    Candidate,
    GroupPlan,
    PickContext,
    Preferences,
    Target,
    collect_candidates,
    group_plan,
    is_retryable,
    pick_candidate,
    priced_target,
    resolve_target,
)

__all__ = ["forward"]

log = logging.getLogger("llm_router.access")

_STREAMED_KINDS: Final = frozenset({"chat", "completions", "messages", "responses"})
_CUT_NOTICE_S: Final = 1.0  # how long a stream cut at shutdown may take to say so
# A wait for a cooling candidate ends this much after its cooldown, so the next pick
# finds it ready (available_at <= now) rather than an instant early and still cooling.
_PAST_COOLDOWN_S: Final = 0.001
# ProviderType's own passthrough_headers: a type that does not override it keeps none.
_KEEPS_NONE: Final = ProviderType.passthrough_headers
# Strategies that pick the one eligible candidate there is without reading anything
# (round-robin's turn counts even then).
_PICK_THE_ONE: Final = frozenset({"inverse-weight", "priority", "latency", "price"})


async def forward(request: web.Request, state: RouterState, ex: Exchange) -> web.StreamResponse:
    """Serve one model request end to end; raises :class:`RouterError` before any byte."""
    cfg = state.config  # this request keeps this config even if a reload swaps it
    body = ex.body
    if body is None:
        raw = buffered_body(request, cfg)
        if raw is None:  # still arriving: read within the body's bounds
            body = await read_json(request, cfg)
            size = request[BODY_SIZE]
        else:
            body, size = parse_json(raw), len(raw)
    else:  # read early by the route (count_tokens)
        size = request.get(BODY_SIZE, 0)
    kind = ex.kind
    model = validate_body(kind, body)
    refuse_a_key(model, cfg, state.keys)
    ex.group = model  # until resolved: a 404's access line keeps the name sent (cut)
    caller = ex.caller
    target = resolve_target(cfg, model, caller.aliases, state.catalog)
    ex.group, ex.asked, ex.alias = target.name, target.asked, target.alias
    metrics, labels = state.metrics, state.labels
    if target.alias:
        metrics.child(metrics.alias_requests, target.alias, labels.group(target.name)).inc()
    resolved = group_plan(cfg, target, kind)
    plan: GroupPlan | None = resolved
    if resolved.direct:
        member = target.group.members[0]
        listed = state.catalog.models(member.provider)
        if labels.model(member.provider, member.model) == OTHER and (
                listed is None or member.model not in listed):
            # A name from the client: bounded state. A model its provider listed is
            # kept under its own name: discovery bounds those (docs/catalog.md).
            target, plan = target.folded(OTHER), None
    if caller.models is not None or caller.key_models is not None:
        caller.check(target)
    budgeted = caller.budget is not None or caller.key_budget is not None
    if budgeted:  # every call it can reach must be charged
        priced = priced_target(cfg.pricing, target)
        if priced is not target:
            target, plan = priced, None
    turn = None
    if kind == "responses":
        turn = await ResponsesTurn.begin(body, target.answer_model, state.responses,
                                         caller.user)
        turn.check_target(target, cfg.providers)
    if plan is None:
        plan = group_plan(cfg, target, kind)
    planned = target  # the target of plan
    if not plan.serves:
        # Say what each provider type of the group does serve (the registry knows).
        types = sorted({cfg.providers[m.provider].type for m in target.group.members})
        served = "; ".join(f"{t} serves {', '.join(sorted(provider_type(t).serves))}"
                           for t in types)
        raise BadRequest(f"The model '{target.name}' cannot serve {request.path}: none of its "
                         f"providers offers it ({served}).", param="model",
                         code="unsupported_route")
    headers = request.headers
    prefs = Preferences.from_headers(headers, cfg)
    stream = kind in _STREAMED_KINDS and body.get("stream") is True
    ex.stream = stream
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    coding = negotiate(headers.get(_ACCEPT_ENCODING))
    fill = None
    if state.cache.rule(cfg, target.name) is not None:  # else open_cache has nothing to do
        hit, fill = await open_cache(request, state, cfg, ex, target, body, stream)
        if hit is not None:
            return await serve_hit(request, state, ex, hit, stream, include_usage, coding)
    ceiling = completion_ceiling(body)
    # About a token per BYTES_PER_TOKEN bytes. From the bytes really read: a client sending
    # its body chunked (no Content-Length) must not get its prompt reserved at zero.
    prompt_estimate = size // BYTES_PER_TOKEN
    if turn is not None:
        # previous_response_id's conversation
        prompt_estimate += turn.history_bytes // BYTES_PER_TOKEN
    ex.prompt_estimate = prompt_estimate
    if filters(target.group, state.context_bounds, state.catalog):
        # Only the members that can take this request; none: the client's 400, before
        # any limit is charged or any upstream called.
        try:
            group, result = narrow(target.group, target.name, kind, body,
                                   prompt_estimate + (ceiling or 0), state.context_bounds,
                                   state.catalog, turn.history if turn is not None else None)
        except NoCapableMember as err:
            ex.capability = err.result.log()
            raise
        ex.capability = result.log()
        if group is not target.group:
            target = replace(target, group=group)
    # What the request will probably use: selection and tpm count this while it runs.
    estimate = state.counters.estimate(target.state_name, prompt_estimate, ceiling)
    # Budgets and per-user/per-key limits are checked here, before anything is sent; the
    # estimates are reserved so that concurrent requests see each other. A budget
    # reserves the most the request may cost when the client capped its length, so a
    # burst passes the budget by one request at most (docs/teams.md).
    cost = (estimate_cost(cfg.pricing, target.group.members, prompt_estimate,
                          ceiling if ceiling is not None else estimate - prompt_estimate)
            if budgeted else 0.0)
    use = plan.affinity
    if use and (prefs.order or prefs.sort is not None):
        use = False  # the client's order or sort decides (affinity.applies)
    key = affinity_key(body, headers, target.name, target.group.affinity) if use else None
    asked = None
    pins = state.affinity
    if key is not None and type(pins) is SharedAffinityStore:
        # Asked before the admission is awaited, so that both go to Redis in one exchange
        # (the first pick reads the answer, _attempts).
        asked = pins.lookup_soon(key.digest)
    store = state.store
    if type(store) is MemoryStore:  # its admit() is the ledger's, and waits for nothing
        ex.admission = store.ledger.admit(caller, estimate, cost)
    else:
        ex.admission = await store.admit(caller, estimate, cost)
    down = Downstream(request, coding, cfg.keepalive_s, state.deadlines) if stream else None
    if use is not None and key is None:
        # Off for this request: the group's pick stays plain inverse weight.
        ex.affinity = "off"
        _series(plan, "off", state, target.name).inc()
    # The attempts' plan: a target narrowed to its capable members has its own. All
    # positional (keep_pin False): a keyword argument cost this call a quarter more.
    req = ModelRequest(request, state, cfg, ex, target,
                       plan if target is planned else group_plan(cfg, target, kind), prefs,
                       body, include_usage, coding, estimate, down, turn, key, False, fill,
                       asked)
    try:
        return await _attempts(req)
    except RouterError as err:
        if down is None or down.out is None:
            if turn is not None:
                turn.explain(err)  # a pinned conversation says why no one else could answer
            raise
        # Keepalives committed the stream while the router waited: only in-band now.
        ex.error = ex.error or err.code
        return await _end_in_band(req, down, err.message)
    except asyncio.CancelledError:
        if down is not None and down.out is not None and state.draining \
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
    finally:
        store.release(ex.admission)


async def _attempts(req: ModelRequest) -> web.StreamResponse:
    state, cfg, ex, target, prefs = req.state, req.cfg, req.ex, req.target, req.prefs
    group = target.group
    kind = ex.kind
    tried: set[CounterKey] | None = None
    ctx: PickContext | None = None
    last: AttemptFailure | None = None
    max_attempts: int | None = group.max_attempts
    plan = req.plan
    start = time.monotonic()
    # No attempt starts after the group's longest total timeout has passed.
    deadline = start + plan.deadline_s
    wait_until = min(start + group.max_wait_s, deadline)
    metrics = state.metrics
    while True:
        cands = collect_candidates(cfg, target, kind, state.health, state.counters, prefs,
                                   tried, plan)
        if req.turn is not None:
            req.turn.narrow(cands)
        if max_attempts is None:
            total = cands.total  # max(1, min(3, total)), without the two calls
            max_attempts = 3 if total >= 3 else total if total >= 1 else 1
        if not cands.total and last is None and cands.excluded:
            raise BadRequest(f"The X-Router-Provider-* headers exclude every provider of "
                             f"'{target.name}' (its providers: "
                             f"{', '.join(sorted(cands.excluded))}).",
                             code="no_provider_allowed")
        eligible = cands.eligible
        cand: Candidate | None
        if req.affinity is not None and not ex.attempts and eligible:
            # The first attempt only: failover ignores affinity, and the pin then
            # follows whichever candidate answers (_attempt).
            pins = state.affinity
            digest = req.affinity.digest
            if type(pins) is MemoryAffinityStore:
                pinned = pins.pinned(digest)
            elif req.pin_asked is not None and type(pins) is SharedAffinityStore:
                pinned = await pins.looked_up(digest, req.pin_asked)  # asked with admission
            else:
                pinned = await pins.lookup(digest)
            if len(eligible) == 1:
                cand, result = pick_one(eligible[0], pinned, state.counters,
                                        group.affinity.slack, req.estimate,
                                        state.recent_load, time.monotonic())
            else:
                if ctx is None:
                    ctx = PickContext(state.counters, cfg.pricing, state.latency,
                                      state.round_robin, group.name)
                cand, result = pick_with_affinity(eligible, pinned, ctx,
                                                  group.affinity.slack, req.estimate,
                                                  state.recent_load, time.monotonic())
            req.keep_pin = spill = result == SPILLED
            ex.affinity = result = "moved" if spill else result
            _series(plan, result, state, group.name).inc()
        elif len(eligible) == 1 and group.strategy in _PICK_THE_ONE:
            cand = eligible[0]  # what each of these strategies picks of one
        else:
            if ctx is None:
                ctx = PickContext(state.counters, cfg.pricing, state.latency,
                                  state.round_robin, group.name)
            cand = pick_candidate(eligible, group.strategy, ctx, prefs)
        if cand is None:
            now = time.monotonic()
            if cands.soonest_recovery is not None and cands.soonest_recovery <= wait_until:
                req.pin_asked = None  # read before the wait: the pick after it asks again
                await _wait(ex, req.down, cands.soonest_recovery - now + _PAST_COOLDOWN_S)
                continue
            raise exhausted(last, cands, now, ex)
        ex.attempts += 1
        if ex.attempts == 2:
            metrics.child(metrics.fallbacks, state.labels.group(group.name)).inc()
        try:
            return await _attempt(req, cand)
        except AttemptFailure as failure:
            last = failure
            if tried is None:
                tried = set()
            tried.add(cand.counter_key)
            ex.failures.append(f"{cand.provider.name}/{cand.key.label}:{failure.reason}")
            if failure.status is not None and not is_retryable(failure.status):
                wider = _past_context(req, target, cand, failure)
                if wider is None or not _try_again(ex.attempts, max_attempts, prefs,
                                                   deadline):
                    return upstream_client_error(ex, cand, failure, state.redactor)
                target = wider  # the key is healthy: no cooldown, only a learnt window
                plan = group_plan(cfg, target, kind)
                continue
            if not _try_again(ex.attempts, max_attempts, prefs, deadline):
                # Tell the client when the soonest candidate recovers, tried ones included.
                every = collect_candidates(cfg, target, kind, state.health, state.counters,
                                           prefs)
                raise exhausted(last, every, time.monotonic(), ex) from None


def _series(plan: GroupPlan, result: str, state: RouterState, group: str) -> Series:
    """``affinity_total`` of the target's group for ``result``: resolved once per plan."""
    metrics = state.metrics
    hit = plan.series.get(result)
    if hit is not None and hit[0] is metrics:  # routers in one process may share a config
        return hit[1]
    series = metrics.child(metrics.affinity, state.labels.group(group), result)
    plan.series[result] = (metrics, series)
    return series


def _past_context(req: ModelRequest, target: Target, cand: Candidate,
                  failure: AttemptFailure) -> Target | None:
    """After an upstream's context-length error: learn that this member's window is below
    the request's size, and return the target without it, or None when the error is
    another one or no other member may fit (the client then gets the upstream's 400)."""
    if not is_context_error(failure.status, failure.body):
        return None
    ex, member = req.ex, cand.member
    tokens = ex.prompt_estimate + (completion_ceiling(req.body) or 0)
    state = req.state
    if cand.counted_model == member.model:  # never a model name a client made up
        state.context_bounds.learn(cand.provider.name, member.model, tokens,
                                   known_window(member, state.catalog))
    kept = []
    for m in target.group.members:
        window = usable_window(m, state.catalog, state.context_bounds)
        if m != member and (window is None or window >= tokens):
            kept.append(m)
    if not kept:
        return None
    ex.capability = {**(ex.capability or {}), "kept": len(kept),
                     "context_failover": f"{cand.provider.name}/{member.model}"}
    return replace(target, group=replace(target.group, members=tuple(kept)))


def _try_again(attempts: int, max_attempts: int, prefs: Preferences, deadline: float) -> bool:
    """The one retry decision after a retryable failure: the client allows fallbacks, the
    group's ``max_attempts`` are not used up and the request's deadline has not passed."""
    return prefs.allow_fallbacks and attempts < max_attempts and time.monotonic() < deadline


async def _wait(ex: Exchange, down: Downstream | None, seconds: float) -> None:
    """Wait for a cooling candidate (``max_wait_s``); a stream gets keepalives meanwhile."""
    if down is None:
        await asyncio.sleep(seconds)
        return
    async with down.keepalive(ex, lambda out: router_headers(out, ex, None)):
        await asyncio.sleep(seconds)


async def _end_in_band(req: ModelRequest, down: Downstream, message: str
                       ) -> web.StreamResponse:
    """End a committed stream with an error event in the client's dialect."""
    assert down.out is not None
    ex = req.ex
    event = req.turn.fail_event(message) if req.turn is not None else end_event(ex.client, message)
    with suppress(ConnectionError):
        await down.write(ex, event)
        await down.finish(ex)
    return down.out


async def _attempt(req: ModelRequest, cand: Candidate) -> web.StreamResponse:
    """One try at ``cand``: prepare, send, handle the answer; an :class:`AttemptFailure`
    before any byte reached the client goes back to the loop. One coroutine for the
    three steps: each layer of coroutines is paid again on every resumption."""
    att, call = _prepare(req, cand)
    resp: UpstreamResponse | None = None
    failed: AttemptFailure | None = None
    state, ex, down = req.state, req.ex, req.down
    try:
        # Send the call; the answer's status line and headers must come within
        # first_byte (and total); a stream client gets keepalives meanwhile.
        session, loop = state.session, state.loop
        assert session is not None and loop is not None
        att.sent = time.perf_counter()
        att.sent_loop = loop.time()  # deadlines run on the loop's clock
        t = cand.provider.timeouts
        try:
            # Connecting is bounded separately (sock_connect) and counts toward first_byte.
            guard = Guard(state.deadlines, att.sent_loop + min(t.first_byte, t.total), loop)
            if down is None:
                with guard:
                    resp = await att.ptype.send(session, call)
            else:
                # A stream client gets keepalive comments if the wait is long: started by
                # the guard's entry on the wheel, not by one of their own.
                beat = down.keepalive(ex, lambda out: router_headers(out, ex, cand))
                delay = beat.delay()
                if delay is not None:
                    guard.beat(att.sent_loop + delay, beat.fire)
                with guard:
                    try:
                        resp = await att.ptype.send(session, call)
                    finally:
                        if beat.beating:
                            await beat.stop()
        except UPSTREAM_ERRORS as exc:
            raise failure_from_exception(exc, cand.provider.name) from None
        state.observe_latency(cand.counter_key, time.perf_counter() - att.sent)
        headers = resp.headers
        state.metrics.ratelimits(cand.provider.name, cand.key.label,
                                 headers.get(_REMAINING_REQUESTS), headers.get(_REMAINING_TOKENS))
        # The upstream's answer: an error status fails the attempt; anything else goes
        # to the client, whole or as a stream (:mod:`.answer`).
        if resp.status >= 400:
            raise await _status_failure(state, att, resp)
        if req.affinity is not None and not req.keep_pin:
            # The upstream took the prompt, so its cache now holds it: pin (or refresh).
            state.affinity.pin(req.affinity.digest, cand.counter_key,
                               req.target.group.affinity.ttl_s)
        if down is None:
            return await relay_body(req, att, resp)
        if att.ptype.is_stream(resp.headers):
            return await relay_stream(req, att, resp, down)
        # A whole answer to a stream request: relayed as the stream it would have
        # been, never as a raw JSON 200 to a stream client.
        return await relay_stream(req, att, await answer_as_stream(req, att, resp), down)
    except AttemptFailure as failure:
        failed = failure
        _record_failure(req, att, failure)
        if down is None or not down.committed:
            raise
        # Committed by keepalives: the failure can only be reported in-band.
        ex.error = failure.reason
        ex.failures.append(f"{cand.provider.name}/{cand.key.label}:{failure.reason}")
        return await _end_in_band(req, down, f"{failure.message} before answering")
    finally:
        _release(req, att, resp, failed)


def _prepare(req: ModelRequest, cand: Candidate) -> tuple[Attempt, UpstreamCall]:
    """The attempt's record and its upstream call: the body in the provider's wire, the
    headers it keeps, a trace span; then the in-flight reservation and the key's probe."""
    state, ex = req.state, req.ex
    provider, key, member = cand.provider, cand.key, cand.member
    model = member.model
    ex.provider, ex.model, ex.key = provider.name, model, key.label
    turn = req.turn
    stream = req.down is not None
    ptype = PROVIDER_TYPES[provider.type]  # provider_type(), without the call
    if turn is None:
        att = Attempt(cand, ptype.wire(provider, ex.client, model), ptype)
        path, up_body = upstream_request(ex.client, ex.kind, ptype, provider, req.body,
                                            model, att.up, stream)
    else:
        att = Attempt(cand, turn.dialect(ptype, provider, model), ptype)
        path, up_body = turn.upstream_request(ptype, provider, att.up, model, stream)
        ex.dropped_tools = turn.dropped
    if req.affinity is not None and ptype.sets_prompt_cache_key \
            and "prompt_cache_key" not in up_body:
        # So the provider's own cache routing groups requests as ours does (up_body is
        # the router's copy: the client's body stays untouched).
        up_body["prompt_cache_key"] = "llmr-" + req.affinity.digest.hex()  # derived_cache_key
    headers = ptype.passthrough_headers(ex.client, provider, req.http.headers) \
        if type(ptype).passthrough_headers is not _KEEPS_NONE else {}
    tracing = state.tracing
    if tracing is not None and ex.span is not None:  # writes traceparent into headers
        att.span = tracing.start_attempt(ex.span, ex, provider, key.label, model,
                                         req.body, headers)
    call = UpstreamCall(provider, key, path, orjson.dumps(up_body), up_body, stream,
                        headers, model, req.cfg.upstream_limits.max_event_bytes)
    att.reservation = state.counters.reserve(cand.counter_key, req.estimate,
                                             req.target.state_name)
    att.probe = state.health.begin(provider.name, key.label)
    return att, call


def _record_failure(req: ModelRequest, att: Attempt, failure: AttemptFailure) -> None:
    """Count a failed attempt: its reservation at the error penalty, key health (for a
    5xx, 429 or a failure without status), the upstream error metric."""
    state, cfg, cand = req.state, req.cfg, att.cand
    provider, key = cand.provider, cand.key
    req.ex.upstream_s += time.perf_counter() - att.sent
    state.counters.settle(att.reservation, 0, 0, cfg.error_penalty)
    if failure.status is None or failure.status >= 500 or failure.status == 429:
        state.health.record_failure(provider.name, key.label, cfg.circuit,
                                    rate_limited=failure.status == 429,
                                    retry_after=_retry_after_s(failure))
    state.metrics.child(state.metrics.upstream_errors, provider.name, key.label,
                        failure.reason).inc()


def _release(req: ModelRequest, att: Attempt, resp: UpstreamResponse | None,
             failed: AttemptFailure | None) -> None:
    """Whatever the outcome: the reservation, the probe, the connection, the span."""
    state, ex, cand = req.state, req.ex, att.cand
    provider, key = cand.provider, cand.key
    # Settles at an estimate if nothing better is known (client gone, cancelled).
    if not att.reservation.settled:
        state.counters.settle(att.reservation, 0, 0)
    if att.probe:
        state.health.release(provider.name, key.label)  # no-op once judged
    ex.key_state = state.health.label(provider.name, key.label)
    if resp is not None:
        # A whole answer's connection may still be reusable: release() lets its EOF
        # arrive in the background; anything else is cut.
        if att.ended:
            resp.release()
        else:
            resp.close()
    tracing = state.tracing
    if att.span is not None and tracing is not None:
        tracing.end_attempt(att.span, ex, resp.status if resp is not None else None,
                            failed.reason if failed is not None else None)


def _retry_after_s(failure: AttemptFailure) -> float | None:
    return parse_retry_after(failure.retry_after)


async def _status_failure(state: RouterState, att: Attempt,
                          resp: UpstreamResponse) -> AttemptFailure:
    cand, status = att.cand, resp.status
    try:
        async with asyncio.timeout(cand.provider.timeouts.idle):
            # Past the bound the body is dropped: the client gets the router's own message.
            body = await resp.read(state.config.upstream_limits.max_error_body_bytes)
    except UPSTREAM_ERRORS:
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


# Header names as istr: an upstream's headers (aiohttp's CIMultiDictProxy) find them
# without folding their case per lookup; a plain mapping sees the same strings.
_REMAINING_REQUESTS: Final = istr("x-ratelimit-remaining-requests")
_REMAINING_TOKENS: Final = istr("x-ratelimit-remaining-tokens")
_ACCEPT_ENCODING: Final = istr("Accept-Encoding")
