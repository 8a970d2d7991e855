"""Server-sent events: split an upstream byte stream into events, read their fields.

Events are forwarded as the exact bytes the upstream sent unless the router must
rewrite one, so parsing here is limited to finding event boundaries and, where asked,
the ``event:`` and ``data:`` fields of one event.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

__all__ = ["DONE", "SSEParser", "event_fields", "frame", "openai_chunk_usage"]

DONE: Final = b"data: [DONE]\n\n"


class SSEParser:
    """Incremental splitter: feed bytes as they arrive, get back complete raw events."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete events (each ending with its blank line) now available, in order."""
        if b"\r" in chunk:
            # Both line endings are legal SSE; normalise once so boundaries are b"\n\n".
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            if end > start:
                events.append(buf[start:end + 2])
            start = end + 2
        self._buf = buf[start:]
        return events

    def tail(self) -> bytes:
        """Whatever arrived after the last complete event (a cut stream leaves some)."""
        rest, self._buf = self._buf, b""
        return rest


def event_fields(raw: bytes) -> tuple[str | None, bytes]:
    """The ``event:`` type (or None) and the joined ``data:`` lines of one raw event."""
    if raw.startswith(b"data: ") and raw.find(b"\n") == len(raw) - 2:
        # The usual OpenAI event, one "data: ..." line and its blank line: nothing to
        # split or join (this runs for every event of every stream).
        return None, raw[6:-2]
    event: str | None = None
    data: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode("utf-8", "replace")
    return event, b"\n".join(data)


def frame(data: bytes, event: str | None = None) -> bytes:
    """One SSE event around ``data`` (which must not contain a blank line)."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def openai_chunk_usage(data: bytes) -> tuple[dict[str, Any] | None, bool]:
    """``(usage, usage_only)`` of an OpenAI stream chunk's data.

    ``usage`` is None when the chunk carries none (most chunks, cheaply detected without
    parsing); ``usage_only`` is True for the trailing chunk that has usage and no choices,
    which the router removes when the client did not ask for usage.
    """
    at = data.find(b'"usage":')
    if at < 0:
        return None, False
    rest = data[at + 8:at + 10].lstrip()
    if not rest.startswith(b"{"):
        return None, False
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, False
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    if not isinstance(usage, dict):
        return None, False
    return usage, not chunk.get("choices")
