#!/usr/bin/env python3
"""cProfile of the router (or the bare hop) under one of bench/ratios.py's cases.

The server runs under ``cProfile.Profile(time.thread_time)`` with ``--log-level
WARNING`` on ratios.py's config. After a warm-up the profile restarts (SIGUSR1), the
counted requests run, and the profile is written (SIGUSR2). The profiler's own cost
per call inflates every row several times, so read the call counts (exact) and the
shares, not the microseconds:

    python bench/hotspots.py chat --out /tmp/chat.prof          # the router, this tree
    python bench/hotspots.py hop-chat --out /tmp/hop.prof        # the bare hop
    python bench/hotspots.py --table /tmp/chat.prof              # top self time
    python bench/hotspots.py --table /tmp/chat.prof --sort cum --only llm_router
    python bench/hotspots.py --versus /tmp/chat.prof /tmp/hop.prof
        # code outside llm_router (aiohttp, asyncio, builtins): router minus hop

``--versus`` answers "does the router make aiohttp work harder than the hop does?"
(bench/profiles-issue27.md, third round). Figures are per request: each count is
divided by the counted requests (``--requests``, default 3,000), which the written
profile records beside its stats.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path

from ab import _env
from procs import Children, free_port
from ratios import CASES, _config, load_case

_BENCH = Path(__file__).resolve().parent
_OURS = ("llm_router", "forwarder.py")  # the code each side runs beyond aiohttp's


def _child(out: str, argv: list[str]) -> None:
    """Run ``argv`` (a module, or a script ending in .py) under the profiler."""
    prof = [cProfile.Profile(time.thread_time)]

    def restart(*_: object) -> None:
        prof[0].disable()
        prof[0] = cProfile.Profile(time.thread_time)
        prof[0].enable()

    def dump(*_: object) -> None:
        prof[0].disable()
        prof[0].dump_stats(out)

    signal.signal(signal.SIGUSR1, restart)
    signal.signal(signal.SIGUSR2, dump)
    sys.argv = argv
    prof[0].enable()
    if argv[0].endswith(".py"):
        runpy.run_path(argv[0], run_name="__main__")
    else:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


def _record(case_name: str, out: Path, requests: int, warmup: int) -> None:
    case = next(c for c in CASES if c.name == case_name)
    tree = _BENCH.parent
    env = _env(tree)
    with tempfile.TemporaryDirectory(prefix="llm-router-profile-") as tmp:
        work = Path(tmp)
        children = Children(work / "logs")
        try:
            upstream = children.start_fake(env, work)
            port = free_port()
            if case.server == "hop":
                target = [str(_BENCH / "forwarder.py"), "--port", str(port),
                          "--upstream", upstream]
                ready = f"http://127.0.0.1:{port}/v1/models"
            elif case.server == "memory":
                cfg = work / "router.yaml"
                _config(cfg, upstream, None, "profile")
                target = ["llm_router", "serve", "--config", str(cfg), "--host",
                          "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
                ready = f"http://127.0.0.1:{port}/health"
            else:
                raise SystemExit(f"{case_name}: only the hop's and the in-memory cases")
            proc = children.start("target", [sys.executable, __file__, "--child", str(out),
                                             *target], env=env, cwd=work)
            children.wait_ready("target", proc, ready)
            url = f"http://127.0.0.1:{port}/v1/{case.route}"
            load_case(url, case, warmup, 16)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.3)
            failures, _ = load_case(url, case, requests, 16)
            proc.send_signal(signal.SIGUSR2)
            for _ in range(50):  # the child writes the file from its signal handler
                time.sleep(0.1)
                if out.exists() and out.stat().st_size:
                    break
            if failures:
                raise SystemExit(f"{failures} of {requests} requests failed")
        finally:
            children.stop_all()
    out.with_suffix(".json").write_text(json.dumps({"case": case_name,
                                                    "requests": requests}))
    print(f"wrote {out} ({requests} requests of {case_name})")


def _requests(path: Path) -> int:
    meta = path.with_suffix(".json")
    return int(json.loads(meta.read_text())["requests"]) if meta.exists() else 3000


def _name(file: str, line: int, fn: str) -> str:
    """``file:line(fn)`` with the file relative to site-packages, the stdlib or the
    tree; a builtin (file ``~``) is its name alone."""
    if file == "~":
        return fn
    for mark, keep in (("site-packages/", ""), ("/lib/python3.", ""),
                       ("/llm_router/", "llm_router/"), ("/bench/", "bench/")):
        if mark in file:
            file = keep + file.split(mark, 1)[1]
            break
    return f"{file}:{line}({fn})"


def _table(path: Path, top: int, sort: str, only: str) -> None:
    n = _requests(path)
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    calls = sum(v[1] for v in stats.values())
    ours = sum(v[1] for k, v in stats.items() if any(o in k[0] for o in _OURS))
    print(f"per request: {total / n * 1e6:.0f} µs of self time (profiled), {calls / n:.0f} "
          f"Python-level calls, {ours / n:.0f} of them ours\n")
    print("| self % | self µs | cum µs | calls | function |\n|---|---|---|---|---|")
    rows = [(v[2] if sort == "self" else v[3], k, v) for k, v in stats.items()
            if v[1] / n >= 0.5 and only in k[0] + k[2]]
    for _, k, v in sorted(rows, key=lambda r: r[0], reverse=True)[:top]:
        print(f"| {100 * v[2] / total:.1f} | {v[2] / n * 1e6:.1f} | {v[3] / n * 1e6:.1f} "
              f"| {v[1] / n:.1f} | `{_name(*k)}` |")


def _outside(path: Path) -> dict[str, tuple[float, float]]:
    """Self time and calls per request of every function outside our code, by name."""
    n = _requests(path)
    out: dict[str, tuple[float, float]] = {}
    for k, v in pstats.Stats(str(path)).stats.items():  # type: ignore[attr-defined]
        if any(o in k[0] for o in _OURS):
            continue
        name = _name(k[0], 0, k[2]).replace(":0(", "(")
        us, calls = out.get(name, (0.0, 0.0))
        out[name] = (us + v[2] / n * 1e6, calls + v[1] / n)
    return out


def _versus(router: Path, hop: Path, top: int) -> None:
    a, b = _outside(router), _outside(hop)
    diff = sorted(((a.get(k, (0, 0))[0] - b.get(k, (0, 0))[0], k) for k in a.keys() | b.keys()),
                  reverse=True)
    print(f"outside our code, self µs per request: router {sum(v[0] for v in a.values()):.0f}, "
          f"hop {sum(v[0] for v in b.values()):.0f}\n")
    print("| router - hop µs | router µs (calls) | hop µs (calls) | function |\n|---|---|---|---|")
    for d, k in diff[:top]:
        ra, rb = a.get(k, (0.0, 0.0)), b.get(k, (0.0, 0.0))
        print(f"| {d:+.1f} | {ra[0]:.1f} ({ra[1]:.1f}) | {rb[0]:.1f} ({rb[1]:.1f}) | `{k}` |")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", nargs="?", help="a case of bench/ratios.py (hop-*, chat, ...)")
    ap.add_argument("--out", type=Path, help="where to write the profile")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--table", type=Path, help="print a written profile's top entries")
    ap.add_argument("--versus", type=Path, nargs=2, metavar=("ROUTER", "HOP"))
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--sort", choices=("self", "cum"), default="self")
    ap.add_argument("--only", default="", help="rows whose file or name contains this")
    args = ap.parse_args()
    if args.table:
        _table(args.table, args.top, args.sort, args.only)
    elif args.versus:
        _versus(*args.versus, args.top)
    elif args.case and args.out:
        _record(args.case, args.out.resolve(), args.requests, args.warmup)
    else:
        ap.error("give a case and --out, or --table, or --versus")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
