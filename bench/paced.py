"""Open-loop load at a fixed rate (wrk2's ``-R``, which Debian's wrk lacks).

Request i is launched at ``start + i / rate`` whether or not earlier ones have
answered, so a slow target cannot slow the offered load (no coordinated omission).
Latency is measured from the scheduled start; ``lateness_ms`` says how far behind
schedule this client itself ran (if its p99 is not far below the latencies measured,
the client, not the target, was the bottleneck). Prints one JSON summary line.
Used by bench/run.py, scenario 2:

    python bench/paced.py --url http://127.0.0.1:9100/v1/chat/completions --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson
from stats import percentiles

__all__ = ["main"]


async def _one(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str], scheduled: float, out: list[float],
               late: list[float], errors: dict[str, int]) -> None:
    late.append(time.perf_counter() - scheduled)
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                errors[f"status_{resp.status}"] = errors.get(f"status_{resp.status}", 0) + 1
                return
        out.append(time.perf_counter() - scheduled)
    except (aiohttp.ClientError, TimeoutError) as exc:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1


async def _phase(session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes,
                 headers: dict[str, str], seconds: float) -> dict[str, Any]:
    total = max(1, int(args.rate * seconds))
    lat: list[float] = []
    late: list[float] = []
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(_one(session, args.url, body, headers, scheduled, lat, late,
                                        errors))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout)
    return {"sent": total, "ok": len(lat), "errors": errors,
            "latency_ms": percentiles(lat), "lateness_ms": percentiles(late)}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    body = orjson.dumps({
        "model": args.model, "max_tokens": args.max_tokens,
        "messages": [{"role": "user", "content": "Say hello to the benchmark, briefly."}],
    })
    # identity: aiohttp would otherwise offer gzip/br, and the router would compress.
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.key}",
               "Accept-Encoding": "identity"}
    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     trust_env=False) as session:
        if args.warmup_s > 0:  # fills the pools on every hop; its figures are dropped
            await _phase(session, args, body, headers, args.warmup_s)
        result = await _phase(session, args, body, headers, args.duration)
    result["rate"] = args.rate
    result["duration_s"] = args.duration
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="sk-bench")
    p.add_argument("--model", default="bench")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    p.add_argument("--warmup-s", type=float, default=1.0, help="seconds sent, not measured")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner: Any = uvloop.run if uvloop is not None else asyncio.run
    sys.stdout.write(orjson.dumps(runner(_run(args))).decode() + "\n")


if __name__ == "__main__":
    main()
