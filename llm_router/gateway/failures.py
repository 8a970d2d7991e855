"""How a request ends when no upstream answered it: the error for exhausted candidates,
or an upstream's 4xx (the client's fault) passed on in the client's dialect."""

from __future__ import annotations

import time
from typing import Final

import orjson
from aiohttp import web

from ..errors import (
    BadRequest,
    RateLimited,
    RouterError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from ..ledger.limits import seconds_to_day_end
from ..observe.exchange import Exchange
from ..observe.redact import Redactor
from ..providers import AttemptFailure
from ..providers.registry import provider_type
from ..state.health import parse_retry_after
from .attempt import router_headers
from .relay import translate_error
from .routing import Candidate, CandidateSet

__all__ = ["exhausted", "upstream_client_error"]

_AUTH_RETRY_AFTER_S: Final = 30.0  # every key rejected: until an admin reloads fixed keys


def exhausted(last: AttemptFailure | None, cands: CandidateSet, now: float,
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
                           code="quota_exceeded", retry_after=seconds_to_day_end(time.time()))
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


def upstream_client_error(ex: Exchange, cand: Candidate, failure: AttemptFailure,
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
        translated = translate_error(client, up, ptype, failure.status, body)
        body = translated if translated is not None else body
    except orjson.JSONDecodeError:
        err = BadRequest(failure.message)
        body = error_body(err, anthropic=ex.client == "anthropic")
    resp = web.Response(status=failure.status, body=redactor.bytes(body),
                        content_type="application/json")
    router_headers(resp, ex, cand)
    return resp
