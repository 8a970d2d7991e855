"""The event-stream decoder against botocore's ``EventStreamBuffer`` (a test dependency
only), and against the fake Bedrock's encoder, which is written separately from it."""

from __future__ import annotations

import struct
import zlib

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer

from llm_router.providers.bedrock.eventstream import FrameDecoder, FrameError, FrameTooLarge
from llm_router.testing.bedrock import encode_event_message

LIMIT = 1 << 20


def _event(kind: str, payload: dict[str, object]) -> bytes:
    return encode_event_message({":event-type": kind, ":content-type": "application/json",
                                 ":message-type": "event"}, orjson.dumps(payload))


# A ConverseStream as the service frames it: text, a tool call in fragments, usage last.
RECORDED = b"".join([
    _event("messageStart", {"role": "assistant", "p": "abcd"}),
    _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
    _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " caf\u00e9 \u2603"}}),
    _event("contentBlockStop", {"contentBlockIndex": 0}),
    _event("contentBlockStart", {"contentBlockIndex": 1, "start": {
        "toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
    _event("contentBlockDelta", {"contentBlockIndex": 1,
                                 "delta": {"toolUse": {"input": '{"location": '}}}),
    _event("contentBlockDelta", {"contentBlockIndex": 1,
                                 "delta": {"toolUse": {"input": '"Paris"}'}}}),
    _event("contentBlockStop", {"contentBlockIndex": 1}),
    _event("messageStop", {"stopReason": "tool_use"}),
    _event("metadata", {"usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
                        "metrics": {"latencyMs": 42}}),
    encode_event_message({":exception-type": "throttlingException",
                          ":content-type": "application/json", ":message-type": "exception"},
                         b'{"message":"Too many requests"}'),
])


def _botocore(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buf = EventStreamBuffer()
    buf.add_data(data)
    return [(dict(m.headers), m.payload) for m in buf]


def _ours(chunks: list[bytes]) -> list[tuple[dict[str, object], bytes]]:
    decoder = FrameDecoder(LIMIT)
    out = [(m.headers, m.payload) for chunk in chunks for m in decoder.feed(chunk)]
    assert decoder.pending == 0
    return out


def test_decodes_what_botocore_decodes() -> None:
    reference = _botocore(RECORDED)
    assert len(reference) == 11
    assert _ours([RECORDED]) == reference


def test_a_stream_split_at_every_byte_offset_decodes_the_same() -> None:
    reference = _botocore(RECORDED)
    for at in range(len(RECORDED) + 1):
        assert _ours([RECORDED[:at], RECORDED[at:]]) == reference, at


def test_a_stream_fed_one_byte_at_a_time_decodes_the_same() -> None:
    assert _ours([RECORDED[i:i + 1] for i in range(len(RECORDED))]) == _botocore(RECORDED)


def _typed_headers() -> bytes:
    """Headers of every value type the format defines."""
    def header(name: str, kind: int, value: bytes) -> bytes:
        return bytes([len(name)]) + name.encode() + bytes([kind]) + value
    return b"".join([
        header("t", 0, b""), header("f", 1, b""), header("b", 2, struct.pack("!b", -3)),
        header("s", 3, struct.pack("!h", -300)), header("i", 4, struct.pack("!i", 70000)),
        header("l", 5, struct.pack("!q", -(2 ** 40))),
        header("x", 6, struct.pack("!H", 3) + b"\x00\x01\x02"),
        header("str", 7, struct.pack("!H", 5) + b"hello"),
        header("ts", 8, struct.pack("!q", 1_700_000_000_000)),
        header("id", 9, bytes(range(16))),
    ])


def _message(headers: bytes, payload: bytes) -> bytes:
    prelude = struct.pack("!II", 16 + len(headers) + len(payload), len(headers))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack("!I", zlib.crc32(body))


def test_every_header_type_decodes_as_botocore_does() -> None:
    data = _message(_typed_headers(), b"{}")
    [(headers, payload)] = _ours([data])
    [(ref_headers, ref_payload)] = _botocore(data)
    assert payload == ref_payload == b"{}"
    assert headers["t"] is True and headers["f"] is False
    assert headers["str"] == ref_headers["str"] == "hello"
    for name in ("b", "s", "i", "l", "x", "ts"):
        assert headers[name] == ref_headers[name], name
    assert headers["id"] == bytes(range(16))


@pytest.mark.parametrize("where", [8, 20], ids=["prelude-crc", "message-crc"])
def test_a_bad_crc_is_rejected(where: int) -> None:
    data = bytearray(RECORDED)
    if where == 8:
        data[8] ^= 0xFF  # the prelude CRC itself
    else:
        data[where] ^= 0x01  # a header byte: only the message CRC covers it
    with pytest.raises(FrameError, match="CRC"):
        FrameDecoder(LIMIT).feed(bytes(data))


def test_a_frame_larger_than_the_bound_is_rejected_from_its_prelude() -> None:
    big = _event("contentBlockDelta", {"delta": {"text": "x" * 5000}})
    decoder = FrameDecoder(4096)
    with pytest.raises(FrameTooLarge, match="over the limit of 4096"):
        decoder.feed(big[:12])  # refused before the rest is buffered
    assert FrameDecoder(8192).feed(big)


def test_impossible_lengths_are_rejected() -> None:
    prelude = struct.pack("!II", 15, 0)
    with pytest.raises(FrameError, match="impossible"):
        FrameDecoder(LIMIT).feed(prelude + struct.pack("!I", zlib.crc32(prelude)))
    prelude = struct.pack("!II", 40, 30)
    with pytest.raises(FrameError, match="impossible"):
        FrameDecoder(LIMIT).feed(prelude + struct.pack("!I", zlib.crc32(prelude)))


def test_a_header_running_past_its_block_is_rejected() -> None:
    bad = bytes([5]) + b"ab"  # a 5-byte name with 2 bytes left
    with pytest.raises(FrameError):
        FrameDecoder(LIMIT).feed(_message(bad, b"{}"))
