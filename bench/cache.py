#!/usr/bin/env python3
"""The response cache (issue 29): hit rate, CPU per hit against a miss, dollars saved.

One router (this working tree) with ``cache: exact`` in front of the fake upstream, and
one client replaying a trace of chat requests (``temperature: 0``) in which a share of
the prompts (``--repeat``, 30 % by default) repeats one sent earlier; a fifth of the
requests stream. It reports:

- the trace's **hit rate** (from ``x-router-cache``), the upstream calls it saved, and
  the **dollars saved** (``llm_router_cache_savings_usd_total``, at gpt-4o-mini's list
  price: a short answer is worth little, so the figure is per 1,000 requests too);
- the router's **CPU per request** for a round of new prompts to a group with the cache
  off, a round of misses (new prompts to the cached group: each goes upstream and is
  stored) and a round of hits (the same prompts again), interleaved round by round, from
  ``/proc/<pid>/task/*/schedstat`` as in ``bench/ab.py``.

    python bench/cache.py                       # 3000-request trace, 4 rounds of 1000
    python bench/cache.py --requests 6000 --repeat 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from procs import Children, cpu_ns, free_port

_BENCH = Path(__file__).resolve().parent
_REPO = _BENCH.parent
_KEY = "sk-bench-cache"
_PRICE = (0.15, 0.60)  # gpt-4o-mini, USD per 1M tokens in / out


def _config(path: Path, upstream: str) -> None:
    path.write_text("\n".join([
        "host: 127.0.0.1", "shutdown_grace_s: 1",
        "users:", "  - name: bench", "    role: admin", f"    keys: [{{key: {_KEY}}}]",
        "providers:", "  - name: fake", "    type: openai", f"    base_url: {upstream}/v1",
        "    api_keys: [sk-upstream-cache]",
        "groups:", "  - name: g", "    models: [{provider: fake, name: gpt-4o-mini}]",
        "  - name: plain", "    cache: off",
        "    models: [{provider: fake, name: gpt-4o-mini}]",
        "cache: {mode: exact, scope: global}",
        "pricing:", f"  gpt-4o-mini: {{input: {_PRICE[0]}, output: {_PRICE[1]}}}",
    ]) + "\n")


def _body(prompt: str, stream: bool, group: str = "g") -> dict[str, object]:
    body: dict[str, object] = {"model": group, "temperature": 0, "max_tokens": 64,
                               "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": prompt}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def trace(n: int, repeat: float, rng: random.Random) -> list[dict[str, object]]:
    """``n`` requests; each repeats an earlier prompt with probability ``repeat``."""
    prompts: list[str] = []
    out = []
    for i in range(n):
        if prompts and rng.random() < repeat:
            prompt = rng.choice(prompts)
        else:
            prompt = f"Question {i}: what is {rng.randrange(10**9)} in words?"
            prompts.append(prompt)
        out.append(_body(prompt, rng.random() < 0.2))
    return out


async def _send(url: str, bodies: list[dict[str, object]], concurrency: int) -> dict[str, int]:
    """Send every body, ``concurrency`` at a time: counts of x-router-cache values."""
    counts: dict[str, int] = {}
    todo = iter(bodies)
    headers = {"Authorization": f"Bearer {_KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker() -> None:
            for body in todo:
                async with s.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"status {resp.status}: {await resp.text()}")
                    result = resp.headers.get("x-router-cache", "none")
                    counts[result] = counts.get(result, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def _metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests in the trace")
    ap.add_argument("--repeat", type=float, default=0.3, help="share of repeated prompts")
    ap.add_argument("--rounds", type=int, default=4, help="miss/hit rounds (CPU)")
    ap.add_argument("--round-requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=29)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = _BENCH / "results"
    children = Children(results / f"cache-{stamp}-logs")
    env = {"PYTHONPATH": str(_REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory(prefix="llm-router-cache-") as tmp:
        work = Path(tmp)
        try:
            fake_port, port = free_port(), free_port()
            fake = children.start("fake", [sys.executable, "-m", "llm_router", "fake-upstream",
                                           "--host", "127.0.0.1", "--port", str(fake_port)],
                                  env=env, cwd=work)
            children.wait_ready("fake", fake, f"http://127.0.0.1:{fake_port}/v1/models")
            cfg = work / "cache.yaml"
            _config(cfg, f"http://127.0.0.1:{fake_port}")
            router = children.start("router", [
                sys.executable, "-m", "llm_router", "serve", "--config", str(cfg),
                "--port", str(port), "--log-level", "WARNING"], env=env, cwd=work)
            base = f"http://127.0.0.1:{port}"
            children.wait_ready("router", router, base + "/health")
            url = base + "/v1/chat/completions"
            # CPU: a round of new prompts (all misses), then the same again (all hits).
            asyncio.run(_send(url, trace(200, 0.0, rng), args.concurrency))  # warm-up
            cpu: dict[str, list[float]] = {"none": [], "miss": [], "hit": []}
            for r in range(args.rounds):
                prompts = [f"round {r} prompt {i} {rng.randrange(10**9)}"
                           for i in range(args.round_requests)]
                bodies = [_body(p, False) for p in prompts]
                off = ("none", [_body(p, False, "plain") for p in prompts])
                # Off and miss alternate who goes first, so drifting noise falls on both.
                rounds = [off, ("miss", bodies)] if r % 2 == 0 else [("miss", bodies), off]
                rounds.append(("hit", bodies))
                for want, sent in rounds:
                    c0 = cpu_ns(router.pid)
                    counts = asyncio.run(_send(url, sent, args.concurrency))
                    us = (cpu_ns(router.pid) - c0) / 1e3 / len(sent)
                    if counts.get(want) != len(sent):
                        raise SystemExit(f"round {r} {want}: {counts}")
                    cpu[want].append(us)
                    print(f"round {r + 1} {want}: {us:7.1f} µs CPU/request", flush=True)
            saved0 = asyncio.run(_metric(base, "llm_router_cache_savings_usd_total"))
            counts = asyncio.run(_send(url, trace(args.requests, args.repeat, rng),
                                       args.concurrency))
            saved = asyncio.run(_metric(base, "llm_router_cache_savings_usd_total")) - saved0
        finally:
            children.stop_all()
    hits = counts.get("hit", 0)
    report = {
        "requests": args.requests, "repeat": args.repeat, "counts": counts,
        "hit_rate": hits / args.requests, "upstream_calls_saved": hits,
        "saved_usd": saved, "saved_usd_per_1000_requests": saved / args.requests * 1000,
        "cpu_us_off": cpu["none"], "cpu_us_miss": cpu["miss"], "cpu_us_hit": cpu["hit"],
        "median_cpu_us_off": statistics.median(cpu["none"]),
        "median_cpu_us_miss": statistics.median(cpu["miss"]),
        "median_cpu_us_hit": statistics.median(cpu["hit"]),
    }
    print(f"\ntrace: {args.requests} requests, {args.repeat:.0%} repeated prompts, "
          f"a fifth streamed, concurrency {args.concurrency}")
    print("| hit rate | upstream calls saved | USD saved | USD saved / 1k requests | "
          "CPU µs/request, cache off | CPU µs/miss | CPU µs/hit | hit / miss |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {report['hit_rate']:.1%} | {hits} | {saved:.6f} | "
          f"{report['saved_usd_per_1000_requests']:.6f} | {report['median_cpu_us_off']:.0f} | "
          f"{report['median_cpu_us_miss']:.0f} | "
          f"{report['median_cpu_us_hit']:.0f} | "
          f"{report['median_cpu_us_hit'] / report['median_cpu_us_miss']:.2f} |")
    out = results / f"cache-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
