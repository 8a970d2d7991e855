#!/usr/bin/env python3
"""py-spy over one router under bench/ab.py's `limits` load (issue 27).

    python bench/profile_redis.py redis 20 /tmp/redis.txt    # state in Redis, 20 s
    python bench/profile_redis.py memory 20 /tmp/memory.txt  # state in memory
    python bench/profile_redis.py --top /tmp/redis.txt 15    # the top self-time entries

Starts a redis-server (for ``redis``), the fake upstream and ``llm-router serve`` from
this checkout, warms up, then records the router at 250 Hz (``--format raw``: collapsed
stacks) while the load runs. ``--top`` prints the self-time table kept in
bench/profiles-issue27-redis.md.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ab
from procs import Children, free_port

_BENCH = Path(__file__).resolve().parent


def top(path: str, n: int) -> None:
    """The ``n`` functions with the most samples on top of the stack (self time)."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        frames = [f for f in stack.split(";") if "(" in f]  # drop process/thread frames
        if frames:
            own[frames[-1]] += int(count)
            total += int(count)
    print(f"{total} samples\n\n| self % | function (file:line) |\n|---|---|")
    for name, count in own.most_common(n):
        print(f"| {100 * count / total:.1f} | {name} |")


if sys.argv[1] == "--top":
    top(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 15)
    raise SystemExit(0)
state, seconds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tree = _BENCH.parent
env = {"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
children = Children(_BENCH / "results" / f"profile-{time.strftime('%Y%m%d-%H%M%S')}-logs")
with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    try:
        url = None
        if state == "redis":
            rport = free_port()
            server = shutil.which("redis-server")
            if server is None:
                raise SystemExit("redis-server not found (apt-get install redis-server)")
            children.start("redis", [server, "--port", str(rport), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", tmp])
            url = f"redis://127.0.0.1:{rport}/0"
        fp = free_port()
        fake = children.start("fake", [sys.executable, "-m", "llm_router", "fake-upstream",
                                       "--host", "127.0.0.1", "--port", str(fp)],
                              env=env, cwd=work)
        children.wait_ready("fake", fake, f"http://127.0.0.1:{fp}/v1/models")
        cfg = work / "r.yaml"
        ab._config(cfg, f"http://127.0.0.1:{fp}", "limits", "openai", url)
        port = free_port()
        proc = children.start("router", [sys.executable, "-m", "llm_router", "serve",
                                         "--config", str(cfg), "--host", "127.0.0.1",
                                         "--port", str(port), "--log-level", "WARNING"],
                              env=env, cwd=work)
        children.wait_ready("router", proc, f"http://127.0.0.1:{port}/health")
        u = f"http://127.0.0.1:{port}/v1/chat/completions"
        asyncio.run(ab._load(u, ab._USER_KEY, ab._BODY, 2000, 16, False))
        spy = subprocess.Popen(["py-spy", "record", "-r", "250", "--format", "raw", "-o", out,
                                "--pid", str(proc.pid), "-d", str(seconds), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n = 0
        t0 = time.time()
        while spy.poll() is None:
            asyncio.run(ab._load(u, ab._USER_KEY, ab._BODY, 1000, 16, False))
            n += 1000
        print("requests", n, "in", time.time() - t0)
    finally:
        children.stop_all()
