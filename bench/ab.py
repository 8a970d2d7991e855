#!/usr/bin/env python3
"""Two builds of the router, one run: CPU microseconds per request, A B A B.

A change on the request path says what it costs per request. This script answers that
question for two git revisions (or a revision and the working tree) in the same run, on
the same fake upstream, with the same client, interleaved round by round so machine
noise falls on both sides alike:

    python bench/ab.py --base main                      # main vs this working tree
    python bench/ab.py --base HEAD~3 --head HEAD --scenario stream
    python bench/ab.py --base main --scenario limits --rounds 8 --requests 4000
    python bench/ab.py --base main --scenario limits --state-a redis --state-b redis
    python bench/ab.py --base HEAD --head HEAD --scenario limits --state-b redis  # x memory

Each build runs as ``python -m llm_router serve`` with ``PYTHONPATH`` set to its own
source tree (an exported copy for a revision), so one venv serves both. The figure is the
router process's time on CPU (every thread's ``/proc/<pid>/task/*/schedstat``, in
nanoseconds) divided by the requests of the round (the redis-server's CPU, with
``--state-a/-b redis``, is reported apart); the first round of each build is a
warm-up and is not counted. The report gives every round and the medians;
``bench/results/ab-<stamp>.json`` keeps the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from procs import Children, cpu_ns, free_port

_BENCH = Path(__file__).resolve().parent
_REPO = _BENCH.parent
_KEY = "sk-bench-ab"
_USER_KEY = "sk-bench-ab-user"
_BODY = {"model": "ab", "messages": [{"role": "user", "content": "Say something short."}],
         "max_tokens": 16}
# A conversation at its tenth turn: a 6 KB system prompt, then turns of ~400 bytes
# (issue 17: what hashing a prompt's prefix for cache affinity costs per request).
_CONVERSATION = {"model": "ab", "max_tokens": 16, "messages": [
    {"role": "system", "content": "You are a careful assistant. Follow the house rules. " * 115},
    *[{"role": role, "content": f"turn {n}: " + "some words of the conversation " * 12}
      for n in range(19) for role in (("user",) if n % 2 == 0 else ("assistant",))]]}
# What each scenario sends, and the config lines it needs beyond the provider and group.
_SCENARIOS: dict[str, tuple[dict[str, object], list[str]]] = {
    "chat": (_BODY, [f"api_key: {_KEY}"]),
    "stream": ({**_BODY, "stream": True, "stream_options": {"include_usage": True}},
               [f"api_key: {_KEY}"]),
    "conversation": (_CONVERSATION, [f"api_key: {_KEY}"]),
    # A caller with limits and a budget: the admission and settlement path runs.
    "limits": (_BODY, [
        "users:", "  - name: bench", "    role: user",
        f"    keys: [{{key: {_USER_KEY}}}]",
        "    limits: {rpm: 100000000, tpm: 1000000000, daily_requests: 100000000}",
        "    budget: {usd: 1000000.0, period: monthly}",
        "pricing:", "  fake-gpt: {input: 0.15, output: 0.6}"]),
    # POST /v1/responses translated to chat (the fake has no say in it), plain and streamed.
    "responses": ({"model": "ab", "input": "Say something short.", "max_output_tokens": 16},
                  [f"api_key: {_KEY}"]),
    "responses-stream": ({"model": "ab", "input": "Say something short.",
                          "max_output_tokens": 16, "stream": True}, [f"api_key: {_KEY}"]),
    # POST /v1/messages translated to chat: a tool round trip, every block type the
    # router checks at the edge (issue 23: what the check costs per request).
    "messages": ({"model": "ab", "max_tokens": 16,
                  "system": [{"type": "text", "text": "Be brief."}],
                  "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
                  "messages": [
                      {"role": "user", "content": [{"type": "text", "text": "Look it up."}]},
                      {"role": "assistant", "content": [
                          {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]},
                      {"role": "user", "content": [
                          {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                          {"type": "text", "text": "Say something short."}]}]},
                 [f"api_key: {_KEY}"]),
}
# The same caller with a usage snapshot: every request also goes to the journal. Each
# build gets its own file ({snapshot} is replaced per build).
_SCENARIOS["durable"] = (_BODY, [*_SCENARIOS["limits"][1], "usage:",
                                 "  snapshot_path: {snapshot}", "  snapshot_interval_s: 30"])
# The limited caller with a webhook receiver that wants budget events (docs/webhooks.md):
# every recorded request notes its account, a background check reads its spend. The
# receiver is never called (the budget is never near a threshold) and need not exist.
_SCENARIOS["webhooks"] = (_BODY, [*_SCENARIOS["limits"][1], "webhooks:",
                                  "  - url: http://127.0.0.1:9/hooks",
                                  "    secret: bench-webhook-secret",
                                  "    events: [budget_threshold]"])
_USER_SCENARIOS = frozenset({"limits", "durable", "webhooks"})
_STREAMED = frozenset({"stream", "responses-stream"})


@dataclass
class Build:
    name: str  # A | B
    rev: str  # the revision, or "working tree"
    tree: Path
    port: int = 0
    pid: int = 0
    rounds: list[dict[str, float]] = field(default_factory=list)



def _export(rev: str, into: Path) -> Path:
    """The files of ``rev`` (only what git tracks) under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(_REPO), "archive", "--format=tar", rev],
                             check=True, capture_output=True).stdout
    tar_path = into.with_suffix(".tar")
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    tar_path.unlink()
    return into


