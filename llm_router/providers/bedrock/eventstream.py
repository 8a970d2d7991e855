"""Decoding ``application/vnd.amazon.eventstream``, the framing of ConverseStream.

One message on the wire::

    total length   u32 big-endian, the whole message, these 4 bytes included
    headers length u32
    prelude CRC    u32, CRC32 of the 8 bytes above
    headers        name length (u8), name, value type (u8), value ... repeated
    payload        total - headers - 16 bytes (JSON for Bedrock)
    message CRC    u32, CRC32 of everything before it, prelude included

Header value types: 0 true, 1 false, 2 int8, 3 int16, 4 int32, 5 int64, 6 bytes and
7 string (each after a u16 length), 8 timestamp (int64 ms), 9 UUID (16 bytes).

:class:`FrameDecoder` takes bytes as the socket delivers them (a message may be split
anywhere, several may come in one read) and returns whole messages. Both CRCs are
checked, and a message whose declared length exceeds the decoder's bound is refused
before any of it is buffered: :class:`FrameError` either way, since a stream that
fails either check cannot be resynchronised. ``tests/test_bedrock_eventstream.py``
checks it against botocore's ``EventStreamBuffer`` (a test dependency only).
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, NamedTuple

from ..base import UpstreamProtocolError

__all__ = ["FrameDecoder", "FrameError", "FrameTooLarge", "HeaderValue", "Message"]

HeaderValue = bool | int | bytes | str
_PRELUDE: Final = 12  # total length, headers length, prelude CRC
_OVERHEAD: Final = 16  # the prelude and the message CRC
_U32: Final = struct.Struct("!I")
_PRELUDE_FIELDS: Final = struct.Struct("!III")
# Parsed header blocks, shared by every stream: Bedrock's repeat (a ConverseStream has
# about ten distinct ones), so this stays small; emptied if something floods it.
_MAX_HEADER_BLOCKS: Final = 256
_HEADER_BLOCKS: dict[bytes, dict[str, HeaderValue]] = {}
# Fixed-size header values by type code: (size, struct format or None for raw bytes).
_FIXED: Final[dict[int, tuple[int, str | None]]] = {
    2: (1, "!b"), 3: (2, "!h"), 4: (4, "!i"), 5: (8, "!q"), 8: (8, "!q"), 9: (16, None)}


class FrameError(UpstreamProtocolError, ValueError):
    """The stream is not valid event-stream framing (a CRC mismatch, an impossible or
    oversized length, a header that does not parse)."""


class FrameTooLarge(FrameError):
    """A message whose declared length is over the decoder's bound."""


class Message(NamedTuple):
    """One decoded message: its headers (``:event-type`` ...; shared between messages
    with the same header block, so read-only) and its payload bytes."""

    headers: dict[str, HeaderValue]
    payload: bytes


class FrameDecoder:
    """Incremental decoder; ``feed`` bytes in any split, get back complete messages.

    Bytes of an incomplete message are kept as a list of reads and joined once the
    message is whole (its length is known from its prelude), so a large message split
    over many reads costs linear time. Header blocks repeat from message to message
    (``:event-type`` contentBlockDelta ...), so their parsed form is reused.
    """

    __slots__ = ("_have", "_max", "_need", "_parts")

    def __init__(self, max_message: int) -> None:
        self._parts: list[bytes] = []
        self._have = 0  # bytes in _parts
        self._need = _PRELUDE  # bytes needed before parsing can go on
        self._max = max_message

    def feed(self, data: bytes) -> list[Message]:
        """The messages completed by ``data``, in order; :class:`FrameError` when the
        bytes cannot be a valid message."""
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts = []
        view = memoryview(data)
        out: list[Message] = []
        start = 0
        size = len(data)
        while size - start >= _PRELUDE:
            total, headers_len, prelude_crc = _PRELUDE_FIELDS.unpack_from(data, start)
            if zlib.crc32(view[start:start + 8]) != prelude_crc:
                raise FrameError("event-stream prelude CRC mismatch")
            if total > self._max:
                raise FrameTooLarge(f"an event-stream message of {total} bytes, over the limit "
                                 f"of {self._max}")
            if total < _OVERHEAD or headers_len > total - _OVERHEAD:
                raise FrameError(f"impossible event-stream lengths ({total}, {headers_len})")
            end = start + total
            if size < end:
                self._need = total
                break
            (message_crc,) = _U32.unpack_from(data, end - 4)
            if zlib.crc32(view[start:end - 4]) != message_crc:
                raise FrameError("event-stream message CRC mismatch")
            headers_end = start + _PRELUDE + headers_len
            block = data[start + _PRELUDE:headers_end]
            headers = _HEADER_BLOCKS.get(block)
            if headers is None:
                headers = _headers(block)
                if len(_HEADER_BLOCKS) >= _MAX_HEADER_BLOCKS:
                    _HEADER_BLOCKS.clear()
                _HEADER_BLOCKS[block] = headers
            out.append(Message(headers, data[headers_end:end - 4]))
            start = end
        else:
            self._need = _PRELUDE
        if start < size:
            rest = data[start:] if start else data
            self._parts = [rest]
            self._have = len(rest)
        else:
            self._have = 0
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held (a stream cut mid-message leaves some)."""
        return self._have


def _headers(raw: bytes) -> dict[str, HeaderValue]:
    out: dict[str, HeaderValue] = {}
    at = 0
    try:
        while at < len(raw):
            name_len = raw[at]
            name_bytes = raw[at + 1:at + 1 + name_len]
            if len(name_bytes) != name_len:
                raise FrameError("an event-stream header name runs past its block")
            name = name_bytes.decode()
            at += 1 + name_len
            kind = raw[at]
            at += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in (6, 7):
                (size,) = struct.unpack_from("!H", raw, at)
                at += 2
                chunk = raw[at:at + size]
                if len(chunk) != size:
                    raise FrameError("an event-stream header runs past its block")
                value = chunk.decode() if kind == 7 else chunk
                at += size
            elif kind in _FIXED:
                size, fmt = _FIXED[kind]
                chunk = raw[at:at + size]
                if len(chunk) != size:
                    raise FrameError("an event-stream header runs past its block")
                value = struct.unpack(fmt, chunk)[0] if fmt else chunk
                at += size
            else:
                raise FrameError(f"unknown event-stream header type {kind}")
            out[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise FrameError("malformed event-stream headers") from None
    return out
