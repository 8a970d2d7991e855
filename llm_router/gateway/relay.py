"""Dialects: shape the upstream request, and relay the answer back in the client's shape.

The client speaks ``openai`` (``/v1/chat/completions`` …) or ``anthropic``
(``/v1/messages``); the provider speaks ``openai`` (type openai), ``anthropic`` (type
anthropic) or whatever it is asked (type mock). When both sides agree the body is
forwarded untouched except ``model`` (and ``stream_options``), and stream events are
passed on as the upstream's exact bytes. Otherwise the translators in
``anthropic_in`` / ``anthropic_out`` do the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

import orjson

from ..config import Provider
from ..dialects import anthropic as anthropic_in
from ..hub.chat import chunk_error
from ..hub.sse import DONE, event_fields, frame, json_object, openai_chunk_usage
from ..providers.anthropic import translate as anthropic_out

__all__ = [
    "ROUTE_PATHS",
    "STREAM_ERROR",
    "Relay",
    "Usage",
    "body_usage",
    "make_relay",
    "passthrough_headers",
    "passthrough_usage",
    "provider_dialect",
    "translate_body",
    "translate_error",
    "upstream_request",
]

# Route kind → path below the API root, per provider dialect.
ROUTE_PATHS: Final = {
    "chat": "chat/completions",
    "completions": "completions",
    "embeddings": "embeddings",
    "messages": "messages",
    "count_tokens": "messages/count_tokens",
}


class Usage:
    """Token counts of one response, whatever dialect reported them."""

    __slots__ = ("cached", "completion", "prompt")

    def __init__(self, prompt: int = 0, completion: int = 0, cached: int = 0) -> None:
        self.prompt = prompt
        self.completion = completion
        self.cached = cached

    @classmethod
    def from_openai(cls, u: dict[str, Any]) -> Usage:
        details = u.get("prompt_tokens_details") or {}
        return cls(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0),
                   int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0)

    def add_anthropic(self, u: dict[str, Any]) -> None:
        """Anthropic reports input in message_start and output in message_delta."""
        cache_read = int(u.get("cache_read_input_tokens") or 0)
        cache_new = int(u.get("cache_creation_input_tokens") or 0)
        if "input_tokens" in u:
            self.prompt = max(self.prompt, int(u.get("input_tokens") or 0) + cache_read + cache_new)
            self.cached = max(self.cached, cache_read)
        if "output_tokens" in u:
            self.completion = max(self.completion, int(u.get("output_tokens") or 0))


def provider_dialect(provider: Provider, client: str) -> str:
    if provider.type == "anthropic":
        return "anthropic"
    if provider.type == "mock":
        return client
    return "openai"


def upstream_request(client: str, kind: str, provider: Provider, body: dict[str, Any],
                     upstream_model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    """(path, body) to send: the client's body in the provider's dialect."""
    target = provider_dialect(provider, client)
    if target == client:
        out = dict(body)  # shallow: only top-level fields the router owns change
        out["model"] = upstream_model
        if stream and client == "openai" and kind in ("chat", "completions"):
            # Always learn a stream's usage; the relay hides it if the client did not ask.
            opts = out.get("stream_options")
            out["stream_options"] = {**opts, "include_usage": True} if isinstance(
                opts, dict) else {"include_usage": True}
        return ROUTE_PATHS[kind], out
    if client == "openai":  # → anthropic upstream
        return "messages", anthropic_out.chat_to_messages(body, upstream_model,
                                                          provider.max_tokens_default)
    return "chat/completions", anthropic_in.messages_to_chat(body, upstream_model)


def passthrough_headers(client: str, provider: Provider,
                        request_headers: Mapping[str, str]) -> dict[str, str]:
    """Client headers a native Anthropic passthrough keeps: ``anthropic-version`` and
    ``anthropic-beta``.

    Both change what a Messages body may contain (Claude Code requires a gateway to
    forward them), so an Anthropic client talking to an Anthropic provider keeps its
    own; its betas are merged with any the provider's ``headers`` configure. Translated
    requests (OpenAI clients) use the provider's ``anthropic_version`` and headers.
    """
    if client != "anthropic" or provider.type != "anthropic":
        return {}
    out: dict[str, str] = {}
    version = request_headers.get("anthropic-version")
    if version:
        out["anthropic-version"] = version
    asked = request_headers.get("anthropic-beta")
    if asked:
        configured = [v for k, v in provider.headers.items() if k.lower() == "anthropic-beta"]
        names = dict.fromkeys(n.strip() for v in (*configured, asked) for n in v.split(","))
        names.pop("", None)
        if names:
            out["anthropic-beta"] = ",".join(names)
    return out


def body_usage(dialect: str, body: dict[str, Any]) -> Usage:
    u = body.get("usage")
    if not isinstance(u, dict):
        return Usage()
    if dialect == "anthropic":
        usage = Usage()
        usage.add_anthropic(u)
        return usage
    return Usage.from_openai(u)


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
    raw = raw.strip()  # the same object when there is nothing to strip
    if raw[:1] != b"{" or raw[-1:] != b"}":
        return None
    at = raw.rfind(b'"usage":')
    if at < 0:
        return None
    start = raw.find(b"{", at + 8, at + 8 + 16)
    if start < 0 or raw[at + 8:start].strip():
        return None  # "usage": null, or something other than an object
    end = start
    limit = start + _MAX_USAGE_BYTES
    while True:
        end = raw.find(b"}", end + 1, limit)
        if end < 0:
            return None
        # Balanced braces mark the object's end (unless a string inside holds a brace:
        # then the parse below fails and the full parse decides).
        if raw.count(b"{", start, end) == raw.count(b"}", start, end + 1):
            break
    try:
        u = orjson.loads(raw[start:end + 1])
    except orjson.JSONDecodeError:
        return None
    return body_usage(dialect, {"usage": u})


def translate_body(client: str, upstream: str, body: dict[str, Any],
                   requested_model: str) -> bytes | None:
    """A non-streamed upstream answer in the client's dialect; None means pass it as is."""
    if client == upstream:
        return None
    if client == "openai":
        return orjson.dumps(anthropic_out.message_to_chat(body, requested_model))
    return orjson.dumps(anthropic_in.chat_to_message(body, requested_model))