# The upstream a build's group reaches, all on the one fake: (type, base_url suffix,
# model). openai is a passthrough; gemini is translated both ways (hub <-> generateContent).
_UPSTREAMS: dict[str, tuple[str, str, str]] = {
    "openai": ("openai", "/v1", "fake-gpt"),
    "gemini": ("gemini", "", "gemini-2.5-flash"),
    # Translated both ways (hub <-> Converse), SigV4-signed, event-stream decoded.
    "bedrock": ("bedrock", "", "fake-model"),
    # The OpenAI wire at Azure's dated path (api-key header): passthrough, like openai.
    "azure": ("azure", "", "gpt-4o-mini"),
}
# Provider lines other than type and base_url; default: one API key.
_PROVIDER_LINES: dict[str, list[str]] = {
    "bedrock": ["    region: us-east-1",
                "    api_keys: [{access_key_id: AKIAFAKEBEDROCK00001, "
                "secret_access_key: fake-bedrock-secret-access-key}]"],
    "azure": ["    api_version: \"2024-10-21\"", "    api_keys: [sk-upstream-ab]"],
}


def _config(path: Path, upstream: str, scenario: str, kind: str = "openai",
            redis_url: str | None = None) -> None:
    snapshot = str(path.with_suffix(".usage.json"))
    # Each build its own prefix: the two never share counters.
    state = ["state:", f"  redis_url: {redis_url}", f"  prefix: ab-{path.stem}"] \
        if redis_url else []
    ptype, suffix, model = _UPSTREAMS[kind]
    lines = ["host: 127.0.0.1", "port: 8080", "shutdown_grace_s: 1",
             *(line.replace("{snapshot}", snapshot) for line in _SCENARIOS[scenario][1]),
             "providers:", "  - name: fake", f"    type: {ptype}",
             f"    base_url: {upstream}{suffix}",
             *_PROVIDER_LINES.get(kind, ["    api_keys: [sk-upstream-ab]"]),
             "groups:", "  - name: ab", f"    models: [{{provider: fake, name: {model}}}]",
             *state]
    path.write_text("\n".join(lines) + "\n")


def _env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def _check_import(tree: Path, cwd: Path) -> None:
    """Refuse to measure the wrong code: the tree's llm_router must be the one imported."""
    out = subprocess.run([sys.executable, "-c", "import llm_router; print(llm_router.__file__)"],
                         env={**os.environ, **_env(tree)}, capture_output=True, text=True,
                         check=True, cwd=cwd).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: python imports llm_router from {out}, not from the tree")


