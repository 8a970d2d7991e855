"""Child processes for the bench: start, watch through /proc, and always stop.

Every child gets its own process group (so a Ctrl-C in the terminal reaches only the
harness, which then stops the children in order) and, on Linux, a parent-death signal
(so even a harness killed with SIGKILL takes its children with it). CPU comes from
``/proc/<pid>/stat`` (utime + stime), memory from ``/proc/<pid>/status`` (VmRSS):
no psutil needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Children", "ClientRun", "cpu_ns", "cpu_seconds", "free_port", "listen_overflows",
           "machine_busy", "rss_mb"]

_TICK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM it when the harness dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0.0
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    rest = raw[raw.rindex(b")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of ``pid`` (``/proc/<pid>/task/*/schedstat``):
    finer than :func:`cpu_seconds`' clock ticks, for per-request figures."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        # A thread may end between the listing and the read.
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of ``pid`` in MiB (``VmHWM`` for its lifetime peak)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field_name.encode() + b":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _TICK, total / _TICK


def listen_overflows() -> int:
    """SYNs dropped because a listen backlog was full (TcpExt ListenOverflows, all sockets).

    A dropped SYN is retried after 1 s, then 3 s, 7 s: it shows up as a TTFT of seconds.
    """
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            fields = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", 0))
    return 0


class Children:
    """The harness's child processes; :meth:`stop_all` is safe to call any number of times."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr in ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                preexec_fn=_die_with_parent)  # safe: the harness runs no threads
        self._procs.append((name, proc))
        return proc

    def start_fake(self, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                   *extra: str) -> str:
        """Start ``llm-router fake-upstream`` (with ``extra`` flags) on a free loopback
        port and wait until it serves; returns its root URL (:meth:`stop_all` stops it)."""
        port = free_port()
        proc = self.start("fake", [sys.executable, "-m", "llm_router", "fake-upstream",
                                   "--host", "127.0.0.1", "--port", str(port), *extra],
                          env=env, cwd=cwd)
        root = f"http://127.0.0.1:{port}"
        self.wait_ready("fake", proc, root + "/v1/models")
        return root

    def adopt(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Track a child started elsewhere, so :meth:`stop_all` stops it too."""
        self._procs.append((name, proc))

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace_s)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        """Stop every child still running, newest first (clients before servers)."""
        for _name, proc in reversed(list(self._procs)):
            self.stop(proc, grace_s=3.0)

    def wait_ready(self, name: str, proc: subprocess.Popen[bytes], url: str,
                   timeout_s: float = 20.0) -> None:
        """Poll ``url`` until it answers any HTTP status; fail if the child exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before it was "
                                   f"ready:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=1.0):
                    return
            except urllib.error.HTTPError:
                return  # it answered: 401/404 still means it is serving
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} not ready at {url} after {timeout_s:.0f} s:\n"
                           f"{self.log_tail(name)}")


@dataclass
class ClientRun:
    """One load-generator run and what the watched servers did meanwhile."""

    stdout: str
    returncode: int
    wall_s: float
    cpu_s: dict[int, float] = field(default_factory=dict)  # watched pid -> CPU seconds used
    peak_rss_mb: dict[int, float] = field(default_factory=dict)  # sampled VmRSS peak
    client_cpu_s: float = 0.0
    machine_busy_pct: float = 0.0  # all cores, everyone's processes: the noise indicator
    others_pct: float = 0.0  # of that, what neither our servers nor our client used
    listen_overflows: int = 0  # SYNs dropped on full backlogs meanwhile (machine-wide)

    @classmethod
    def run(cls, children: Children, name: str, argv: Sequence[str], watch: Sequence[int],
            timeout_s: float, env: Mapping[str, str] | None = None) -> ClientRun:
        """Run a client to completion (killed past ``timeout_s``), sampling ``watch``."""
        out_path = children.log_dir / f"{name}.out"
        cpu0 = {pid: cpu_seconds(pid) for pid in watch}
        peak = {pid: rss_mb(pid) for pid in watch}
        busy0, total0 = machine_busy()
        dropped0 = listen_overflows()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                    start_new_session=True, preexec_fn=_die_with_parent)
            children.adopt(name, proc)
            deadline = time.monotonic() + timeout_s
            try:
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} still running after {timeout_s:.0f} s")
                    for pid in watch:
                        peak[pid] = max(peak[pid], rss_mb(pid))
                    time.sleep(0.05)
            finally:
                children.stop(proc)
        wall = time.perf_counter() - t0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1, total1 = machine_busy()
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in watch}
        for pid in watch:
            peak[pid] = max(peak[pid], rss_mb(pid))
        client = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
        busy, total = busy1 - busy0, max(1e-9, total1 - total0)
        others = max(0.0, busy - sum(cpu.values()) - client)
        return cls(out_path.read_text(errors="replace"), proc.returncode or 0, wall, cpu, peak,
                   client, round(100 * busy / total, 1), round(100 * others / total, 1),
                   listen_overflows() - dropped0)
