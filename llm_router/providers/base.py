"""What a provider type is: the request it sends, the answer it gets, the errors it maps.

The interface itself is stated in :mod:`llm_router.providers` (the package docstring);
this module holds its types. :func:`failure_from_exception` is the one place that knows
aiohttp's error tree.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NamedTuple, Protocol

import aiohttp

from ..config import Provider, ProviderKey
from ..dialects.openai import OpenAIPassthrough
from ..hub.sse import EventParser, SSEParser
from ..hub.stream import Relay, Usage

__all__ = [
    "UPSTREAM_ERRORS",
    "AttemptFailure",
    "CachedToken",
    "ModelInfo",
    "ProviderType",
    "ResponseTooLarge",
    "UpstreamCall",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "failure_from_exception",
    "retry_hint",
    "status_failure",
]


class ModelInfo(NamedTuple):
    """One model of an upstream's list, with what the list says of it (the catalog).

    ``context_window`` (tokens) and ``capabilities`` (the names of
    ``config.MEMBER_CAPABILITIES`` it offers) are None when the list does not say; a
    member that declares neither gets them from here (gateway/capabilities.py).
    """

    id: str
    context_window: int | None = None
    capabilities: frozenset[str] | None = None


@dataclass(slots=True)
class UpstreamCall:
    """One attempt's request, already in the provider's dialect."""

    provider: Provider
    key: ProviderKey
    path: str  # relative to the API root: chat/completions, embeddings, messages …
    body: bytes
    parsed: dict[str, Any]  # the same body, parsed (the mock answers from it)
    stream: bool
    # Client headers kept for this upstream (ProviderType.passthrough_headers); they
    # override the provider's configured headers of the same name.
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str = ""  # the upstream model (a URL may name it: Gemini, Bedrock)
    # upstream_limits.max_event_bytes: a provider that splits its stream into events
    # itself before translating (Gemini, Bedrock) bounds the upstream's events by it.
    max_event: int = 64 * 1024 * 1024


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`ResponseTooLarge` past ``limit`` bytes (not read)."""
        ...

    def whole(self, limit: int) -> bytes | None:
        """The whole body if all of it has arrived already, read without waiting (as
        :meth:`read`, :class:`ResponseTooLarge` past ``limit``); None: :meth:`read` it."""
        ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...

    def release(self) -> None:
        """Done with an answer read up to its end as the protocol defines it: keep the
        connection if the upstream's EOF follows soon, else close it."""
        ...

    # Optional: ``unfinished() -> bytes``, for a response that translates its stream
    # itself (Gemini's): after the stream broke or its reader stopped, the hub events it
    # still owes (the usage reported so far), since its cancelled chunks() cannot yield
    # them. The relay asks for it only then (UpstreamEvents.unfinished).


class ResponseTooLarge(ValueError):
    """An upstream answer, or one event of its stream, past its configured bound."""


@dataclass(slots=True)
class AttemptFailure(Exception):
    """An attempt that failed before anything reached the client.

    ``reason`` is the metric label: connect | timeout | status_4xx | status_5xx |
    status_429 | bad_response | closed.
    """

    reason: str
    message: str
    status: int | None = None  # upstream HTTP status, if it answered
    retry_after: str | None = None
    body: bytes = b""

    def __str__(self) -> str:
        return self.message


class UpstreamProtocolError(Exception):
    """An upstream answer that breaks its wire's framing or grammar (a bad frame, a
    checksum that does not match): the attempt fails as ``bad_response``. A provider
    raises it (or a subclass) from its response's ``read`` or ``chunks``."""


# What an upstream exchange may raise that is the upstream's doing (or the network's):
# the attempt fails and the loop may fail over. Anything else is a bug in the router
# and propagates, to be logged as one (httpx's map_httpcore_exceptions is the model).
UPSTREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError, ResponseTooLarge,
                          UpstreamProtocolError)


def failure_from_exception(exc: BaseException, provider: str) -> AttemptFailure:
    """Translate one of :data:`UPSTREAM_ERRORS` into an :class:`AttemptFailure` (no
    secrets); a provider's own :class:`AttemptFailure` (an azure token it could not get)
    stays as is; anything else is re-raised."""
    if isinstance(exc, AttemptFailure):
        return exc
    if isinstance(exc, ResponseTooLarge):
        return AttemptFailure("bad_response", f"upstream '{provider}' sent {exc}")
    if isinstance(exc, UpstreamProtocolError):
        return AttemptFailure("bad_response", f"upstream '{provider}' sent an invalid "
                              f"response ({exc})")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return AttemptFailure("timeout", f"timed out connecting to upstream '{provider}'")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return AttemptFailure("timeout", f"upstream '{provider}' timed out")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientOSError):
        return AttemptFailure("connect", f"cannot connect to upstream '{provider}'")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                  | ConnectionError):
        return AttemptFailure("closed", f"upstream '{provider}' closed the connection")
    if isinstance(exc, aiohttp.ClientResponseError):
        return AttemptFailure("bad_response", f"upstream '{provider}' sent an invalid response",
                              status=exc.status or None)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return AttemptFailure("connect", f"upstream '{provider}' request failed "
                              f"({type(exc).__name__})")
    raise exc


def status_failure(provider: str, status: int, headers: Mapping[str, str],
                   body: bytes) -> AttemptFailure:
    """An upstream's error status as an attempt failure: the metric reason from the
    status, the retry hint from :func:`retry_hint` (capped by the caller)."""
    reason = "status_429" if status == 429 else f"status_{status // 100}xx"
    return AttemptFailure(reason, f"upstream '{provider}' answered {status}", status=status,
                          retry_after=retry_hint(headers), body=body)


