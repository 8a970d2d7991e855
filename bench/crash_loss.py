#!/usr/bin/env python3
"""What a SIGKILL under load costs: requests, tokens and dollars clients were told about
that the restarted router no longer counts (issue 12).

    flock /work/bench.lock python bench/crash_loss.py --runs 5 --seconds 5.1

Each run starts a fake upstream and ``llm-router serve`` with a usage snapshot (default
interval, 30 s: only the journal can save the day), drives ``--concurrency`` clients
for ``--seconds``, sends SIGKILL while they are still sending, restarts the router and
compares what the clients were told (their ``X-Router-Cost-USD`` headers and the usage
in the bodies) with ``GET /admin/usage``. Requests cut by the kill count on neither side,
except those the router recorded before the client read the answer: they make the
restored figure *higher* than what clients saw, so the loss is reported as
``told - restored`` with that slack noted. The figures go to docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from procs import free_port

_KEY = "sk-bench-crash"
_BODY = {"model": "g", "messages": [{"role": "user", "content": "Say something short."}],
         "max_tokens": 16}


def _config(path: Path, upstream: int, snapshot: Path) -> None:
    path.write_text("\n".join([
        f"api_key: {_KEY}", "providers:", "  - name: up", "    type: openai",
        f"    base_url: http://127.0.0.1:{upstream}/v1", "    api_keys: [sk-up]",
        "groups:", "  - name: g", "    models: [{provider: up, name: fake-gpt}]",
        "pricing:", "  fake-gpt: {input: 0.15, output: 0.6}",
        "usage:", f"  snapshot_path: {snapshot}", "  snapshot_interval_s: 30", ""]))


async def _start(args: list[str], log: Path) -> asyncio.subprocess.Process:
    with open(log, "ab") as fh:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "llm_router", *args,
                                                    stdout=fh, stderr=fh)


async def _wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} never answered")
            await asyncio.sleep(0.05)


async def _run_once(work: Path, upstream: int, seconds: float, concurrency: int
                    ) -> dict[str, Any]:
    snapshot = work / "usage.json"
    for old in work.glob("usage.json*"):
        old.unlink()
    cfg = work / "router.yaml"
    _config(cfg, upstream, snapshot)
    port = free_port()
    serve = ["serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "WARNING"]
    url = f"http://127.0.0.1:{port}"
    router = await _start(serve, work / "router.log")
    await _wait_ready(url + "/health/ready")
    told: list[tuple[float, float, int]] = []  # (when, cost, tokens)
    t0 = time.monotonic()
    headers = {"Authorization": f"Bearer {_KEY}"}

    async def client(s: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with s.post(url + "/v1/chat/completions", json=_BODY,
                                  headers=headers) as resp:
                    doc = await resp.json()
                    if resp.status == 200:
                        told.append((time.monotonic() - t0,
                                     float(resp.headers["X-Router-Cost-USD"]),
                                     doc["usage"]["total_tokens"]))
            except (TimeoutError, aiohttp.ClientError):
                return  # the router is gone

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        tasks = [asyncio.create_task(client(s)) for _ in range(concurrency)]
        await asyncio.sleep(seconds)
        router.send_signal(signal.SIGKILL)
        killed_at = time.monotonic() - t0
        await router.wait()
        await asyncio.gather(*tasks)

    router = await _start(serve, work / "router.log")
    await _wait_ready(url + "/health/ready")
    async with aiohttp.ClientSession() as s, s.get(url + "/admin/usage",
                                                   headers=headers) as resp:
        report = await resp.json()
    router.send_signal(signal.SIGTERM)
    await router.wait()
    users = [u for u in report["users"] if u["name"] == "default"]
    total = users[0]["usage"]["total"] if users else {"requests": 0, "total_tokens": 0,
                                                      "cost_usd": 0.0}
    rate = len(told) / killed_at
    lost = len(told) - total["requests"]
    return {"killed_at_s": round(killed_at, 2), "told_requests": len(told),
            "restored_requests": total["requests"], "lost_requests": lost,
            "lost_tokens": sum(t[2] for t in told) - total["total_tokens"],
            "lost_usd": round(sum(t[1] for t in told) - total["cost_usd"], 8),
            "req_per_s": round(rate, 1),
            "lost_seconds_of_traffic": round(lost / rate, 3) if rate else None}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.1, help="load before the SIGKILL")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="llm-router-crash-") as tmp:
        work = Path(tmp)
        upstream_port = free_port()
        fake = await _start(["fake-upstream", "--host", "127.0.0.1", "--port",
                             str(upstream_port)], work / "fake.log")
        try:
            await _wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models")
            for i in range(args.runs):
                r = await _run_once(work, upstream_port, args.seconds, args.concurrency)
                results.append(r)
                print(f"run {i + 1}: {json.dumps(r)}", flush=True)
        finally:
            fake.send_signal(signal.SIGTERM)
            await fake.wait()
    worst = max(r["lost_seconds_of_traffic"] or 0 for r in results)
    print(f"\nworst loss: {worst:.3f} s of traffic; lost requests per run: "
          f"{[r['lost_requests'] for r in results]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
