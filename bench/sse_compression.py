#!/usr/bin/env python3
"""What compressing an SSE stream costs and saves, per codec setting (no router involved).

The router compresses a stream for a client that accepts it, with a flush after every
upstream read so each event still arrives at once (gateway/compression.py). Two shapes
of stream are measured on a realistic OpenAI chat stream (English text from
docs/operations.md in ~4-character tokens, ~280-byte chunks, a usage chunk, ``[DONE]``):

- *paced*: one event per flush, as a model streams tokens; the cost per flush and the
  bytes per event are what matter;
- *burst*: the first 20 events in one flush and the end (the bench's fake upstream,
  a cached or a whole answer replayed as a stream); the per-stream setup dominates.

CPU time is the best of 5 runs of ``time.thread_time_ns`` in this process:

    python bench/sse_compression.py
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli
import orjson

_DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
_HEAD = {"id": "chatcmpl-AZq1x9Ljk2LmPq8rStUvWxYz012", "object": "chat.completion.chunk",
         "created": 1733400000, "model": "gpt-4o-mini-2024-07-18",
         "system_fingerprint": "fp_0ba0d124f1"}


def _events(tokens: int) -> list[bytes]:
    words = re.findall(r"\s*\S{1,4}", _DOCS.read_text()[:8000])[:tokens]

    def chunk(delta: dict[str, str] | None, usage: dict[str, int] | None) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": None}]
        return b"data: " + orjson.dumps({**_HEAD, "choices": choices, "usage": usage}) + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""}, None)]
    out += [chunk({"content": w}, None) for w in words]
    out.append(chunk(None, {"prompt_tokens": 12, "completion_tokens": len(words),
                            "total_tokens": 12 + len(words)}))
    out.append(b"data: [DONE]\n\n")
    return out


def _best_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.thread_time_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time_ns() - t) / n)
    return best / 1e3


class _Br:
    def __init__(self, quality: int, lgwin: int) -> None:
        self.name = f"br quality={quality} lgwin={lgwin}"
        self.make = lambda: brotli.Compressor(quality=quality, lgwin=lgwin)

    def run(self, flushes: list[bytes]) -> int:
        c = self.make()
        out = sum(len(c.process(data)) + len(c.flush()) for data in flushes)
        return out + len(c.finish())


class _BrOneBlock:
    """A stream whose events all go out with its end, in one block (the router's
    StreamEncoder.finish when nothing was encoded before)."""

    def __init__(self, quality: int) -> None:
        self.name = f"br one block, quality={quality} lgwin=16"
        self.quality = quality

    def run(self, flushes: list[bytes]) -> int:
        return len(brotli.compress(b"".join(flushes), quality=self.quality, lgwin=16))


class _Gzip:
    name = "gzip level=6"

    def run(self, flushes: list[bytes]) -> int:
        z = zlib.compressobj(6, zlib.DEFLATED, 31)
        out = sum(len(z.compress(data)) + len(z.flush(zlib.Z_SYNC_FLUSH)) for data in flushes)
        return out + len(z.flush(zlib.Z_FINISH))


def main() -> int:
    paced = _events(1500)
    burst = [b"".join(_events(18))]
    raw_paced, raw_burst = sum(map(len, paced)), len(burst[0])
    print(f"paced: {len(paced)} events, {raw_paced} bytes; burst: 20 events, {raw_burst} bytes")
    print("| setting | paced µs/flush | paced bytes/event | paced ratio | burst µs/stream "
          "| burst ratio |\n|---|---|---|---|---|---|")
    codecs: list[_Br | _BrOneBlock | _Gzip] = [
        _Br(q, lg) for q, lg in ((1, 16), (2, 16), (2, 18), (3, 16), (3, 18), (4, 16))]
    codecs += [_Gzip(), _BrOneBlock(1), _BrOneBlock(2)]
    for codec in codecs:
        b_bytes = codec.run(burst)
        b_us = _best_us(lambda c=codec: c.run(burst), 300)
        paced_cells = "- | - | -"  # one block: not a paced stream
        if not isinstance(codec, _BrOneBlock):
            p_bytes = codec.run(paced)
            p_us = _best_us(lambda c=codec: c.run(paced), 2) / len(paced)
            paced_cells = (f"{p_us:.2f} | {p_bytes / len(paced):.1f} | "
                           f"{raw_paced / p_bytes:.1f}x")
        print(f"| {codec.name} | {paced_cells} | {b_us:.1f} | {raw_burst / b_bytes:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
