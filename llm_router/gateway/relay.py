"""Dialects meet providers: the upstream request, and the answer in the client's shape.

The client speaks an inbound dialect (:mod:`llm_router.dialects`); the provider type
(:mod:`llm_router.providers`) says which wire it speaks to that client. When both are
the same the body is forwarded untouched except ``model`` (and ``stream_options``), and
stream events are passed on as the upstream's exact bytes. Otherwise the request goes
client → hub → wire and the answer wire → hub → client, each half done by its owner:
the dialect for the client's side, the provider for the wire's. Either half is skipped
when that side *is* the hub (OpenAI chat).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from ..config import Provider
from ..dialects.openai import OpenAIPassthrough
from ..dialects.registry import DIALECTS
from ..hub.sse import json_object
from ..hub.stream import STREAM_ERROR, Relay, Usage, split_events
from ..providers import ProviderType

__all__ = [
    "STREAM_ERROR",
    "Relay",
    "Usage",
    "answer_events",
    "answer_usage",
    "end_event",
    "make_relay",
    "passthrough_usage",
    "run_feed",
    "translate_answer",
    "translate_error",
    "upstream_request",
]

_HUB: Final = "openai"


def upstream_request(client: str, kind: str, ptype: ProviderType, provider: Provider,
                     body: dict[str, Any], upstream_model: str, wire: str,
                     stream: bool) -> tuple[str, dict[str, Any]]:
    """(path, body) to send: the client's body in the provider's wire dialect."""
    if wire == client:
        out = dict(body)  # shallow: only top-level fields the router owns change
        out["model"] = upstream_model
        if stream and client == _HUB and kind in ("chat", "completions"):
            # Always learn a stream's usage; the relay hides it if the client did not ask.
            opts = out.get("stream_options")
            out["stream_options"] = {**opts, "include_usage": True} if isinstance(
                opts, dict) else {"include_usage": True}
        return DIALECTS[client].path(kind), out
    hub = DIALECTS[client].to_hub(kind, body, upstream_model)
    return ptype.request(hub, provider, stream)


def answer_usage(client: str, wire: str, ptype: ProviderType, doc: dict[str, Any]) -> Usage:
    """The token counts of a whole answer ``doc`` in the wire's dialect."""
    if wire == client:
        return DIALECTS[wire].body_usage(doc)
    return ptype.usage(doc)


_MAX_USAGE_BYTES: Final = 4096  # a usage object is a few hundred bytes


def passthrough_usage(dialect: str, raw: bytes) -> Usage | None:
    """The usage of an answer passed on untouched, without parsing all of it; None when
    this cheap path cannot tell, and the caller must parse the whole body.

    Parsing an 800-byte answer only to read its usage was a visible share of the request
    path. This finds the last ``"usage":`` key (inside a JSON string its quotes would be
    escaped) and parses only the object after it, like :func:`sse.openai_chunk_usage`.
    The body itself is only checked to look like a JSON object (first byte ``{``, last
    ``}``): anything else, or no usage object found, falls back to the full parse, so a
    200 answer that is plainly not JSON still fails the attempt as ``bad_response``.
    """
    if raw[:1] != b"{" or raw[-1:] != b"}":
        raw = raw.strip()
        if raw[:1] != b"{" or raw[-1:] != b"}":
            return None
    at = raw.rfind(b'"usage":')
    if at < 0:
        return None
    at += 8
    start = raw.find(b"{", at, at + 16)
    if start < 0 or (start > at and raw[at:start].strip()):
        return None  # "usage": null, or something other than an object
    limit = start + _MAX_USAGE_BYTES
    end = raw.find(b"}", start, limit)
    if end < 0:
        return None
    if raw.find(b"{", start + 1, end) >= 0:  # nested objects (token details)
        while raw.count(b"{", start, end) != raw.count(b"}", start, end + 1):
            # Balanced braces mark the object's end (unless a string inside holds a
            # brace: then the parse below fails and the full parse decides).
            end = raw.find(b"}", end + 1, limit)
            if end < 0:
                return None
    try:
        u = orjson.loads(raw[start:end + 1])
    except orjson.JSONDecodeError:
        return None
    if dialect == _HUB:
        return Usage.from_openai(u)  # what its body_usage reads, without the detour
    return DIALECTS[dialect].body_usage({"usage": u})


def translate_answer(client: str, wire: str, ptype: ProviderType, doc: dict[str, Any],
                     requested_model: str) -> bytes | None:
    """A non-streamed upstream answer in the client's dialect; None means pass it as is."""
    if client == wire:
        return None
    hub = ptype.answer(doc, requested_model)
    out = DIALECTS[client].from_hub(hub, requested_model)
    return out if out is not None else orjson.dumps(hub)


def translate_error(client: str, wire: str, ptype: ProviderType, status: int,
                    body: bytes) -> bytes | None:
    """An upstream error body in the client's dialect; None means pass it as is."""
    if client == wire:
        return None
    hub = ptype.error(status, body)
    out = DIALECTS[client].error_from_hub(status, hub)
    return out if out is not None else hub


def answer_events(wire: str, kind: str, raw: bytes) -> bytes | None:
    """The events a whole answer ``raw`` in the wire's dialect would have streamed, or
    None if it is not a valid completion of the kind asked for (answer_stream.py)."""
    dialect = DIALECTS.get(wire)
    doc = json_object(raw) if dialect is not None else None
    if doc is None or dialect is None:
        return None
    try:
        return dialect.answer_events(kind, doc)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def end_event(client: str, message: str) -> bytes:
    """The in-band error that ends a client's committed stream."""
    return DIALECTS[client].passthrough(False).fail(message)


def make_relay(client: str, wire: str, ptype: ProviderType, requested_model: str,
               include_usage: bool) -> Relay:
    """The stream relay for a client dialect and the provider's wire."""
    if client == wire:
        return DIALECTS[client].passthrough(include_usage)
    outer = DIALECTS[client].from_hub_stream(requested_model, include_usage)
    if wire == _HUB:
        assert outer is not None  # the client is not the hub, or it would equal the wire
        return outer  # reads the hub chunks (and their usage) itself
    # The client's transform needs the usage chunk to report usage, whatever it asked.
    inner = ptype.stream(requested_model, include_usage if outer is None else True)
    return inner if outer is None else _Chained(inner, outer)


def run_feed(relay: Relay) -> Callable[[bytes], bytes] | None:
    """The relay's reader of a run of joined events at once, when it has one (the OpenAI
    passthrough: :meth:`OpenAIPassthrough.feed_run`); else None, and each event goes
    through ``feed``."""
    return relay.feed_run if type(relay) is OpenAIPassthrough else None


class _Chained:
    """wire → hub (the provider's transform) → client (the dialect's)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, inner: Relay, outer: Relay) -> None:
        self._inner = inner
        self._outer = outer

    @property
    def usage(self) -> Usage:
        return self._inner.usage  # the provider reads usage from its own wire

    @property
    def done(self) -> bool:
        return self._outer.done

    @property
    def failure(self) -> str | None:
        return self._outer.failure or self._inner.failure

    def feed(self, raw: bytes) -> bytes:
        hub = self._inner.feed(raw)
        if not hub:
            return b""
        return b"".join(self._outer.feed(event) for event in split_events(hub))

    def fail(self, message: str) -> bytes:
        return self._outer.fail(message)
