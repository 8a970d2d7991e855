"""The record of one request: what it asked, what it did, what it cost.

Every module on the request path writes into it (handlers, ``proxy``, ``downstream``),
and the access-log line and the metrics are made from it when the request ends. It
lives in its own module, below all of them, so none of them imports another to reach it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from ..errors import _ECHO_CHARS, echoed  # a name this long or shorter is logged as is
from ..ledger.accounting import Caller
from ..ledger.limits import Admission

__all__ = ["EXCHANGE", "Exchange"]


@dataclass(slots=True, init=False)
class Exchange:
    """What one request did: the access-log line and the metrics are made from it.

    Made for every request, so its ``__init__`` is written out: the generated one took
    every field as a parameter and cost about 70 % more. It takes what the edge knows at
    the start and sets every other field empty (0, "", None, [] or ()).
    """

    route: str
    request_id: str
    caller: Caller
    kind: str  # chat | completions | embeddings | messages | count_tokens; "" = none
    client: str  # the caller's dialect (hub.stream.Dialect), "openai" unless a route says
    t0: float  # perf_counter at the start: now, unless the edge passes its own
    group: str
    # When an alias chose the group: the model name the client sent, and the pattern.
    asked: str
    alias: str
    provider: str
    model: str
    key: str
    status: int
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    ttft: float | None
    upstream_s: float  # time spent waiting on upstreams: excluded from overhead
    bytes_out: int
    stream: bool
    error: str | None
    # The code of an error the router answered itself (400, 401, 402, 404...): the access
    # line's error when no upstream failure named one; not a failure for traces.
    refusal: str | None
    failures: list[str]  # failed attempts: provider/key:reason
    key_state: str  # health of the last key tried, after the attempt (KeyHealth.label)
    body: dict[str, Any] | None  # parsed once, if a handler needed it early
    prompt_estimate: int  # ~bytes/4 of the request: a cut stream's prompt if unreported
    admission: Admission | None  # the caller's limits and spend (limits.Ledger)
    # Hosted tools the answering chat member went without (Responses, x-router-dropped-tools)
    dropped_tools: tuple[str, ...]
    affinity: str  # hit | new | moved | off (affinity.RESULTS); "" = not a group request
    cache: str  # hit | miss | skip (response_cache.RESULTS); "" = the cache is off
    # What the capability filter did (capabilities.FilterResult.log); None: not filtered.
    capability: dict[str, Any] | None
    span: Any  # the request's trace span when tracing is on (tracing.Tracing)

    def __init__(self, route: str, request_id: str, caller: Caller, kind: str = "",
                 client: str = "openai", t0: float | None = None) -> None:
        self.route = route
        self.request_id = request_id
        self.caller = caller
        self.kind = kind
        self.client = client
        self.t0 = time.perf_counter() if t0 is None else t0
        self.group = ""
        self.asked = ""
        self.alias = ""
        self.provider = ""
        self.model = ""
        self.key = ""
        self.status = 0
        self.attempts = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = None
        self.ttft = None
        self.upstream_s = 0.0
        self.bytes_out = 0
        self.stream = False
        self.error = None
        self.refusal = None
        self.failures = []
        self.key_state = ""
        self.body = None
        self.prompt_estimate = 0
        self.admission = None
        self.dropped_tools = ()
        self.affinity = ""
        self.cache = ""
        self.capability = None
        self.span = None

    def log_line(self) -> dict[str, Any]:
        now = time.perf_counter()
        group, model = self.group, self.model
        return {
            "time": _utc_now_ms(),
            "request_id": self.request_id, "user": self.caller.user, "user_key": self.caller.key,
            # Names the client sent, cut (errors.echoed): a 30 MB model name must not
            # become a 30 MB log line.
            "route": self.route,
            "group": group if len(group) <= _ECHO_CHARS else echoed(group),
            "provider": self.provider,
            "model": model if len(model) <= _ECHO_CHARS else echoed(model),
            "key": self.key, "status": self.status,
            "stream": self.stream, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cost_usd": self.cost,
            "latency_ms": round((now - self.t0) * 1000, 2),
            "ttft_ms": round(self.ttft * 1000, 2) if self.ttft is not None else None,
            "attempts": self.attempts, "failures": self.failures or None,
            "key_state": self.key_state or None, "bytes": self.bytes_out,
            "error": self.error or self.refusal,
            "affinity": self.affinity or None, "cache": self.cache or None,
            "asked": echoed(self.asked) if self.asked else None, "alias": self.alias or None,
            "dropped_tools": list(self.dropped_tools) if self.dropped_tools else None,
            "capability": self.capability,
        }

    @property
    def answer_model(self) -> str:
        """The ``model`` a translated answer names: what the client asked for."""
        return self.asked or self.group


EXCHANGE: Final = web.RequestKey("exchange", Exchange)

# The current second, as isoformat() writes it, formatted once per second.
_second: list[Any] = [-1, ""]


def _utc_now_ms() -> str:
    """Now, as ``datetime.now(UTC).isoformat(timespec="milliseconds")`` writes it
    (``2026-01-02T03:04:05.678+00:00``), with the date and time of day formatted once
    per second rather than per access line."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    if sec != _second[0]:
        _second[0] = sec
        _second[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{ns // 1_000_000:03d}+00:00"