def translate_error(client: str, upstream: str, status: int, body: bytes) -> bytes | None:
    """An upstream error body in the client's dialect; None means pass it as is."""
    if client == upstream:
        return None
    if client == "openai":
        return orjson.dumps(anthropic_error_to_openai(status, body))
    return orjson.dumps(anthropic_out.openai_error_to_anthropic(status, body))


anthropic_error_to_openai = anthropic_out.anthropic_error_to_openai


# Metric reason for an upstream that reported an error inside its stream.
STREAM_ERROR: Final = "stream_error"


class Relay(Protocol):
    usage: Usage
    done: bool  # the upstream's terminal success event was seen
    failure: str | None  # STREAM_ERROR once the upstream reported an error in-band

    def feed(self, raw: bytes) -> bytes:
        """Bytes to send the client for one raw upstream event (may be empty)."""

    def fail(self, message: str) -> bytes:
        """In-band error ending the client's stream (after the stream has started);
        b"" when an error already ended it, so the client never sees two."""


def _openai_error_event(message: str) -> bytes:
    err = {"error": {"message": message, "type": "upstream_error", "param": None,
                     "code": "stream_interrupted"}}
    return frame(orjson.dumps(err)) + DONE


class _OpenAIPassthrough:
    __slots__ = ("done", "failure", "include_usage", "usage")

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None

    def feed(self, raw: bytes) -> bytes:
        if self.failure is not None:
            return b""  # nothing may follow an error chunk (its [DONE] went with it)
        _, data = event_fields(raw)
        if data == b"[DONE]":
            self.done = True
            return raw
        if b'"error"' in data:
            chunk = json_object(data)
            if chunk is not None and chunk_error(chunk) is not None:
                # An error reported in-band (vLLM, OpenRouter; a Bedrock exception frame):
                # the client gets it as sent and the stream ends, counted as failed.
                self.failure = STREAM_ERROR
                return raw + DONE
        usage, usage_only = openai_chunk_usage(data)
        if usage is not None:
            self.usage = Usage.from_openai(usage)
            if usage_only and not self.include_usage:
                return b""
        return raw

    def fail(self, message: str) -> bytes:
        if self.failure is not None:
            return b""  # the upstream's own error already ended the client's stream
        return _openai_error_event(message)