def retry_hint(headers: Mapping[str, str]) -> str | None:
    """The wait an error answer asks for, as ``Retry-After`` text: ``retry-after-ms``
    (Azure OpenAI sends it, finer than whole seconds; OpenAI's SDKs read it first) in
    seconds, else ``Retry-After`` as sent (seconds or an HTTP date); None if neither."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            seconds = float(millis) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return f"{max(0.0, seconds):g}"
    return headers.get("Retry-After")


class ProviderType:
    """One upstream ``type``: see :mod:`llm_router.providers` for the whole contract.

    Subclass it once per ``providers/<type>/`` folder and register one instance. The
    defaults are those of an upstream that speaks the hub (OpenAI chat) over SSE.
    """

    type: ClassVar[str]  # the config's provider ``type``
    serves: ClassVar[frozenset[str]]  # route kinds: chat completions embeddings messages ...
    sets_prompt_cache_key: ClassVar[bool] = False  # add OpenAI's prompt_cache_key (affinity)
    # Its OpenAI-wire streams may open with content-filter chunks that hold no answer
    # (Azure's): the relay holds them and judges the stream on the first event after.
    opens_with_filter_chunks: ClassVar[bool] = False

    # ------------------------------------------------------------------ which wire

    def wire(self, provider: Provider, client: str, model: str) -> str:
        """The dialect this upstream speaks to a client of dialect ``client``. Equal
        dialects mean the body and the answer's bytes pass through untouched."""
        del provider, client, model
        return "openai"

    # ------------------------------------------------------------------ api

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
        """Send ``call`` (a body already in the wire dialect); return once the status
        line and headers arrived, the body unread."""
        raise NotImplementedError

    def passthrough_headers(self, client: str, provider: Provider,
                            request_headers: Mapping[str, str]) -> dict[str, str]:
        """Client headers this upstream keeps (they override configured ones)."""
        del client, provider, request_headers
        return {}

    # ------------------------------------------------------------------ hub -> wire

    def request(self, hub: dict[str, Any], provider: Provider,
                stream: bool) -> tuple[str, dict[str, Any]]:
        """(path, body) for a hub (chat completions) request whose ``model`` is already
        the upstream model. Only called when the client's dialect is not the wire's."""
        del provider, stream
        return "chat/completions", hub

    # ------------------------------------------------------------------ wire -> hub

    def answer(self, doc: dict[str, Any], requested_model: str) -> dict[str, Any]:
        """A whole wire answer as a hub ``chat.completion`` (``model`` = what the
        client asked for). KeyError, TypeError or ValueError if it is not one."""
        del requested_model
        return doc

    def usage(self, doc: dict[str, Any]) -> Usage:
        """The token counts of a whole wire answer."""
        return Usage.from_openai(doc.get("usage"))

    def stream(self, requested_model: str, include_usage: bool) -> Relay:
        """The transform of one streamed answer: raw wire events in, hub chunk events
        (SSE, ending with ``[DONE]``) out, usage read on the way. ``include_usage``:
        end with the usage-only chunk. (Default: the wire is the hub already.)"""
        del requested_model
        return OpenAIPassthrough(include_usage)

    def error(self, status: int, body: bytes) -> bytes:
        """A wire error body (the client's fault: a 4xx passed on) as a hub (OpenAI)
        error body."""
        del status
        return body

    # ------------------------------------------------------------------ framing

    def is_stream(self, headers: Mapping[str, str]) -> bool:
        """Whether an answer is a stream (else a whole body, even to a stream request)."""
        return "text/event-stream" in headers.get("Content-Type", "")

    def events(self, max_event: int) -> EventParser:
        """The parser splitting a streamed answer's bytes into raw events for
        :meth:`stream` (SSE here; a binary framing decodes its frames instead)."""
        return SSEParser(max_event)

    # ------------------------------------------------------------------ errors

    def failure(self, name: str, status: int, headers: Mapping[str, str],
                body: bytes) -> AttemptFailure:
        """An error status (>= 400) as an attempt failure, with the retry hint
        (``retry_after`` in seconds, as text) when the upstream gave one."""
        return status_failure(name, status, headers, body)

    # ------------------------------------------------------------------ catalog

    async def list_models(self, session: aiohttp.ClientSession, provider: Provider,
                          key: ProviderKey) -> list[ModelInfo] | None:
        """The models this upstream offers with ``key``, with the window and capabilities
        its list reports; None if it cannot say."""
        del session, provider, key
        return None


class CachedToken:
    """A bearer token fetched when needed and kept until shortly before it expires.

    For auth that is not a fixed key (a cloud's OAuth token, an Entra ID token):
    ``await token.get()`` returns the cached value, or runs ``fetch`` (one caller at a
    time; the others wait for its result). ``fetch`` returns ``(token, lifetime_s)``.
    """

    __slots__ = ("_expires", "_fetch", "_lock", "_margin_s", "_value")

    def __init__(self, fetch: Callable[[], Awaitable[tuple[str, float]]],
                 margin_s: float = 60.0) -> None:
        self._fetch = fetch
        self._margin_s = margin_s
        self._value = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        if time.monotonic() < self._expires:
            return self._value
        async with self._lock:
            if time.monotonic() >= self._expires:  # not refreshed while this one waited
                value, lifetime = await self._fetch()
                self._value = value
                self._expires = time.monotonic() + max(0.0, lifetime - self._margin_s)
        return self._value

    def clear(self) -> None:
        """Forget the token (the upstream rejected it): the next ``get`` fetches."""
        self._expires = 0.0
