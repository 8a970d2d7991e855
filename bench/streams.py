"""Many concurrent SSE chat streams against one target; prints one JSON summary line.

Each of ``--streams`` workers starts after a share of ``--ramp-s`` (so connections open
at a steady pace, not as one SYN flood), then runs ``--rounds`` streams back to back.
Every event is stamped when the bytes completing it arrive; from those come the time to
first token (request sent to first event) and every inter-event gap.

The figures reported first are those of the *steady* streams: started after the ramp
and finished before the first worker ran out of rounds, so all ``--streams`` were open
the whole time, and their connection was already open (a worker's first stream, which
pays the TCP connect, is summarised apart as ``cold_ttft_ms``). With too few steady
streams (a short smoke run) every stream counts, and ``window`` says ``all``.
Run as its own process by bench/run.py (scenarios 3 and 4):

    python bench/streams.py --url http://127.0.0.1:9100/v1/chat/completions --streams 100
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from stats import percentiles

__all__ = ["main"]


@dataclass
class _Stream:
    sent: float
    end: float
    ttft: float
    gaps: list[float]
    cold: bool  # the worker's first stream: includes opening the connection


@dataclass
class _Totals:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    streams: list[_Stream] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    active: int = 0
    peak_active: int = 0
    first_done: float = float("inf")  # when the first worker finished its rounds

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1


def _summary(streams: list[_Stream]) -> dict[str, Any]:
    return {
        "streams": len(streams),
        "ttft_ms": percentiles([s.ttft for s in streams]),
        "gap_ms": percentiles([g for s in streams for g in s.gaps]),
        "max_gap_ms": percentiles([max(s.gaps, default=0.0) for s in streams]),
    }


def _mean_open(streams: list[_Stream], start: float, end: float) -> float | None:
    """Time-weighted number of streams open during [start, end] (SYN retries show here)."""
    if end <= start:
        return None
    open_s = sum(max(0.0, min(s.end, end) - max(s.sent, start)) for s in streams)
    return round(open_s / (end - start), 1)


async def _one(session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes,
               headers: dict[str, str], t: _Totals, cold: bool) -> None:
    t.active += 1
    t.peak_active = max(t.peak_active, t.active)
    try:
        sent = time.perf_counter()
        async with session.post(args.url, data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                t.fail(f"status_{resp.status}")
                return
            stamps: list[float] = []
            buf = b""
            done = False
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                buf += chunk
                # Count complete events; normalise CRLF so one boundary rule holds.
                if b"\r" in buf:
                    buf = buf.replace(b"\r\n", b"\n")
                while True:
                    end = buf.find(b"\n\n")
                    if end < 0:
                        break
                    event, buf = buf[:end], buf[end + 2:]
                    if event.startswith(b":"):
                        continue  # a keepalive comment is not a token
                    stamps.append(now)
                    if event == b"data: [DONE]":
                        done = True
        if not done or not stamps:
            t.fail("truncated")
            return
        t.ok += 1
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        t.streams.append(_Stream(sent, stamps[-1], stamps[0] - sent, gaps, cold))
        t.events.append(len(stamps))
    except (aiohttp.ClientError, TimeoutError) as exc:
        t.fail(type(exc).__name__)
    finally:
        t.active -= 1


async def _worker(i: int, session: aiohttp.ClientSession, args: argparse.Namespace,
                  body: bytes, headers: dict[str, str], t: _Totals) -> None:
    await asyncio.sleep(args.ramp_s * i / max(1, args.streams))
    for r in range(args.rounds):
        await _one(session, args, body, headers, t, cold=r == 0)
    t.first_done = min(t.first_done, time.perf_counter())


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    body = orjson.dumps({
        "model": args.model, "stream": True, "max_tokens": args.max_tokens,
        # Ask every target for usage, so all of them send the same events.
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Stream a short answer for the benchmark."}],
    })
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.key}",
               "Accept-Encoding": args.encoding}
    t = _Totals()
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     trust_env=False) as session:
        await asyncio.gather(*(_worker(i, session, args, body, headers, t)
                               for i in range(args.streams)))
    wall = time.perf_counter() - started
    ramp_end = started + args.ramp_s
    steady = [s for s in t.streams if s.sent >= ramp_end and s.end <= t.first_done]
    window = "steady" if len(steady) >= max(10, t.ok // 10) else "all"
    chosen = _summary(steady if window == "steady" else t.streams)
    chosen["window_concurrency"] = _mean_open(t.streams, ramp_end, t.first_done)
    return {
        "streams_ok": t.ok, "streams_failed": t.failed, "errors": t.errors,
        "peak_concurrent": t.peak_active, "wall_s": round(wall, 3),
        "events_per_stream": {"min": min(t.events, default=0), "max": max(t.events, default=0)},
        "window": window, **chosen,
        "cold_ttft_ms": percentiles([s.ttft for s in t.streams if s.cold]),
        "all": _summary(t.streams),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="sk-bench")
    p.add_argument("--model", default="bench")
    p.add_argument("--streams", type=int, default=100, help="concurrent streams")
    p.add_argument("--rounds", type=int, default=1, help="streams per worker, back to back")
    p.add_argument("--ramp-s", type=float, default=1.0, help="spread the first starts over this")
    p.add_argument("--max-tokens", type=int, default=48,
                   help="48 tokens = 50 chunks (role chunk + 48 words + finish chunk)")
    p.add_argument("--encoding", default="identity", help="Accept-Encoding: identity|gzip|br")
    p.add_argument("--timeout", type=float, default=120.0, help="per stream, seconds")
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner: Any = uvloop.run if uvloop is not None else asyncio.run
    result = runner(_run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
