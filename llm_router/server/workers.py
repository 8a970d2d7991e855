"""``llm-router serve --workers N``: N router processes on one port, supervised.

The parent runs no router itself. It starts N copies of the same ``serve`` command as
child processes; each binds the same host:port with ``SO_REUSEPORT`` (the kernel spreads
new connections over them), loads the config, watches it for edits and drains on
SIGTERM on its own. They share limits, budgets and counters through ``state.redis_url``
(refused at start without it: each worker would enforce limits alone).

The parent:

* restarts a worker that exits while it is not stopping, and logs it; a worker that
  keeps dying young is restarted after a growing pause (up to :data:`_MAX_PAUSE_S`), so
  a broken host does not spin;
* on SIGTERM/SIGINT forwards SIGTERM to every worker, waits for all of them to drain,
  and exits 0 if they all did;
* forwards SIGHUP (reload now) to every worker;
* gives the workers one metrics directory (``PROMETHEUS_MULTIPROC_DIR``: the operator's,
  emptied of old values at start, else a temporary one removed at exit), so any worker's
  ``/metrics`` is the fleet's (:mod:`llm_router.observe.metrics`), and clears a dead
  worker's gauges from it. Its counters stay: a total never goes backwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from prometheus_client.multiprocess import mark_process_dead

from ..observe.metrics import MULTIPROC_DIR_ENV

__all__ = ["WORKER_ENV", "supervise", "worker_path"]

log = logging.getLogger("llm_router.workers")

WORKER_ENV: Final = "LLM_ROUTER_WORKER"  # set in each worker: its number; binds SO_REUSEPORT
_YOUNG_S: Final = 5.0  # a worker that dies sooner than this after starting "died young"
_MAX_PAUSE_S: Final = 10.0
_POLL_S: Final = 0.1


class _Worker:
    __slots__ = ("index", "pause", "proc", "started")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.pause = 0.0  # before the next restart, grows while it keeps dying young


def supervise(serve_args: Sequence[str], workers: int) -> int:
    """Run ``llm-router serve`` with ``serve_args`` in ``workers`` processes until a stop
    signal; returns the exit code for the parent (0 when every worker drained cleanly)."""
    cmd = [sys.executable, "-m", "llm_router", "serve", *serve_args]
    metrics_dir, owned = _metrics_dir()
    try:
        return _run_pool(cmd, workers, metrics_dir)
    finally:
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_dir() -> tuple[str, bool]:
    """(the workers' metrics directory, whether it is ours to remove at exit)."""
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if not given:
        return tempfile.mkdtemp(prefix="llm-router-metrics-"), True
    # prometheus-client needs it empty at start: files of an earlier run would be added
    # to this run's counters.
    Path(given).mkdir(parents=True, exist_ok=True)
    for old in Path(given).glob("*.db"):
        old.unlink()
    return given, False


def _run_pool(cmd: list[str], workers: int, metrics_dir: str) -> int:
    pool = [_Worker(i) for i in range(workers)]
    stopping = False

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("%s received: draining %d worker(s)", signal.Signals(signum).name,
                     workers)
        stopping = True
        _signal_all(pool, signal.SIGTERM)

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        _signal_all(pool, signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    for w in pool:
        _start(w, cmd, metrics_dir)
    restart_at: dict[int, float] = {}
    codes: dict[int, int] = {}
    while True:
        alive = 0
        for w in pool:
            if w.proc is None:
                if not stopping and time.monotonic() >= restart_at.get(w.index, 0.0):
                    _start(w, cmd, metrics_dir)
                    alive += 1
                continue
            code = w.proc.poll()
            if code is None:
                alive += 1
                continue
            codes[w.index] = code
            # Its gauges go; its counters stay.
            mark_process_dead(w.proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
            w.proc = None
            if stopping:
                continue
            lived = time.monotonic() - w.started
            w.pause = min(_MAX_PAUSE_S, max(0.5, w.pause * 2)) if lived < _YOUNG_S else 0.0
            restart_at[w.index] = time.monotonic() + w.pause
            log.error("worker %d exited with %s after %.1f s; restarting it%s", w.index,
                      _describe(code), lived,
                      f" in {w.pause:.1f} s" if w.pause else "")
        if stopping and alive == 0:
            break
        time.sleep(_POLL_S)
    failed = {i: c for i, c in codes.items() if c != 0}
    if failed:
        log.error("worker(s) %s did not drain cleanly", ", ".join(map(str, sorted(failed))))
        return 1
    log.info("all %d workers stopped", workers)
    return 0


def worker_path(path: str) -> str:
    """``path`` for this process: a worker of ``--workers N`` writes its own file
    (``usage.json`` -> ``usage.worker1.json``), so workers never write one file at once."""
    index = os.environ.get(WORKER_ENV)
    if index is None:
        return path
    stem, dot, ext = path.rpartition(".")
    if not dot or "/" in ext:
        return f"{path}.worker{index}"
    return f"{stem}.worker{index}.{ext}"


def _start(w: _Worker, cmd: list[str], metrics_dir: str) -> None:
    env = {**os.environ, WORKER_ENV: str(w.index), MULTIPROC_DIR_ENV: metrics_dir}
    w.proc = subprocess.Popen(cmd, env=env)  # stdout/stderr shared with the parent
    w.started = time.monotonic()
    log.info("worker %d started (pid %d)", w.index, w.proc.pid)


def _signal_all(pool: list[_Worker], sig: signal.Signals) -> None:
    for w in pool:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.send_signal(sig)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
