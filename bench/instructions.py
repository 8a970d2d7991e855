#!/usr/bin/env python3
"""Instructions per request under callgrind: the request path's cost, whatever the load.

CPU time (``ab.py``, ``ratios.py``) is the figure that matters, but on a shared 2-core
box it moves by 15 % from one round to the next when other work runs. Valgrind's
callgrind counts the instructions a process executes, which other processes do not
change: the same build and requests give the same count within a fraction of a percent.
It does not see cache misses or system calls, so it ranks changes to the Python path
rather than predicting CPU time exactly.

Each target runs under ``valgrind --tool=callgrind`` (about 50 times slower), takes a
warm-up of ``--warmup`` requests, has its counters zeroed, serves ``--requests``
requests of each case, and is dumped; the figure is the dump's total over the requests.

    python bench/instructions.py                         # hop and the working tree, chat
    python bench/instructions.py --rev main --rev WORK --cases chat,stream,responses,limits
    python bench/instructions.py --cases chat --group-setting 'affinity: off'  # a feature's cost

Needs valgrind (Debian package valgrind). Cases and builds as in ``ratios.py``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ab import _check_import, _env, _export
from procs import Children, free_port
from ratios import _WORK, CASES, RATIOS, Case, _config, load_case

_BENCH = Path(__file__).resolve().parent
_REPO = _BENCH.parent


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def _count(children: Children, name: str, argv: list[str], env: dict[str, str], cwd: Path,
           port: int, cases: list[Case], args: argparse.Namespace) -> dict[str, float]:
    """Instructions per request of each case, from one process under callgrind."""
    out = cwd / f"{name}.callgrind"
    proc = children.start(name, ["valgrind", "--tool=callgrind",
                                 f"--callgrind-out-file={out}", *argv], env=env, cwd=cwd)
    ready = "/v1/models" if name == "hop" else "/health"
    children.wait_ready(name, proc, f"http://127.0.0.1:{port}{ready}", timeout_s=600)
    figures: dict[str, float] = {}
    try:
        for i, case in enumerate(cases):
            url = f"http://127.0.0.1:{port}/v1/{case.route}"
            load_case(url, case, args.warmup, 4)
            _control("-z", str(proc.pid))
            failures, _ = load_case(url, case, args.requests, 4)
            _control("-d", str(proc.pid))
            if failures:
                raise SystemExit(f"{name} {case.name}: {failures} requests failed")
            dump = Path(f"{out}.{i + 1}")
            for _ in range(100):  # the dump is written asynchronously
                if dump.exists() and "totals:" in dump.read_text(errors="replace"):
                    break
                time.sleep(0.1)
            totals = next(line for line in dump.read_text().splitlines()
                          if line.startswith("totals:"))
            figures[case.name] = int(totals.split()[1]) / args.requests
            print(f"{name:>12} {case.name:13s} {figures[case.name] / 1e3:8.0f} k instructions"
                  "/request", flush=True)
    finally:
        children.stop(proc, grace_s=3.0)
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", action="append", default=None,
                    help=f"a build: a git revision, or {_WORK} (default); repeat for more")
    ap.add_argument("--cases", default="chat,stream,responses,limits")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--log-level", default="WARNING",
                    help="the routers' log level; INFO (serve's default) adds the access "
                    "log line of every request")
    ap.add_argument("--group-setting", action="append", default=[], metavar="LINE",
                    help="a line added to the routers' group, e.g. 'affinity: off' (what "
                    "a feature costs); repeat for more")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    wanted = args.cases.split(",")
    cases = [c for c in CASES if c.name in wanted and c.server != "hop"]
    redis_server = shutil.which("redis-server")
    if redis_server is None and any(c.server == "redis" for c in cases):
        print("redis-server not found: limits-redis is skipped", file=sys.stderr)
        cases = [c for c in cases if c.server != "redis"]
    hop_cases = [c for c in CASES if c.server == "hop"
                 and c.name.removeprefix("hop-") in wanted]
    children = Children(_BENCH / "results" / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="llm-router-instr-") as tmp:
        work = Path(tmp)
        revs = args.rev or [_WORK]
        trees = {rev: _REPO if rev == _WORK else _export(rev, work / f"b{i}")
                 for i, rev in enumerate(revs)}
        try:
            for tree in trees.values():
                _check_import(tree, work)
            env = _env(trees[revs[-1]])
            redis_url = None
            if any(c.server == "redis" for c in cases):
                rport = free_port()
                children.start("redis", [redis_server or "redis-server", "--port", str(rport),
                                         "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                         "no", "--dir", tmp])
                redis_url = f"redis://127.0.0.1:{rport}/0"
            upstream = children.start_fake(env, work)
            if hop_cases:
                port = free_port()
                results["hop"] = _count(children, "hop", [
                    sys.executable, str(_BENCH / "forwarder.py"), "--port", str(port),
                    "--upstream", upstream], env, work, port, hop_cases, args)
            for i, (rev, tree) in enumerate(trees.items()):
                results[rev] = {}
                # One router per state backend: the Redis cases have one of their own.
                for server in sorted({c.server for c in cases}):
                    cfg = work / f"router-{server}-{i}.yaml"
                    _config(cfg, upstream, redis_url if server == "redis" else None,
                            f"instr{i}", args.group_setting)
                    port = free_port()
                    results[rev].update(_count(children, f"router-{server}-{i}", [
                        sys.executable, "-m", "llm_router", "serve", "--config", str(cfg),
                        "--host", "127.0.0.1", "--port", str(port), "--log-level",
                        args.log_level],
                        _env(tree), work, port, [c for c in cases if c.server == server],
                        args))
        finally:
            children.stop_all()
    hop = results.pop("hop", {})
    print(f"\nthousands of instructions per request ({args.requests} requests per case)")
    print(f"| case | hop | {' | '.join(results)} |\n|---|---|{'---|' * len(results)}")
    for c in cases:
        h = hop.get(f"hop-{c.name}")
        cells = [f"{r[c.name] / 1e3:.0f}" for r in results.values()]
        print(f"| {c.name} | {f'{h / 1e3:.0f}' if h else '-'} | {' | '.join(cells)} |")
    print(f"\n| ratio | goal | {' | '.join(results)} |\n|---|---|{'---|' * len(results)}")
    for num, den, goal in RATIOS:
        cells = []
        for r in results.values():
            both = {**hop, **r}
            cells.append(f"{both[num] / both[den]:.2f}" if num in both and den in both else "-")
        if any(c != "-" for c in cells):
            print(f"| {num} / {den} | ≤ {goal} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
