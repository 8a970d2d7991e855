#!/usr/bin/env python3
"""The request path's ratios (issue 27), every comparison in one run.

CPU microseconds per request (every thread's ``/proc/<pid>/task/*/schedstat``), with
the same client, the same fake upstream and the same bare hop (``forwarder.py``),
interleaved case by case and round by round so machine noise falls on every side alike:

    chat          / hop-chat       a chat completion against the bare hop   goal <= 1.25
    stream        / hop-stream     a streamed chat completion, the same     goal <= 1.3
    stream-identity / hop-stream   the same for a client that accepts no
                                   compression (the hop compresses nothing) <= 1.3
    responses     / chat           POST /v1/responses translated to chat    goal <= 1.5
    messages-stream                an Anthropic client's stream through an
                                   anthropic-type member (no ratio: the hop
                                   has no Anthropic case)
    limits        / chat           a user with rpm, tpm, daily requests and
                                   a budget, state in memory                goal <= 1.1
    limits-redis  / limits         the same user with state.redis_url       goal <= 1.3

The last needs ``redis-server`` on PATH (it is skipped otherwise). One router process per
build serves the plain, stream, responses and limits cases (the legacy ``api_key`` and
the limited user side by side in one config); a second one per build has
``state.redis_url``. Give ``--rev`` twice to measure two builds in the same run (before
and after):

    python bench/ratios.py                          # the working tree
    python bench/ratios.py --rev main --rev WORK     # main and the working tree, one run
    python bench/ratios.py --rounds 8 --requests 4000 --cases chat,hop-chat

``bench/results/ratios-<stamp>.json`` keeps every round's figures.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ab import _BODY, _check_import, _env, _export, _load
from procs import Children, cpu_ns, free_port

_BENCH = Path(__file__).resolve().parent
_REPO = _BENCH.parent
_KEY = "sk-bench-ratios"
_USER_KEY = "sk-bench-ratios-user"
_WORK = "WORK"  # --rev WORK: the working tree itself
_STREAM = {**_BODY, "stream": True, "stream_options": {"include_usage": True}}
_RESPONSES = {"model": "ab", "input": "Say something short.", "max_output_tokens": 16}
# An Anthropic SDK's streamed Messages request, passed through to an anthropic-type
# member (the fake's /v1/messages): the Anthropic stream path, message_start first.
_MESSAGES_STREAM = {"model": "ab-messages", "max_tokens": 16, "stream": True,
                    "messages": [{"role": "user", "content": "Say something short."}]}


@dataclass(frozen=True)
class Case:
    name: str
    server: str  # hop | memory | redis
    route: str
    body: dict[str, object]
    key: str
    stream: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # beyond the key and aiohttp's own


def load_case(url: str, case: Case, n: int, concurrency: int) -> tuple[int, float]:
    """``n`` requests of ``case`` to ``url``, ``concurrency`` at a time: (failures, wall
    seconds)."""
    return asyncio.run(_load(url, case.key, case.body, n, concurrency, case.stream,
                             dict(case.headers)))


CASES = (
    Case("hop-chat", "hop", "chat/completions", _BODY, _KEY),
    Case("hop-stream", "hop", "chat/completions", _STREAM, _KEY, stream=True),
    Case("chat", "memory", "chat/completions", _BODY, _KEY),
    Case("stream", "memory", "chat/completions", _STREAM, _KEY, stream=True),
    # The same stream for a client that accepts no compression: like for like with the
    # hop, which passes the fake's uncompressed bytes through (aiohttp's client accepts
    # br, so "stream" includes brotli-compressing the events; README "Performance").
    Case("stream-identity", "memory", "chat/completions", _STREAM, _KEY, stream=True,
         headers=(("Accept-Encoding", "identity"),)),
    Case("responses", "memory", "responses", _RESPONSES, _KEY),
    Case("messages-stream", "memory", "messages", _MESSAGES_STREAM, _KEY, stream=True),
    Case("limits", "memory", "chat/completions", _BODY, _USER_KEY),
    Case("limits-redis", "redis", "chat/completions", _BODY, _USER_KEY),
)
# (numerator, denominator, goal): the four goals and the Redis one, and the
# stream's goal again like for like (no compression on either side).
RATIOS = (("chat", "hop-chat", 1.25), ("stream", "hop-stream", 1.3),
          ("stream-identity", "hop-stream", 1.3),
          ("responses", "chat", 1.5), ("limits", "chat", 1.1),
          ("limits-redis", "limits", 1.3))


@dataclass
class Build:
    rev: str
    tree: Path
    ports: dict[str, int] = field(default_factory=dict)  # server -> port
    pids: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, list[float]] = field(default_factory=dict)  # case -> cpu µs per round


def _config(path: Path, upstream: str, redis_url: str | None, prefix: str,
            group_settings: Sequence[str] = ()) -> None:
    """The config of every router case; ``group_settings`` are added to the group as
    written (``affinity: off``): what a setting costs, with the rest unchanged."""
    lines = ["host: 127.0.0.1", "port: 8080", "shutdown_grace_s: 1", f"api_key: {_KEY}",
             "users:", "  - name: bench", "    role: user", f"    keys: [{{key: {_USER_KEY}}}]",
             "    limits: {rpm: 100000000, tpm: 1000000000, daily_requests: 100000000}",
             "    budget: {usd: 1000000.0, period: monthly}",
             "pricing:", "  fake-gpt: {input: 0.15, output: 0.6}",
             "  fake-claude: {input: 3.0, output: 15.0}",
             "providers:", "  - name: fake", "    type: openai", f"    base_url: {upstream}/v1",
             "    api_keys: [sk-upstream-ab]",
             "  - name: fake-anthropic", "    type: anthropic", f"    base_url: {upstream}",
             "    api_keys: [sk-ant-upstream-ab]",
             "groups:", "  - name: ab", "    models: [{provider: fake, name: fake-gpt}]",
             *(f"    {line}" for line in group_settings),
             # messages-stream's: after ab, so that ab's settings stay ab's alone.
             "  - name: ab-messages",
             "    models: [{provider: fake-anthropic, name: fake-claude}]"]
    if redis_url:
        lines += ["state:", f"  redis_url: {redis_url}", f"  prefix: {prefix}"]
    path.write_text("\n".join(lines) + "\n")


def _measure(port: int, pid: int, case: Case, args: argparse.Namespace) -> float:
    url = f"http://127.0.0.1:{port}/v1/{case.route}"
    cpu0 = cpu_ns(pid)
    failures, _ = load_case(url, case, args.requests, args.concurrency)
    cpu = cpu_ns(pid) - cpu0
    if failures:
        raise SystemExit(f"{case.name} on port {port}: {failures} of {args.requests} "
                         "requests failed; see the logs under bench/results/")
    return cpu / 1e3 / args.requests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", action="append", default=None,
                    help=f"a build: a git revision, or {_WORK} for the working tree "
                    "(default: the working tree); twice for before and after")
    ap.add_argument("--cases", default=",".join(c.name for c in CASES))
    ap.add_argument("--rounds", type=int, default=6, help="counted rounds")
    ap.add_argument("--requests", type=int, default=2000, help="requests per case and round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--log-level", default="WARNING",
                    help="the routers' log level; INFO (serve's default) adds the access "
                    "log line of every request")
    ap.add_argument("--group-setting", action="append", default=[], metavar="LINE",
                    help="a line added to the routers' group, e.g. 'affinity: off'")
    args = ap.parse_args()
    wanted = args.cases.split(",")
    cases = [c for c in CASES if c.name in wanted]
    redis_server = shutil.which("redis-server")
    if redis_server is None and any(c.server == "redis" for c in cases):
        print("redis-server not found: limits-redis is skipped", file=sys.stderr)
        cases = [c for c in cases if c.server != "redis"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = _BENCH / "results"
    children = Children(results / f"ratios-{stamp}-logs")
    hop: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="llm-router-ratios-") as tmp:
        work = Path(tmp)
        revs = args.rev or [_WORK]
        builds = [Build(rev, _REPO if rev == _WORK else _export(rev, work / f"b{i}"))
                  for i, rev in enumerate(revs)]
        try:
            for b in builds:
                _check_import(b.tree, work)
            env = _env(builds[-1].tree)
            redis_url = None
            if any(c.server == "redis" for c in cases):
                rport = free_port()
                children.start("redis", [redis_server or "redis-server", "--port", str(rport),
                                         "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                         "no", "--dir", tmp])
                redis_url = f"redis://127.0.0.1:{rport}/0"
            upstream = children.start_fake(env, work)
            hop_port = free_port()
            hop_proc = children.start("hop", [sys.executable, str(_BENCH / "forwarder.py"),
                                              "--port", str(hop_port), "--upstream", upstream],
                                      env=env, cwd=work)
            children.wait_ready("hop", hop_proc, f"http://127.0.0.1:{hop_port}/v1/models")
            for i, b in enumerate(builds):
                b.ports["hop"], b.pids["hop"] = hop_port, hop_proc.pid
                for server in sorted({c.server for c in cases} - {"hop"}):
                    cfg = work / f"{server}-{i}.yaml"
                    _config(cfg, upstream, redis_url if server == "redis" else None,
                            f"ratios{i}", args.group_setting)
                    port = free_port()
                    proc = children.start(f"{server}-{i}", [
                        sys.executable, "-m", "llm_router", "serve", "--config", str(cfg),
                        "--host", "127.0.0.1", "--port", str(port), "--log-level",
                        args.log_level],
                        env=_env(b.tree), cwd=work)
                    children.wait_ready(f"{server}-{i}", proc, f"http://127.0.0.1:{port}/health")
                    b.ports[server], b.pids[server] = port, proc.pid
            # The steps of a round: each router case per build, the hop's cases once.
            steps = [(b, c) for c in cases for b in builds if c.server != "hop"]
            steps += [(builds[0], c) for c in cases if c.server == "hop"]
            for b, c in steps:  # warm-up: imports, pools, caches; not counted
                _measure(b.ports[c.server], b.pids[c.server], c, args)
            for r in range(args.rounds):
                for b, c in steps if r % 2 == 0 else steps[::-1]:
                    us = _measure(b.ports[c.server], b.pids[c.server], c, args)
                    (hop if c.server == "hop" else b.rounds).setdefault(c.name, []).append(us)
                    who = "hop" if c.server == "hop" else b.rev
                    print(f"round {r + 1} {who:>12} {c.name:13s} {us:7.1f} µs CPU/req",
                          flush=True)
        finally:
            children.stop_all()
    return _report(builds, hop, args, results / f"ratios-{stamp}.json")


def _report(builds: list[Build], hop: dict[str, list[float]], args: argparse.Namespace,
            out: Path) -> int:
    print(f"\n{args.rounds} rounds x {args.requests} requests per case, concurrency "
          f"{args.concurrency}, interleaved; CPU µs per request, median (spread)")
    head = " | ".join(b.rev for b in builds)
    print(f"| case | {head} |\n|---|{'---|' * len(builds)}")
    medians: list[dict[str, float]] = []
    for b in builds:
        medians.append({**{k: statistics.median(v) for k, v in hop.items()},
                        **{k: statistics.median(v) for k, v in b.rounds.items()}})
    for c in CASES:
        if c.name not in medians[0]:
            continue
        figures = hop[c.name] if c.server == "hop" else None
        cells = []
        for b, m in zip(builds, medians, strict=True):
            rounds = figures or b.rounds[c.name]
            cells.append(f"{m[c.name]:.1f} ({min(rounds):.0f}-{max(rounds):.0f})")
        print(f"| {c.name} | {' | '.join(cells)} |")
    print(f"\n| ratio | goal | {head} |\n|---|---|{'---|' * len(builds)}")
    for num, den, goal in RATIOS:
        if num not in medians[0] or den not in medians[0]:
            continue
        cells = [f"{m[num] / m[den]:.2f}{'' if m[num] / m[den] <= goal else ' ✗'}"
                 for m in medians]
        print(f"| {num} / {den} | ≤ {goal} | {' | '.join(cells)} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"requests": args.requests, "concurrency": args.concurrency,
                               "hop": hop, "builds": [{"rev": b.rev, "rounds": b.rounds}
                                                      for b in builds]}, indent=2))
    print(f"raw figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
