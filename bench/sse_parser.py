"""CPU cost of one large SSE event arriving in 16 KiB reads, at several sizes.

The splitter keeps an incomplete event as a list of pieces and searches only the new
bytes, so the cost should grow with the event's size, not its square. This was a test
once; a ratio of two timings fails on a busy CI box, so it lives here:

    python bench/sse_parser.py          # cost per size and per MiB, best of 5
"""

from __future__ import annotations

import time

from llm_router.hub.sse import SSEParser

READ = b"x" * 16384


def cost(size: int) -> float:
    parser = SSEParser(max_event=size + (1 << 20))
    t0 = time.process_time()
    parser.feed(b"data: ")
    for _ in range(size // len(READ)):
        parser.feed(READ)
    [event] = parser.feed(b"\n\n")
    took = time.process_time() - t0
    assert len(event) == size + 8
    return took


def main() -> None:
    sizes = [1 << 20, 4 << 20, 16 << 20, 32 << 20]
    print(f"{'event':>8} {'ms':>8} {'ms/MiB':>8}")
    for size in sizes:
        best = min(cost(size) for _ in range(5))
        print(f"{size >> 20:>6}Mi {best * 1e3:8.2f} {best * 1e3 / (size >> 20):8.3f}")


if __name__ == "__main__":
    main()
