#!/usr/bin/env python3
"""What shared state costs: the Redis-backed router beside the in-process one, one run.

Targets, all in front of the same fake upstream, measured round by round, interleaved:

    hop       bench/forwarder.py: the floor of a Python hop
    memory    llm-router serve (state in the process)
    redis     llm-router serve with state.redis_url (a redis-server started here)
    redis-w2  the same with --workers 2 (CPU summed over both workers and the parent)

Callers: ``limits`` (a user with rpm, tpm, daily_requests and a budget: one Redis round
trip at admission, a batched write at settle) and ``plain`` (the legacy api_key: no
limits, no Redis round trip). Reported per target: the router's CPU µs per request
(every thread of every process, from schedstat), the redis-server's CPU µs per request,
and req/s. The first round of each target is a warm-up.

    python bench/shared_state.py                 # 6 rounds x 3000 requests, concurrency 16
    python bench/shared_state.py --caller plain --rounds 4

Needs redis-server (Debian package redis-server) and the redis extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ab import _BODY, _load
from procs import Children, free_port
from procs import cpu_ns as _cpu_ns

_BENCH = Path(__file__).resolve().parent
_REPO = _BENCH.parent
_KEY = "sk-bench-plain"
_USER_KEY = "sk-bench-limited"


@dataclass
class Target:
    name: str
    port: int = 0
    pid: int = 0
    rounds: list[dict[str, float]] = field(default_factory=list)


def _pids(root: int) -> list[int]:
    """``root`` and its children (the workers of --workers N)."""
    pids = [root]
    for task in Path(f"/proc/{root}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _cpu(root: int) -> int:
    total = 0
    for pid in _pids(root):
        try:
            total += _cpu_ns(pid)
        except OSError:
            continue
    return total


def _config(path: Path, upstream: str, redis_url: str | None) -> None:
    lines = ["host: 127.0.0.1", "port: 8080", "shutdown_grace_s: 1", f"api_key: {_KEY}",
             "users:", "  - name: bench", "    role: user", f"    keys: [{{key: {_USER_KEY}}}]",
             "    limits: {rpm: 100000000, tpm: 1000000000, daily_requests: 100000000}",
             "    budget: {usd: 1000000.0, period: monthly}",
             "pricing:", "  fake-gpt: {input: 0.15, output: 0.6}",
             "providers:", "  - name: fake", "    type: openai", f"    base_url: {upstream}/v1",
             "    api_keys: [sk-upstream-a, sk-upstream-b]",
             "groups:", "  - name: ab", "    affinity: off",
             "    models: [{provider: fake, name: fake-gpt}]"]
    if redis_url:
        lines += ["state:", f"  redis_url: {redis_url}", "  prefix: bench"]
    path.write_text("\n".join(lines) + "\n")


def _round(t: Target, args: argparse.Namespace, key: str, redis_pid: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{t.port}/v1/chat/completions"
    cpu0, r0 = _cpu(t.pid), _cpu_ns(redis_pid)
    failures, wall = asyncio.run(_load(url, key, _BODY, args.requests, args.concurrency,
                                       False))
    cpu, rcpu = (_cpu(t.pid) - cpu0) / 1e9, (_cpu_ns(redis_pid) - r0) / 1e9
    if failures:
        raise SystemExit(f"{t.name}: {failures} of {args.requests} requests failed")
    return {"cpu_us": cpu / args.requests * 1e6, "redis_us": rcpu / args.requests * 1e6,
            "rps": args.requests / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--caller", choices=("limits", "plain"), default="limits")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--targets", default="hop,memory,redis,redis-w2")
    args = ap.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = _BENCH / "results"
    children = Children(results / f"shared-{stamp}-logs")
    env = {"PYTHONPATH": str(_REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    targets = [Target(n) for n in args.targets.split(",")]
    key = _USER_KEY if args.caller == "limits" else _KEY
    with tempfile.TemporaryDirectory(prefix="llm-router-shared-") as tmp:
        work = Path(tmp)
        try:
            rport = free_port()
            redis = children.start("redis", [redis_server, "--port", str(rport), "--bind",
                                             "127.0.0.1", "--save", "", "--appendonly", "no",
                                             "--dir", tmp])
            upstream = children.start_fake(env, work)
            for t in targets:
                t.port = free_port()
                if t.name == "hop":
                    argv = [sys.executable, str(_BENCH / "forwarder.py"), "--port", str(t.port),
                            "--upstream", upstream]
                else:
                    cfg = work / f"{t.name}.yaml"
                    _config(cfg, upstream, None if t.name == "memory"
                            else f"redis://127.0.0.1:{rport}/0")
                    argv = [sys.executable, "-m", "llm_router", "serve", "--config", str(cfg),
                            "--host", "127.0.0.1", "--port", str(t.port),
                            "--log-level", "WARNING"]
                    if t.name == "redis-w2":
                        argv += ["--workers", "2"]
                proc = children.start(t.name, argv, env=env, cwd=work)
                ready = "/health" if t.name != "hop" else "/v1/models"
                children.wait_ready(t.name, proc, f"http://127.0.0.1:{t.port}{ready}")
                t.pid = proc.pid
            # The hop forwards whatever key; the routers need theirs.
            for t in targets:
                _round(t, args, key, redis.pid)  # warm-up
            for r in range(args.rounds):
                for t in targets if r % 2 == 0 else targets[::-1]:
                    t.rounds.append(_round(t, args, key, redis.pid))
                    x = t.rounds[-1]
                    print(f"round {r + 1} {t.name:9s} {x['cpu_us']:7.1f} µs CPU/req  redis "
                          f"{x['redis_us']:5.1f} µs  {x['rps']:6.0f} req/s", flush=True)
        finally:
            children.stop_all()
    return _report(targets, args, results / f"shared-{stamp}.json")


def _report(targets: list[Target], args: argparse.Namespace, out: Path) -> int:
    def med(t: Target, k: str) -> float:
        return statistics.median(r[k] for r in t.rounds)

    base = next((t for t in targets if t.name == "memory"), None)
    print(f"\ncaller {args.caller}: {args.rounds} rounds x {args.requests} requests, "
          f"concurrency {args.concurrency}, interleaved")
    print("| target | router CPU µs/req | x memory | redis-server CPU µs/req | req/s |")
    print("|---|---|---|---|---|")
    for t in targets:
        ratio = f"{med(t, 'cpu_us') / med(base, 'cpu_us'):.2f}" if base else "-"
        print(f"| {t.name} | {med(t, 'cpu_us'):.1f} | {ratio} | {med(t, 'redis_us'):.1f} | "
              f"{med(t, 'rps'):.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"caller": args.caller, "requests": args.requests,
                               "concurrency": args.concurrency,
                               "targets": {t.name: t.rounds for t in targets}}, indent=2))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
