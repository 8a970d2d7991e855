#!/usr/bin/env python3
"""Prompt-cache affinity (issue 17): cached share, cost and weight spread, auto vs off.

    python bench/affinity.py                # 60 conversations x 8 turns, 3 rounds
    python bench/affinity.py --rounds 1 --conversations 12
    python bench/affinity.py --bursts 12    # and then the burst scenario (issue 32)

One ``llm-router fake-upstream --prompt-cache-ttl-s 900`` (a per-key prompt cache) serves
a group of three keys, weights 1, 1 and 2 (two keys of a weight-1 provider, one key of a
weight-2 provider). Each round runs three routers, one after the other, on fresh
counters: affinity ``auto`` (the default), affinity ``off`` (plain inverse weight), and
``pin`` (auto with an unbounded slack: every conversation stays where its first turn
went, the reference the goal is stated against). Each router is sent the same
conversations, salted per run so no run finds another's prefixes in the fake's cache,
their turns interleaved at random (seeded), four requests at a time.

Reported per mode: the share of input tokens the upstream reported cached, the cost by
the pricing below, the spread of ``tokens x weight`` over the three keys ((max - min) /
min, from the router's selection counters), the affinity results, and the router's CPU
µs per request (schedstat, as bench/ab.py). The modes alternate in order round by round
(A B C, C B A); figures are medians over rounds. Results: bench/results/affinity-*.json.

The burst scenario (``--bursts N``, issue 32) follows each mode's round on the same
router, so the counters hold the round's traffic: N conversations, one after another,
each takes two calm turns (which pin it), fires a burst of 10 to 60 concurrent turns
(seeded; as parallel tool calls do: the same history, each with its own last message)
while the fake answers after ``--burst-latency-ms`` so the burst is in flight
together, then takes one more calm turn. Reported per mode: the cached share of the
bursts' input, and each key's peak share of a burst (its requests among the burst's,
the largest over bursts) against its weight's share (a1 and a2 40 %, b1 20 %).
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
from typing import Any

import aiohttp
from procs import Children, cpu_ns, free_port

_BENCH = Path(__file__).resolve().parent
_KEY = "sk-bench-affinity"
_SLACK = 0.25  # the default; --slack to try another
# Illustrative prices, USD per 1M tokens: cached input at a tenth of fresh (OpenAI's and
# Anthropic's discount is a tenth to a half).
_PRICE = {"input": 1.0, "cached_input": 0.1, "output": 4.0}
_MODES = {"auto": "{mode: auto, slack: %s}", "off": "off",
          "pin": "{mode: auto, slack: 1000000000}"}
_WORDS = ("route", "cache", "token", "weight", "prompt", "group", "answer", "stream", "limit",
          "budget", "key", "model", "reload", "metric", "health", "session")



def _config(path: Path, upstream: str, affinity: str) -> None:
    path.write_text("\n".join([
        "host: 127.0.0.1", "port: 8080", f"api_key: {_KEY}", "shutdown_grace_s: 1",
        "providers:",
        "  - {name: one, type: openai, base_url: " + upstream + "/v1,",
        "     api_keys: [{key: sk-up-a1, name: a1}, {key: sk-up-a2, name: a2}]}",
        "  - {name: two, type: openai, base_url: " + upstream + "/v1,",
        "     api_keys: [{key: sk-up-b1, name: b1}]}",
        "groups:",
        "  - name: conv",
        "    models: [{provider: one, name: fake-gpt, weight: 1},",
        "             {provider: two, name: fake-gpt, weight: 2}]",
        f"    affinity: {affinity}",
        "pricing:",
        f"  fake-gpt: {json.dumps(_PRICE)}",
    ]) + "\n")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


class _Conversation:
    def __init__(self, n: int, salt: str, seed: int) -> None:
        rng = random.Random(seed * 1000 + n)  # its own: turns interleave differently
        # System prompts of 2-6 KB: most conversations have their own, a fifth share one
        # (an app's fixed prompt), as real traffic mixes both.
        system = (_text(random.Random(7), 700) if n % 5 == 0
                  else _text(rng, rng.randint(300, 900)))
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"[{salt}] {system}"},
            {"role": "user", "content": f"conversation {n}: {_text(rng, rng.randint(20, 200))}"}]
        self.rng = rng

    def body(self) -> dict[str, Any]:
        return {"model": "conv", "messages": self.messages,
                "max_tokens": self.rng.randint(32, 160)}

    def answered(self, text: str) -> None:
        self.messages += [{"role": "assistant", "content": text},
                          {"role": "user", "content": _text(self.rng, self.rng.randint(10, 120))}]


def _schedule(conversations: int, turns: int, seed: int) -> list[int]:
    """Conversation numbers in the order their turns go out: each conversation's turns in
    order, the conversations interleaved at random."""
    rng = random.Random(seed)
    left = {c: turns for c in range(conversations)}
    order: list[int] = []
    while left:
        c = rng.choice(list(left))
        order.append(c)
        left[c] -= 1
        if not left[c]:
            del left[c]
    return order


async def _drive(url: str, convs: list[_Conversation], order: list[int],
                 concurrency: int) -> dict[str, float]:
    """Send every turn in ``order``; a conversation's next turn waits for its answer."""
    totals = {"prompt": 0.0, "cached": 0.0, "completion": 0.0, "cost": 0.0, "failed": 0.0}
    busy: dict[int, asyncio.Event] = {}
    queue = list(reversed(order))
    headers = {"Authorization": f"Bearer {_KEY}"}
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while queue:
                c = queue.pop()
                while c in busy:  # this conversation's previous turn is still out
                    await busy[c].wait()
                done = busy[c] = asyncio.Event()
                try:
                    async with session.post(url, json=convs[c].body(),
                                            headers=headers) as resp:
                        doc = await resp.json()
                        if resp.status != 200:
                            totals["failed"] += 1
                            continue
                        totals["cost"] += float(resp.headers["X-Router-Cost-USD"])
                    usage = doc["usage"]
                    totals["prompt"] += usage["prompt_tokens"]
                    totals["completion"] += usage["completion_tokens"]
                    totals["cached"] += (usage.get("prompt_tokens_details") or {}).get(
                        "cached_tokens", 0)
                    convs[c].answered(doc["choices"][0]["message"]["content"])
                finally:
                    del busy[c]
                    done.set()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return totals


