"""Upstream transports, one module per provider type.

Each provider module exposes ``send(session, call) -> UpstreamResponse``: it builds the
upstream HTTP request for an already-translated body and returns the answer unread.
Dialect translation (OpenAI ⇄ Anthropic) happens above this layer, in ``relay.py``.
Every lower-layer exception is turned into :class:`AttemptFailure` by
:func:`failure_from_exception`, the one place that knows aiohttp's error tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from ..config import Provider, ProviderKey

__all__ = [
    "AttemptFailure",
    "ResponseTooLarge",
    "UpstreamCall",
    "UpstreamResponse",
    "failure_from_exception",
]


@dataclass(slots=True)
class UpstreamCall:
    """One attempt's request, already in the provider's dialect."""

    provider: Provider
    key: ProviderKey
    path: str  # relative to the API root: chat/completions, embeddings, messages …
    body: bytes
    parsed: dict[str, Any]  # the same body, parsed (the mock answers from it)
    stream: bool
    # Client headers kept for this upstream (relay.passthrough_headers); they override
    # the provider's configured headers of the same name.
    headers: Mapping[str, str] = field(default_factory=dict)


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`ResponseTooLarge` past ``limit`` bytes (not read)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...

    def release(self) -> None:
        """Done with an answer read up to its end as the protocol defines it: keep the
        connection if the upstream's EOF follows soon, else close it."""
        ...


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


def failure_from_exception(exc: BaseException, provider: str) -> AttemptFailure:
    """Translate aiohttp/asyncio errors into an :class:`AttemptFailure` (no secrets)."""
    if isinstance(exc, ResponseTooLarge):
        return AttemptFailure("bad_response", f"upstream '{provider}' sent {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return AttemptFailure("timeout", f"timed out connecting to upstream '{provider}'")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return AttemptFailure("timeout", f"upstream '{provider}' timed out")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientOSError):
        return AttemptFailure("connect", f"cannot connect to upstream '{provider}'")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return AttemptFailure("closed", f"upstream '{provider}' closed the connection")
    if isinstance(exc, aiohttp.ClientResponseError):
        return AttemptFailure("bad_response", f"upstream '{provider}' sent an invalid response",
                              status=exc.status or None)
    if isinstance(exc, aiohttp.ClientError):
        return AttemptFailure("connect", f"upstream '{provider}' request failed "
                              f"({type(exc).__name__})")
    return AttemptFailure("bad_response", f"upstream '{provider}' failed ({type(exc).__name__})")
