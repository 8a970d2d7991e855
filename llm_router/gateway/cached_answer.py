"""The response cache on one request's way: look up, serve a hit, keep a miss's answer.

:func:`open_cache` runs in ``proxy.forward`` once the target is known and before any
limit is charged. A hit is answered here (:func:`serve_hit`): a whole answer as it was
sent, a stream replayed from it through the client dialect's own ``answer_events`` (the
same event sequence an upstream's stream of that answer gives, usage included). It is
admitted like any request, so rpm, daily requests and concurrency count it, but with
no token or cost estimate and nothing recorded: budgets, tpm and spend never see it.
A miss carries a :class:`Fill` to the answer's relay (:mod:`.answer`), which keeps the
answer only when it is whole and successful.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson
from aiohttp import web

from ..config import Config
from ..dialects.collect import Collector, collector
from ..dialects.registry import DIALECTS
from ..hub.sse import json_object
from ..hub.stream import Usage, split_events
from ..ledger.accounting import cost_usd
from ..observe.exchange import Exchange
from .compression import MIN_COMPRESS_BYTES, compress_body
from .downstream import Downstream
from .response_cache import CACHED_KINDS, Entry, Policy, ResponseCache, cache_key, deterministic
from .router_state import RouterState
from .routing import Candidate, Target

__all__ = ["Fill", "open_cache", "serve_hit"]

_SSE_KINDS: Final = frozenset({"chat", "completions", "messages"})
# The field every successful answer of a route has. A 200 without it (an upstream that
# reports an error in a 200 body) is relayed as it came, but never kept.
_ANSWER_FIELD: Final = {"chat": b'"choices"', "completions": b'"choices"',
                        "embeddings": b'"data"', "messages": b'"content"'}


class Fill:
    """A miss's promise to keep its answer, if it comes back whole and successful."""

    __slots__ = ("_cache", "_collector", "_digest", "_field", "_ttl_s")

    def __init__(self, cache: ResponseCache, digest: bytes, ttl_s: float, kind: str,
                 collect: Collector | None) -> None:
        self._cache = cache
        self._field = _ANSWER_FIELD[kind]
        self._digest = digest
        self._ttl_s = ttl_s
        self._collector = collect

    def keep(self, body: bytes, cand: Candidate, usage: Usage) -> None:
        """Keep a whole (non-streamed) answer, ``body`` exactly as the client got it."""
        if self._field not in body:
            return
        self._cache.put(self._digest, Entry(body, time.time(), cand.provider.name,
                                            cand.member.model, usage.prompt, usage.completion,
                                            usage.cached), self._ttl_s)

    def feed(self, data: bytes) -> None:
        """Stream bytes as sent to the client (one or more events)."""
        if self._collector is not None:
            for event in split_events(data):
                self._collector.feed(event)

    def keep_stream(self, cand: Candidate, usage: Usage) -> None:
        """Keep a stream that ended with its terminal event, as the whole answer."""
        doc = self._collector.answer(usage) if self._collector is not None else None
        if doc is not None:
            self.keep(orjson.dumps(doc), cand, usage)


async def open_cache(request: web.Request, state: RouterState, cfg: Config, ex: Exchange,
                     target: Target, body: dict[str, Any], stream: bool
                     ) -> tuple[Entry | None, Fill | None]:
    """(the cached answer, None) for a hit; (None, a Fill) when the answer is to be
    kept; (None, None) otherwise. Sets ``ex.cache``; nothing when the cache is off."""
    cache = state.cache
    rule = cache.rule(cfg, target.name)
    if rule is None:
        return None, None
    group = state.labels.group(target.name)
    lookup, write = _wanted(request.headers.get("Cache-Control"))
    if ex.kind not in CACHED_KINDS or not (rule.nondeterministic
                                           or deterministic(ex.kind, body)):
        ex.cache = "skip"
        cache.count(group, "skip")
        return None, None
    digest = _key(ex, target, rule, body)
    if lookup:
        entry = await cache.store.get(digest)
        if entry is not None:
            return entry, None  # counted once admitted (serve_hit)
    ex.cache = "miss" if lookup else "skip"
    cache.count(group, ex.cache)
    if not write:
        return None, None
    return None, Fill(cache, digest, rule.ttl_s, ex.kind,
                      collector(ex.client, ex.kind) if stream else None)


def _key(ex: Exchange, target: Target, rule: Policy, body: dict[str, Any]) -> bytes:
    user = ex.caller.user if rule.scope == "user" else None
    return cache_key(ex.kind, target.name, ex.answer_model, user, body)


def _wanted(header: str | None) -> tuple[bool, bool]:
    """(look up, write) by the client's ``Cache-Control``: ``no-cache`` skips the
    lookup, ``no-store`` the write."""
    if not header:
        return True, True
    directives = {d.strip().lower() for d in header.split(",")}
    return "no-cache" not in directives, "no-store" not in directives


async def serve_hit(request: web.Request, state: RouterState, ex: Exchange, entry: Entry,
                    stream: bool, include_usage: bool, coding: str | None
                    ) -> web.StreamResponse:
    """Answer from ``entry``: admitted for rpm and concurrency, charged nothing."""
    ex.admission = await state.store.admit(ex.caller, 0, 0.0)
    try:
        ex.cache = "hit"
        cache, group = state.cache, state.labels.group(ex.group)
        cache.count(group, "hit")
        saved = cost_usd(state.config.pricing, entry.model, entry.prompt, entry.completion,
                         entry.cached)
        if saved:
            cache.saved(group, saved)
        ex.cost, ex.model = 0.0, entry.model
        ex.prompt_tokens = ex.completion_tokens = 0
        age = str(max(0, int(time.time() - entry.stored_at)))
        events = _events(ex, entry.body, include_usage) if stream else None
        if events is None:
            return _whole(ex, entry.body, coding, age)
        down = Downstream(request, coding, 0.0)

        def headers(out: web.StreamResponse) -> None:
            _cache_headers(out, ex, age)

        # The status line, the headers, the events and the stream's end in one send.
        await down.commit(ex, headers, data_follows=True)
        await down.finish(ex, events)
        assert down.out is not None
        return down.out
    finally:
        state.store.release(ex.admission)


def _events(ex: Exchange, body: bytes, include_usage: bool) -> bytes | None:
    """The stream of a cached whole answer in the client's dialect, its usage chunk
    kept only if the client asked for it (as a relayed stream does)."""
    dialect = DIALECTS.get(ex.client)
    doc = json_object(body)
    if dialect is None or doc is None or ex.kind not in _SSE_KINDS:
        return None
    try:
        events = dialect.answer_events(ex.kind, doc)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if events is None:
        return None
    relay = dialect.passthrough(include_usage)
    return b"".join(relay.feed(e) for e in split_events(events))


def _whole(ex: Exchange, body: bytes, coding: str | None, age: str) -> web.Response:
    ex.status = 200
    out = web.Response(status=200, body=body, content_type="application/json")
    if coding is not None and len(body) >= MIN_COMPRESS_BYTES:
        out.body = compress_body(coding, body)
        out.headers["Content-Encoding"] = coding
        out.headers["Vary"] = "Accept-Encoding"
    _cache_headers(out, ex, age)
    out.headers["X-Router-Cost-USD"] = "0"
    ex.bytes_out = len(out.body) if isinstance(out.body, bytes) else len(body)
    return out


def _cache_headers(out: web.StreamResponse, ex: Exchange, age: str) -> None:
    h = out.headers
    h["X-Router-Group"] = ex.group
    h["X-Router-Attempts"] = "0"
    h["X-Router-Cache"] = "hit"
    h["Age"] = age
