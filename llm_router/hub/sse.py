"""Server-sent events: split an upstream byte stream into events, read their fields.

Events are forwarded as the exact bytes the upstream sent unless the router must
rewrite one, so parsing here is limited to finding event boundaries and, where asked,
the ``event:`` and ``data:`` fields of one event.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import orjson

__all__ = [
    "DONE",
    "EventParser",
    "EventTooLarge",
    "SSEParser",
    "event_fields",
    "frame",
    "json_object",
    "openai_chunk_usage",
]

DONE: Final = b"data: [DONE]\n\n"
_NOT_RUN: Final = (10, 58)  # an event starting with LF or ":" (a blank line, a comment)
_DONE_AFTER: Final = b"\n\n" + DONE  # [DONE] after another event
_COUNTS_FROM: Final = 6  # events in a read (estimated) from which _json_run is tried
_JOINT: Final = b"}\n\ndata: {"  # between two regular OpenAI events


class EventTooLarge(ValueError):
    """One upstream event grew past the splitter's ``max_event`` bytes."""


class EventParser(Protocol):
    """Splits an upstream's streamed bytes into raw events (:class:`SSEParser` for SSE;
    a provider with a binary framing brings its own)."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events completed by ``chunk``, in order; :class:`EventTooLarge` past the
        bound."""
        ...

    def tail(self) -> bytes:
        """Whatever arrived after the last complete event."""
        ...


