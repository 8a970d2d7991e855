"""What every stream transform shares: token usage (read and validated in
:mod:`hub.usage`), the relay protocol, the dialect names.

A *relay* takes one raw upstream event at a time and returns the bytes to send on (maybe
none): a provider's stream transform (its wire → hub chunks), an inbound dialect's
(hub chunks → the client's events), or a passthrough that only reads the events it
passes on untouched. Each one tracks the answer's usage, whether its terminal event
came, and whether the upstream reported an error in-band.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Protocol

import orjson

from .sse import DONE, frame
from .usage import Usage  # the validated counts; re-exported for the transforms

__all__ = ["STREAM_ERROR", "Dialect", "Relay", "Usage", "client_fault", "openai_error_event",
           "split_events", "throttled"]


class Dialect(StrEnum):
    """An API shape, spoken by a client (the route it called) or an upstream (its wire).

    ``openai`` is the hub: every other dialect translates to and from it. A StrEnum, so
    a member equals its plain string (``Exchange.client`` and the tests use strings).
    """

    OPENAI = "openai"  # chat completions, completions, embeddings: the hub
    ANTHROPIC = "anthropic"  # Messages (and count_tokens)
    RESPONSES = "responses"  # the Responses API (a client's, or a native upstream's)


# Metric reason for an upstream that reported an error inside its stream.
STREAM_ERROR: Final = "stream_error"

# What an in-band error says when the upstream is rate limited or overloaded, in every
# dialect it reaches the router in: OpenAI's rate_limit_exceeded / rate_limit_error (a
# Bedrock throttlingException frame is translated to the latter, its name kept as the
# code), Anthropic's rate_limit_error and overloaded_error, Gemini's RESOURCE_EXHAUSTED.
_THROTTLED: Final = (b"rate_limit", b"overloaded_error", b"hrottling", b"RESOURCE_EXHAUSTED")


def throttled(events: list[bytes]) -> bool:
    """Whether the in-band error among ``events`` (the upstream read that ended a stream
    with its own error) says the upstream is rate limited or overloaded: the key then
    cools as after a 429, not only counting a failure. Only the last event holding an
    error is read, so a model's text about rate limits in the same read does not count.
    """
    for raw in reversed(events):
        if b'"error"' in raw or raw.startswith(b"event: error"):
            return any(marker in raw for marker in _THROTTLED)
    return False


# What an in-band error says when the request itself is at fault, in the same dialects:
# OpenAI's and Anthropic's invalid_request_error (a Bedrock validationException is
# translated to it), Gemini's INVALID_ARGUMENT and FAILED_PRECONDITION.
_CLIENT_FAULT: Final = (b"invalid_request_error", b"INVALID_ARGUMENT", b"FAILED_PRECONDITION")


def client_fault(events: list[bytes]) -> bool:
    """Whether the in-band error among ``events`` blames the request (another upstream
    would refuse it too), read as :func:`throttled` reads it."""
    for raw in reversed(events):
        if b'"error"' in raw or raw.startswith(b"event: error"):
            return any(marker in raw for marker in _CLIENT_FAULT)
    return False


class Relay(Protocol):
    """One stream's transform, fed raw events in order."""

    @property
    def usage(self) -> Usage:
        """The answer's token counts so far."""
        ...

    @property
    def done(self) -> bool:
        """The terminal success event was seen."""
        ...

    @property
    def failure(self) -> str | None:
        """STREAM_ERROR once the upstream reported an error in-band."""
        ...

    def feed(self, raw: bytes) -> bytes:
        """Bytes to send on for one raw event (may be empty)."""
        ...

    def fail(self, message: str) -> bytes:
        """In-band error ending the stream (after it started); b"" when an error already
        ended it, so the client never sees two."""
        ...


def openai_error_event(message: str) -> bytes:
    """The in-band end of a hub (OpenAI) stream: an error chunk, then ``[DONE]``."""
    err = {"error": {"message": message, "type": "upstream_error", "param": None,
                     "code": "stream_interrupted"}}
    return frame(orjson.dumps(err)) + DONE


def split_events(data: bytes) -> list[bytes]:
    """The events of SSE bytes a transform produced (each ends with a blank line), as
    the next transform's raw events."""
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]
