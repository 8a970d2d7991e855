"""A whole JSON answer to a stream request, as the stream it would have been.

Some upstreams ignore ``stream: true`` and answer with one JSON body. A stream client
must never get that raw 200 ``application/json`` (SDKs fail on it), so a valid
completion is turned into the events the upstream would have sent, in the upstream's
own dialect (``answer_events`` of that dialect, through :func:`relay.answer_events`),
and relayed like any stream (translation, usage, redaction alike). An
answer that is not a valid completion of the kind asked for gives ``None``: the attempt
then fails as ``bad_response`` and the request fails over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Final

__all__ = ["AnswerStream"]

_SSE: Final = {"Content-Type": "text/event-stream"}


class AnswerStream:
    """An :class:`~llm_router.providers.UpstreamResponse` replaying synthesized events."""

    __slots__ = ("_events", "headers", "status")

    def __init__(self, events: bytes) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = _SSE
        self._events = events

    def whole(self, limit: int) -> bytes | None:
        del limit
        return None  # read() it

    async def read(self, limit: int) -> bytes:
        return self._events[:limit]

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._events

    def close(self) -> None:
        self._events = b""

    def release(self) -> None:
        self._events = b""