async def _scrape(base: str) -> tuple[dict[str, float], dict[str, float]]:
    """(key_tokens by key label, affinity_total by result) from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as resp:
        text = await resp.text()
    keys: dict[str, float] = {}
    results: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llm_router_key_tokens":
                keys[sample.labels["key"]] = sample.value
            elif sample.name == "llm_router_affinity_total":
                results[sample.labels["result"]] = sample.value
    return keys, results


async def _bursts(base: str, upstream: str, salt: str, args: argparse.Namespace
                  ) -> dict[str, Any]:
    """The burst scenario: see the module docstring."""
    rng = random.Random(args.seed + 32)
    url = base + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {_KEY}"}
    totals = {"prompt": 0.0, "cached": 0.0, "failed": 0.0, "requests": 0.0}
    peak: dict[str, float] = {}
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)) as session:
        async def turn(conv: _Conversation, last: str | None = None) -> str | None:
            body = conv.body()
            if last is not None:
                body = {**body, "messages": [*conv.messages[:-1],
                                             {"role": "user", "content": last}]}
            async with session.post(url, json=body, headers=headers) as resp:
                doc = await resp.json()
                totals["requests"] += 1
                if resp.status != 200:
                    totals["failed"] += 1
                    return None
                key = resp.headers.get("X-Router-Key")
            usage = doc["usage"]
            totals["prompt"] += usage["prompt_tokens"]
            totals["cached"] += (usage.get("prompt_tokens_details") or {}).get(
                "cached_tokens", 0)
            if last is None:
                conv.answered(doc["choices"][0]["message"]["content"])
            return key

        async def latency(ms: int) -> None:
            async with session.post(upstream + "/_fake/settings",
                                    json={"latency_ms": ms}) as resp:
                resp.raise_for_status()

        for n in range(args.bursts):
            conv = _Conversation(1000 + n, salt, args.seed)
            await turn(conv)
            await turn(conv)
            size = rng.randint(10, 60)
            await latency(args.burst_latency_ms)
            try:
                keys = await asyncio.gather(*(turn(conv, f"tool result {i}: "
                                                   + _text(conv.rng, 40))
                                              for i in range(size)))
            finally:
                await latency(0)
            for key in set(keys) - {None}:
                share = keys.count(key) / size
                peak[str(key)] = max(peak.get(str(key), 0.0), share)
            await turn(conv)
    return {"cached_share": totals["cached"] / totals["prompt"] if totals["prompt"] else 0.0,
            "peak_share": peak, "failed": totals["failed"], "requests": totals["requests"]}


def _run(children: Children, work: Path, upstream: str, mode: str, salt: str,
         args: argparse.Namespace) -> dict[str, Any]:
    cfg = work / f"{mode}.yaml"
    _config(cfg, upstream, _MODES[mode].replace("%s", str(args.slack)))
    port = free_port()
    proc = children.start(f"router-{mode}", [
        sys.executable, "-m", "llm_router", "serve", "--config", str(cfg), "--host",
        "127.0.0.1", "--port", str(port), "--log-level", "WARNING"], cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        children.wait_ready(f"router-{mode}", proc, base + "/health")
        # The same conversations for every mode (their own generators, so the answers'
        # interleaving cannot change what a conversation says next).
        convs = [_Conversation(n, salt, args.seed) for n in range(args.conversations)]
        order = _schedule(args.conversations, args.turns, args.seed)
        cpu0 = cpu_ns(proc.pid)
        t0 = time.perf_counter()
        totals = asyncio.run(_drive(base + "/v1/chat/completions", convs, order,
                                    args.concurrency))
        wall = time.perf_counter() - t0
        cpu_us = (cpu_ns(proc.pid) - cpu0) / 1e3 / len(order)
        keys, results = asyncio.run(_scrape(base))
        burst = (asyncio.run(_bursts(base, upstream, salt, args)) if args.bursts
                 else None)
    finally:
        children.stop(proc)
    weights = {"a1": 1.0, "a2": 1.0, "b1": 2.0}
    scores = {k: keys.get(k, 0.0) * w for k, w in weights.items()}
    low = min(scores.values())
    return {
        "cached_share": totals["cached"] / totals["prompt"] if totals["prompt"] else 0.0,
        "cost_usd": totals["cost"], "prompt_tokens": totals["prompt"],
        "cached_tokens": totals["cached"], "completion_tokens": totals["completion"],
        "failed": totals["failed"], "tokens_x_weight": scores,
        "spread": (max(scores.values()) - low) / low if low else float("inf"),
        "results": results, "cpu_us": cpu_us, "wall_s": wall, "burst": burst,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=60)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--slack", type=float, default=_SLACK, help="affinity.slack of auto")
    ap.add_argument("--bursts", type=int, default=0,
                    help="conversations of the burst scenario after each run (0: none)")
    ap.add_argument("--burst-latency-ms", type=int, default=300,
                    help="the fake's latency during a burst, so it is in flight together")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = _BENCH / "results"
    children = Children(results / f"affinity-{stamp}-logs")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in _MODES}
    with tempfile.TemporaryDirectory(prefix="llm-router-affinity-") as tmp:
        work = Path(tmp)
        try:
            fake_port = free_port()
            fake = children.start("fake", [
                sys.executable, "-m", "llm_router", "fake-upstream", "--host", "127.0.0.1",
                "--port", str(fake_port), "--prompt-cache-ttl-s", "900"], cwd=work)
            upstream = f"http://127.0.0.1:{fake_port}"
            children.wait_ready("fake", fake, upstream + "/v1/models")
            for r in range(args.rounds):
                modes = list(_MODES) if r % 2 == 0 else list(reversed(_MODES))
                for mode in modes:
                    run = _run(children, work, upstream, mode, f"{stamp}-{r}-{mode}", args)
                    runs[mode].append(run)
                    print(f"round {r + 1} {mode:4}: cached {run['cached_share']:6.1%}  "
                          f"cost ${run['cost_usd']:.4f}  spread {run['spread']:6.1%}  "
                          f"cpu {run['cpu_us']:6.0f} µs/req  {run['results']}", flush=True)
                    if run["burst"] is not None:
                        b = run["burst"]
                        peaks = "  ".join(f"{k} {v:5.1%}"
                                          for k, v in sorted(b["peak_share"].items()))
                        print(f"        bursts: cached {b['cached_share']:6.1%}  "
                              f"peak share of a burst: {peaks}", flush=True)
        finally:
            children.stop_all()
    return _report(runs, args, results / f"affinity-{stamp}.json")


def _report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
            out: Path) -> int:
    def med(mode: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[mode])

    pin = med("pin", "cached_share")
    print(f"\n{args.conversations} conversations x {args.turns} turns, keys a1, a2 (weight 1) "
          f"and b1 (weight 2), slack {args.slack}; medians of {args.rounds} rounds")
    print("| mode | cached share of input | ÷ pin-forever | cost USD | tokens x weight "
          "spread | hit / new / moved | router CPU µs/req |")
    print("|---|---|---|---|---|---|---|")
    for mode in _MODES:
        res = runs[mode][len(runs[mode]) // 2]["results"]
        counts = " / ".join(str(int(res.get(k, 0))) for k in ("hit", "new", "moved"))
        if mode == "off":
            counts = f"off {int(res.get('off', 0))}"
        share = med(mode, "cached_share")
        print(f"| {mode} | {share:.1%} | {share / pin:.2f} | {med(mode, 'cost_usd'):.4f} | "
              f"{med(mode, 'spread'):.1%} | {counts} | {med(mode, 'cpu_us'):.0f} |")
    ok_cache = med("auto", "cached_share") >= 0.85 * pin
    ok_spread = all(r["spread"] <= args.slack for r in runs["auto"])
    print(f"\ngoal cached share >= 85 % of pin-forever: {'met' if ok_cache else 'MISSED'}; "
          f"goal spread <= slack in every auto round: {'met' if ok_spread else 'MISSED'}")
    if args.bursts:
        print(f"\nburst scenario: {args.bursts} conversations, bursts of 10-60 concurrent "
              f"turns; weights' shares a1 40 %, a2 40 %, b1 20 %")
        print("| mode | cached share of burst input | peak share of a burst a1 / a2 / b1 |")
        print("|---|---|---|")
        for mode in _MODES:
            mid = sorted(runs[mode], key=lambda r: r["burst"]["cached_share"])[
                len(runs[mode]) // 2]["burst"]
            worst = {k: max(r["burst"]["peak_share"].get(k, 0.0) for r in runs[mode])
                     for k in ("a1", "a2", "b1")}
            print(f"| {mode} | {mid['cached_share']:.1%} | "
                  + " / ".join(f"{worst[k]:.0%}" for k in ("a1", "a2", "b1")) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "price": _PRICE,
                               "runs": runs}, indent=2))
    print(f"raw figures: {out}")
    return 0 if all(r["failed"] == 0 and (r["burst"] is None or r["burst"]["failed"] == 0)
                    for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