class SSEParser:
    """Incremental splitter: feed bytes as they arrive, get back complete raw events.

    Line ends may be CR, LF or CRLF, split anywhere across reads (a CR at the end of one
    read and its LF at the start of the next are one line end, not a blank line). Events
    come back with LF line ends. An incomplete event is kept as a list of pieces and
    searched only where new bytes arrived, so a large event costs linear time, and one
    past ``max_event`` bytes raises :class:`EventTooLarge` instead of growing without end.
    """

    __slots__ = ("_cr", "_max", "_parts", "_size")

    def __init__(self, max_event: int = 4 * 1024 * 1024) -> None:
        self._parts: list[bytes] = []  # the incomplete event, LF-normalised
        self._size = 0
        self._cr = False  # the last read ended with a CR: an LF starting the next is its pair
        self._max = max_event

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete events (each ending with its blank line) now available, in order."""
        if self._cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self._cr = False
        if not chunk:
            return []
        events: list[bytes] = []
        start = 0
        if self._parts and chunk[0] == 10 and self._parts[-1][-1] == 10:
            # The blank line ending the buffered event falls across the two reads.
            self._emit(events, b"\n")
            start = 1
        # An event ends at the first LF followed by another. The usual event is one
        # line (JSON holds no raw LF), so the first LF (memchr, cheaper than a search
        # for b"\n\n") is its end; past a line that is not, b"\n\n" is searched.
        find, limit, size = chunk.find, self._max, len(chunk)
        end = find(b"\n", start)
        while end >= 0:
            if end + 1 == size or chunk[end + 1] != 10:
                end = find(b"\n\n", end + 1)
                if end < 0:
                    break
            if self._parts:
                self._emit(events, chunk[start:end + 2])
            elif chunk[start] != 10 and end + 2 - start <= limit:
                # The usual event, whole in this read: _emit's checks, inlined (this
                # runs for every event of every stream).
                events.append(chunk[start:end + 2])
            else:
                self._emit(events, chunk[start:end + 2])
            start = end + 2
            end = find(b"\n", start)
        if start < len(chunk):
            rest = chunk[start:] if start else chunk
            if not self._parts and rest[0] == 10:
                rest = rest.lstrip(b"\n")  # blank lines between events dispatch nothing
                if not rest:
                    return events
            self._size += len(rest)
            if self._size > self._max:
                self._parts, self._size = [], 0
                raise EventTooLarge(f"an event exceeded {self._max} bytes")
            self._parts.append(rest)
        return events

    def feed_run(self, chunk: bytes) -> tuple[bytes, int] | list[bytes]:
        """What :meth:`feed` would return, as one run of bytes (its events joined) and
        their number when the events are regular, else as :meth:`feed`'s list.

        Regular: LF line ends, each event ending with exactly one blank line and none
        starting with a comment (``:``) or past ``max_event``, no event left from an
        earlier read that ``chunk`` must end at its first byte. Most reads of an OpenAI
        stream are, and a relay that reads the joined bytes (the OpenAI passthrough)
        then costs no call per event. The events are found as :meth:`feed` finds them
        (the first LF, memchr), without a slice or a list entry each: a search of the
        whole read for each irregularity cost more than this loop."""
        if self._cr or not chunk or chunk[0] == 10 or b"\r" in chunk:
            return self.feed(chunk)
        parts, limit, size = self._parts, self._max, len(chunk)
        if parts and parts[0][0] == 58:
            return self.feed(chunk)  # a comment event, begun in an earlier read
        find = chunk.find
        events, start = 0, 0
        begun = -self._size  # where the current event began (before this read)
        if begun == 0 and chunk[0] == 58:
            return self.feed(chunk)
        bounded = self._size + size > limit  # else no event here can be past the bound
        end = find(b"\n")
        # Two counts cost about what five steps of the loop below do on chat chunks
        # (~250 bytes), and more per byte: worth it only for a read of many such events,
        # judged by the length of its first line.
        if not bounded and size >= _COUNTS_FROM * (end + 2) and end >= 0:
            found = self._json_run(chunk, size)
            if found is not None:
                return found
        while end >= 0:
            if end + 1 == size or chunk[end + 1] != 10:
                end = find(b"\n\n", end + 1)
                if end < 0:
                    break
            start = end + 2
            if bounded:
                if start - begun > limit:
                    return self.feed(chunk)  # feed raises: nothing was changed yet
                begun = start
            events += 1
            if start == size:
                break
            if chunk[start] in _NOT_RUN:
                return self.feed(chunk)  # blank lines or a comment: feed drops them
            end = find(b"\n", start)
        if not events:
            return self.feed(chunk)  # the event goes on: feed keeps the piece
        run = chunk[:start] if start < size else chunk
        if parts:
            run = b"".join(parts) + run
        if start < size:
            rest = chunk[start:]
            if len(rest) > limit:
                self._parts, self._size = [], 0
                raise EventTooLarge(f"an event exceeded {limit} bytes")
            self._parts, self._size = [rest], len(rest)
        elif parts:
            self._parts, self._size = [], 0
        return run, events

    def _json_run(self, chunk: bytes, size: int) -> tuple[bytes, int] | None:
        """:meth:`feed_run` of a read whose events are all ``data: {...}`` (and maybe a
        last ``data: [DONE]``), as an OpenAI-compatible upstream sends them, found with
        two counts of the whole read instead of a step per event; None when the read is
        not of that shape (or a line end starts the rest), and feed_run's step per event
        decides. The caller checked the rest of what makes a run regular (no CR, no
        comment carried over, no event past the bound).

        Every ``}\\n\\ndata: {`` (a joint) holds a blank line: when the run split at
        its joints and joined again has no line end before its last blank line, the
        events are the data lines between the joints, each one line, none a comment or
        a blank line of its own (a run of multi-line events is left to feed_run's
        loop). In Python 3.11 a call of a ``bytes`` search method costs more than
        scanning a few hundred bytes, so the split (one search of the read) and a
        memchr cost less than the loop's one ``find`` per event, and less than the two
        counts (joints and blank lines) this did before: ~19k instructions against ~28k
        on a 5 KB read."""
        last = chunk.rfind(b"\n\n") + 2
        if last < 2:
            return None
        parts = self._parts
        run = chunk if last == size else chunk[:last]
        if parts:
            run = b"".join(parts) + run
        body = len(run)
        events = 1
        if run.endswith(_DONE_AFTER):
            body -= len(DONE)
            events = 2
        elif run == DONE:
            body, events = 0, 1  # only the terminal event: no data lines to count
        if body:
            if run[:7] != b"data: {" or run[body - 3:body] != b"}\n\n":
                return None
            # The run without its joints holds no line end before the body's last one:
            # found by memchr in the joined pieces, cheaper than counting b"\n\n".
            pieces = run.split(_JOINT)  # (the [DONE] event after the body holds none)
            rest = b"".join(pieces) if len(pieces) > 1 else run
            if rest.find(b"\n") != len(rest) - (len(run) - body) - 2:
                return None
            events += len(pieces) - 1
        if last < size:
            rest = chunk[last:]
            if rest[0] in _NOT_RUN:
                return None  # blank lines or a comment next: feed drops them
            self._parts, self._size = [rest], len(rest)
        elif parts:
            self._parts, self._size = [], 0
        return run, events

    def _emit(self, events: list[bytes], last: bytes) -> None:
        """Close the buffered event with ``last`` (its end, blank line included)."""
        if self._size + len(last) > self._max:
            self._parts, self._size = [], 0
            raise EventTooLarge(f"an event exceeded {self._max} bytes")
        if self._parts:
            self._parts.append(last)
            last = b"".join(self._parts)
            self._parts, self._size = [], 0
        elif last[:1] == b"\n":
            last = last.lstrip(b"\n")
        if last:
            events.append(last)

    def tail(self) -> bytes:
        """Whatever arrived after the last complete event (a cut stream leaves some)."""
        rest = b"".join(self._parts)
        self._parts, self._size = [], 0
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


def json_object(data: bytes) -> dict[str, Any] | None:
    """An event's data as a JSON object; None when it is not JSON or not an object (a
    relay skips such an event rather than failing the stream)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def openai_chunk_usage(data: bytes) -> tuple[Any, bool]:
    """``(usage, usage_only)`` of an OpenAI stream chunk's data.

    ``usage`` is None when the chunk carries none (most chunks, cheaply detected without
    parsing, or ``"usage": null``); otherwise the value as sent, for
    :meth:`hub.usage.Usage.from_openai` to judge. ``usage_only`` is True for the trailing
    chunk that has usage and no choices, which the router removes when the client did
    not ask for usage.
    """
    at = data.find(b'"usage":')
    if at < 0:
        return None, False
    if data[at + 8:at + 14].lstrip().startswith(b"null"):
        return None, False
    chunk = json_object(data)
    if chunk is None or (usage := chunk.get("usage")) is None:
        return None, False
    return usage, not chunk.get("choices")