async def _load(url: str, key: str, body: dict[str, object], n: int, concurrency: int,
                stream: bool, extra: Mapping[str, str] | None = None) -> tuple[int, float]:
    """Send ``n`` requests, ``concurrency`` at a time, with the ``extra`` headers beside
    aiohttp's own (which accept br, gzip and deflate): (failures, wall seconds)."""
    failures = 0
    todo = iter(range(n))
    headers = {"Authorization": f"Bearer {key}", **(extra or {})}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker() -> None:
            nonlocal failures
            for _ in todo:
                async with session.post(url, json=body, headers=headers) as resp:
                    if stream:
                        async for _chunk in resp.content.iter_any():
                            pass
                    else:
                        await resp.read()
                    if resp.status != 200:
                        failures += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return failures, time.perf_counter() - t0


def _round(build: Build, args: argparse.Namespace, key: str,
           redis_pid: int = 0) -> dict[str, float]:
    body, _ = _SCENARIOS[args.scenario]
    route = ("responses" if args.scenario.startswith("responses")
             else "messages" if args.scenario == "messages" else "chat/completions")
    url = f"http://127.0.0.1:{build.port}/v1/{route}"
    cpu0, r0 = cpu_ns(build.pid), cpu_ns(redis_pid) if redis_pid else 0
    failures, wall = asyncio.run(_load(url, key, body, args.requests, args.concurrency,
                                       args.scenario in _STREAMED))
    cpu = (cpu_ns(build.pid) - cpu0) / 1e9
    redis_us = (cpu_ns(redis_pid) - r0) / 1e3 / args.requests if redis_pid else 0.0
    if failures:
        raise SystemExit(f"build {build.name} ({build.rev}): {failures} of {args.requests} "
                         "requests failed; see the logs under bench/results/")
    return {"cpu_us": cpu / args.requests * 1e6, "rps": args.requests / wall,
            "redis_us": redis_us}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="revision A (e.g. main, HEAD~1)")
    ap.add_argument("--head", default=None, help="revision B (default: the working tree)")
    ap.add_argument("--scenario", choices=sorted(_SCENARIOS), default="chat")
    ap.add_argument("--scenario-b", choices=sorted(_SCENARIOS), default=None,
                    help="build B's config, when it differs (same request body): e.g. "
                    "--base HEAD --head HEAD --scenario limits --scenario-b webhooks")
    ap.add_argument("--rounds", type=int, default=6, help="counted rounds per build")
    ap.add_argument("--requests", type=int, default=3000, help="requests per round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--upstream-a", choices=sorted(_UPSTREAMS), default="openai",
                    help="the upstream type build A's group reaches (default openai)")
    ap.add_argument("--upstream-b", choices=sorted(_UPSTREAMS), default="openai",
                    help="the same for build B: e.g. --base HEAD --head HEAD --upstream-b "
                    "gemini measures a translated upstream against a passthrough")
    ap.add_argument("--state-a", choices=("memory", "redis"), default="memory",
                    help="where build A keeps limits and spend: memory (default) or redis "
                    "(state.redis_url on a redis-server this script starts)")
    ap.add_argument("--state-b", choices=("memory", "redis"), default="memory",
                    help="the same for build B")
    args = ap.parse_args()
    redis_server = shutil.which("redis-server")
    if "redis" in (args.state_a, args.state_b) and redis_server is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = _BENCH / "results"
    children = Children(results / f"ab-{stamp}-logs")
    with tempfile.TemporaryDirectory(prefix="llm-router-ab-") as tmp:
        work = Path(tmp)
        builds = [Build("A", args.base, _export(args.base, work / "a")),
                  Build("B", args.head or "working tree",
                        _export(args.head, work / "b") if args.head else _REPO)]
        try:
            # Children run in the temp dir: python puts its cwd first on sys.path, and a
            # checkout's own llm_router/ there would shadow PYTHONPATH.
            for b in builds:
                _check_import(b.tree, work)
            redis_pid, redis_url = 0, None
            if redis_server is not None and "redis" in (args.state_a, args.state_b):
                rport = free_port()
                redis_pid = children.start("redis", [
                    redis_server, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", tmp]).pid
                redis_url = f"redis://127.0.0.1:{rport}/0"
            upstream = children.start_fake(_env(builds[1].tree), work)
            for b in builds:
                cfg = work / f"ab-{b.name}.yaml"  # one each: a snapshot file is per process
                state = args.state_a if b.name == "A" else args.state_b
                scenario = args.scenario if b.name == "A" else args.scenario_b or args.scenario
                _config(cfg, upstream, scenario,
                        args.upstream_a if b.name == "A" else args.upstream_b,
                        redis_url if state == "redis" else None)
                b.port = free_port()
                proc = children.start(f"router-{b.name}", [
                    sys.executable, "-m", "llm_router", "serve", "--config", str(cfg),
                    "--host", "127.0.0.1", "--port", str(b.port), "--log-level", "WARNING"],
                    env=_env(b.tree), cwd=work)
                children.wait_ready(f"router-{b.name}", proc,
                                    f"http://127.0.0.1:{b.port}/health")
                b.pid = proc.pid
            key = _USER_KEY if args.scenario in _USER_SCENARIOS else _KEY
            for b in builds:  # warm-up: imports, pools, caches; not counted
                _round(b, args, key, redis_pid)
            for r in range(args.rounds):
                order = builds if r % 2 == 0 else builds[::-1]
                for b in order:
                    b.rounds.append(_round(b, args, key, redis_pid))
                    x = b.rounds[-1]
                    print(f"round {r + 1} {b.name}: {x['cpu_us']:7.1f} µs CPU/req "
                          f"{x['rps']:7.0f} req/s" + (f"  redis {x['redis_us']:5.1f} µs"
                                                     if redis_pid else ""), flush=True)
        finally:
            children.stop_all()
    return _report(builds, args, results / f"ab-{stamp}.json")


def _report(builds: list[Build], args: argparse.Namespace, out: Path) -> int:
    med = {b.name: statistics.median(r["cpu_us"] for r in b.rounds) for b in builds}
    rps = {b.name: statistics.median(r["rps"] for r in b.rounds) for b in builds}
    delta = med["B"] - med["A"]
    scenario = args.scenario + (f" (B: {args.scenario_b})" if args.scenario_b else "")
    print(f"\nscenario {scenario}: {args.rounds} rounds x {args.requests} requests, "
          f"concurrency {args.concurrency}, interleaved; upstreams A {args.upstream_a}, "
          f"B {args.upstream_b}; state A {args.state_a}, B {args.state_b}")
    print("| build | revision | state | CPU µs/request (median) | req/s (median) | "
          "redis-server CPU µs/request |")
    print("|---|---|---|---|---|---|")
    for b in builds:
        rcpu = statistics.median(r["redis_us"] for r in b.rounds)
        print(f"| {b.name} | {b.rev} | {args.state_a if b.name == 'A' else args.state_b} | "
              f"{med[b.name]:.1f} | {rps[b.name]:.0f} | {rcpu:.1f} |")
    print(f"\nB - A = {delta:+.1f} µs per request ({delta / med['A'] * 100:+.1f} %); "
          f"B / A = {med['B'] / med['A']:.2f}")
    spread = {b.name: (min(r["cpu_us"] for r in b.rounds), max(r["cpu_us"] for r in b.rounds))
              for b in builds}
    print("round spread: " + ", ".join(f"{n} {lo:.0f}-{hi:.0f}" for n, (lo, hi) in
                                         spread.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"scenario": args.scenario, "requests": args.requests,
                               "state": {"A": args.state_a, "B": args.state_b},
                               "concurrency": args.concurrency,
                               "builds": [{"name": b.name, "rev": b.rev, "rounds": b.rounds}
                                          for b in builds],
                               "median_cpu_us": med, "median_rps": rps}, indent=2))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