class _AnthropicPassthrough:
    __slots__ = ("done", "failure", "usage")

    def __init__(self) -> None:
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None

    def feed(self, raw: bytes) -> bytes:
        if self.failure is not None:
            return b""  # nothing may follow an error event
        event, data = event_fields(raw)
        if event == "error":
            # e.g. overloaded_error mid-stream: the client gets it as sent, and only it.
            self.failure = STREAM_ERROR
        elif event == "message_start" or event == "message_delta":
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                return raw
            u = (doc.get("message") or {}).get("usage") if event == "message_start" else doc.get(
                "usage")
            if isinstance(u, dict):
                self.usage.add_anthropic(u)
        elif event == "message_stop":
            self.done = True
        return raw

    def fail(self, message: str) -> bytes:
        if self.failure is not None:
            return b""
        self.failure = STREAM_ERROR
        err = {"type": "error", "error": {"type": "api_error", "message": message}}
        return frame(orjson.dumps(err), "error")


class _ChatToMessages:
    """OpenAI upstream stream → Anthropic client stream."""

    __slots__ = ("_ended", "_t", "done", "failure", "usage")

    def __init__(self, requested_model: str) -> None:
        self._t = anthropic_in.ChatStreamToMessages(requested_model)
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None
        self._ended = False  # message_stop or an error event went to the client

    def feed(self, raw: bytes) -> bytes:
        if self._ended:
            return b""
        _, data = event_fields(raw)
        if data == b"[DONE]":
            self._ended = self.done = True
            self.usage = Usage(*self._t.usage, self._t.cached)
            return self._t.finish()
        chunk = json_object(data)
        if chunk is None:
            return b""
        out = self._t.feed(chunk)
        self.usage = Usage(*self._t.usage, self._t.cached)
        if chunk.get("error"):  # the translator turned it into an error event
            self._ended = True
            self.failure = STREAM_ERROR
        return out

    def fail(self, message: str) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        return self._t.error(message)


class _MessagesToChat:
    """Anthropic upstream stream → OpenAI client stream."""

    __slots__ = ("_t", "done", "failure", "usage")

    def __init__(self, requested_model: str, include_usage: bool) -> None:
        self._t = anthropic_out.MessagesStreamToChat(requested_model, include_usage)
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None

    def feed(self, raw: bytes) -> bytes:
        event, data = event_fields(raw)
        if not event or self._t.done:
            return b""
        try:
            doc = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            return b""
        out = self._t.feed(event, doc if isinstance(doc, dict) else {})
        self.usage = Usage(*self._t.usage, self._t.cached)
        if event == "error":
            self.failure = STREAM_ERROR  # the translator sent it on as an error chunk
        else:
            self.done = self._t.done
        return out

    def fail(self, message: str) -> bytes:
        if self._t.done:
            return b""
        self._t.done = True
        return _openai_error_event(message)


def make_relay(client: str, upstream: str, requested_model: str, include_usage: bool) -> Relay:
    """The stream relay for a (client dialect, provider dialect) pair."""
    if client == upstream:
        return _OpenAIPassthrough(include_usage) if client == "openai" else _AnthropicPassthrough()
    if client == "openai":
        return _MessagesToChat(requested_model, include_usage)
    return _ChatToMessages(requested_model)
