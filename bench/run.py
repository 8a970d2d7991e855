"""Benchmark llm-router against the upstream itself and a bare Python hop (issue 5).

    python bench/run.py                      # the full run (about 15 minutes)
    python bench/run.py --quick              # every scenario for a few seconds: a smoke test
    python bench/run.py --scenarios 1 --profile
    python bench/run.py --with-litellm       # also LiteLLM's proxy (own venv, from PyPI)

Every server runs as its own process on 127.0.0.1; every child is stopped on exit,
Ctrl-C included. Results go to bench/results/<stamp>.json and .md (the Markdown is
printed too); each process's output to bench/results/<stamp>-logs/. See bench/README.md.
Exit status: 0, or 1 when a target did not answer (or a scenario failed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Children
from report import markdown
from scenarios import Options, compression, latency, profile, streams, throughput
from stack import Stack, ensure_litellm

__all__ = ["main"]

_BENCH = Path(__file__).resolve().parent
_SCENARIOS = {"1": throughput, "2": latency, "3": streams, "4": compression}
_KINDS = {"1": "fast", "2": "slow", "3": "stream", "4": "stream"}


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="every scenario briefly; asserts only that each target answered")
    p.add_argument("--scenarios", default="1,2,3,4",
                   help="comma-separated subset of 1,2,3,4 (or 'none' with --profile)")
    p.add_argument("--with-litellm", action="store_true",
                   help="install LiteLLM's proxy in bench/.venv-litellm and bench it too")
    p.add_argument("--profile", action="store_true",
                   help="also sample the router with py-spy under scenario-1 load")
    p.add_argument("--rounds", type=int, help="A B A B rounds per scenario (default 3; quick 1)")
    p.add_argument("--seconds", type=float,
                   help="seconds per wrk / paced run (default 10; quick 1)")
    return p.parse_args(argv)


def _run_text(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _meta() -> dict[str, Any]:
    cpu = "unknown CPU"
    mem = 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    repo = _BENCH.parent
    commit = _run_text(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _run_text(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    wrk = _run_text(["wrk", "-v"]).splitlines()
    try:
        import aiohttp

        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "aiohttp": aiohttp_version, "wrk": wrk[0].split(" [")[0] if wrk else "wrk missing",
        "git": commit + (" with uncommitted changes" if dirty else ""),
        "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
    }


def _options(args: argparse.Namespace) -> Options:
    targets = ["direct", "hop", "router"] + (["litellm"] if args.with_litellm else [])
    if args.quick:
        return Options(True, args.rounds or 1, targets, args.seconds or 1, args.seconds or 1,
                       (10, 50), 1, 10)
    return Options(False, args.rounds or 3, targets, args.seconds or 10, args.seconds or 10,
                   (100, 1000), 8, 200)


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    chosen = [] if args.scenarios == "none" else [x.strip() for x in args.scenarios.split(",")]
    if any(x not in _SCENARIOS for x in chosen) or not (chosen or args.profile):
        print(f"--scenarios: expected a subset of 1,2,3,4, got {args.scenarios!r}",
              file=sys.stderr)
        return 2
    if ("1" in chosen or args.profile) and shutil.which("wrk") is None:
        print("wrk is not installed; install it with:  apt-get install -y wrk", file=sys.stderr)
        return 2
    # 1,000 streams need ~2,000 sockets in the router and the hop; children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else 65536, hard))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = _BENCH / "results"
    children = Children(results / f"{stamp}-logs")
    atexit.register(children.stop_all)
    # SIGINT too: a shell starting us in the background hands us SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    opt = _options(args)
    doc: dict[str, Any] = {
        "command": "python bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick, "meta": _meta(), "scenarios": {},
    }
    failed: list[str] = []
    try:
        litellm = ensure_litellm(_BENCH / ".venv-litellm") if args.with_litellm else None
        kinds = {_KINDS[x] for x in chosen} | ({"fast", "stream"} if args.profile else set())
        stack = Stack(children, kinds, litellm)
        print(f"starting fake upstreams {sorted(kinds)}, bare hops"
              + (", LiteLLM" if litellm else "") + " ...", flush=True)
        stack.start()
        for x in chosen:
            t0 = time.monotonic()
            print(f"scenario {x} ...", flush=True)
            try:
                doc["scenarios"][x] = _SCENARIOS[x](stack, opt)
            except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as exc:
                failed.append(f"scenario {x}: {exc}")
                doc["scenarios"][x] = {"error": traceback.format_exc()}
            print(f"scenario {x} done in {time.monotonic() - t0:.0f} s", flush=True)
        if args.profile:
            print("profiling the router with py-spy ...", flush=True)
            doc["profile"] = profile(stack, opt)
            doc["profile_streams"] = profile(stack, opt, streams=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every child process", file=sys.stderr)
        children.stop_all()
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        children.stop_all()
        print(f"bench could not run: {exc}\n(process logs: {children.log_dir})", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
    doc["answered"] = opt.answered
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stamp}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    text = markdown(doc)
    (results / f"{stamp}.md").write_text(text + "\n")
    print()
    print(text)
    print(f"results: {results / stamp}.json and .md; logs: {children.log_dir}")
    failed += [f"scenario {sc}: {t} did not answer properly ({d})"
               for sc, t, ok, d, _clean in opt.answered if not ok]
    for line in failed:
        print("FAILED: " + line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
