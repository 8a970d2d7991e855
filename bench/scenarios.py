"""The four scenarios of issue 5, plus the profile. Each returns a JSON-able dict.

Targets run interleaved, A B C then C B A (so slow drift on a shared machine falls on
every target alike), and every figure reported is the median over rounds; the
"added" and ratio figures compare those medians from the same run.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from procs import ClientRun, cpu_seconds, rss_mb
from stack import ROUTER_KEY, Stack, Target
from stats import median

__all__ = ["Options", "compression", "latency", "profile", "streams", "throughput"]

_BENCH = Path(__file__).resolve().parent
_LITELLM_MAX_STREAMS = 100
Run = dict[str, Any]


@dataclass
class Options:
    quick: bool
    rounds: int
    targets: list[str]  # direct, hop, router (+ litellm)
    s1_seconds: float
    s2_seconds: float
    stream_counts: tuple[int, ...]
    stream_rounds: int  # streams per worker, back to back
    compression_streams: int
    answered: list[tuple[str, str, bool, str, bool]] = field(default_factory=list)

    def record(self, scenario: str, target: str, clean: bool, detail: str,
               answered_some: bool = True) -> None:
        """Whether ``target`` answered in ``scenario``: with --quick every request must
        succeed; a full run (and LiteLLM always) only needs some answers, since past a
        machine's capacity timeouts and refused connections are results, reported as such.
        """
        ok = clean if self.quick and target != "litellm" else answered_some
        self.answered.append((scenario, target, ok, detail, clean))


def _interleave(targets: list[Target], rounds: int, fn: Callable[[Target, int], Run]
                ) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {t.name: [] for t in targets}
    for r in range(rounds):
        for t in (targets if r % 2 == 0 else list(reversed(targets))):
            run = fn(t, r)
            run["settle_s"] = _settle(t)
            runs[t.name].append(run)
    return runs


def _settle(t: Target, idle_pct: float = 5.0, limit_s: float = 120.0) -> float:
    """Wait until ``t`` and its fake are idle again; returns the seconds waited.

    A target past its capacity keeps working on its backlog after the client stops (in
    the first full run LiteLLM, 10 s behind at 200 req/s, was still busy during the
    router's next round and showed up as the router's stalls). The next target's figures
    must not pay for that.
    """
    pids = [p for p in (t.pid, t.upstream_pid) if p is not None]
    start = time.monotonic()
    window = 0.3
    while time.monotonic() - start < limit_s:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(window)
        if (sum(cpu_seconds(p) for p in pids) - before) / window * 100 < idle_pct:
            break
    waited = time.monotonic() - start
    if waited > 2 * window:
        print(f"  waited {waited:.1f} s for {t.name} to go idle", flush=True)
    return round(waited, 2)


def _med(runs: list[Run], key: str, ndigits: int = 3) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    m = median(values)
    return round(m, ndigits) if m is not None else None


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _check(label: str, value: float | None, op: str, threshold: float, unit: str) -> Run:
    met = None if value is None else (value < threshold if op == "<" else value >= threshold)
    return {"label": label, "value": value, "op": op, "threshold": threshold, "unit": unit,
            "met": met}


def _last_json(text: str, prefix: str = "") -> Run | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if prefix and line.startswith(prefix):
            line = line[len(prefix):].strip()
        elif prefix:
            continue
        if line.startswith("{"):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def _watch(t: Target) -> list[int]:
    return [p for p in (t.pid, t.upstream_pid) if p is not None]


def _noise(cr: ClientRun) -> Run:
    return {"machine_busy_pct": cr.machine_busy_pct, "others_pct": cr.others_pct,
            "client_cpu_s": round(cr.client_cpu_s, 3), "listen_overflows": cr.listen_overflows}


# ---------------------------------------------------------------- scenario 1


def _wrk(stack: Stack, t: Target, conns: int, seconds: float, name: str) -> Run:
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(_BENCH / "post.lua"), t.chat_url]
    cr = ClientRun.run(stack.children, name, argv, _watch(t), timeout_s=seconds + 60,
                       env={"BENCH_KEY": ROUTER_KEY, "BENCH_MODEL": t.model})
    doc = _last_json(cr.stdout, "BENCH_JSON")
    if doc is None:
        return {"requests": 0, "error": cr.stdout[-500:], **_noise(cr)}
    n = doc["requests"]
    errors = doc["errors"]
    lat = doc["latency_us"]
    own = cr.cpu_s.get(t.pid, 0.0) if t.pid is not None else None
    return {
        "requests": n, "rps": round(n / (doc["duration_us"] / 1e6), 1),
        "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
        "non_2xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "cpu_us_per_req": round(own * 1e6 / n, 1) if own is not None and n else None,
        "upstream_cpu_us_per_req": round(cr.cpu_s[t.upstream_pid] * 1e6 / n, 1) if n else None,
        **_noise(cr),
    }


def throughput(stack: Stack, opt: Options) -> Run:
    """Scenario 1: non-streaming chat at saturation, 20 and 64 connections (wrk)."""
    stack.restart_router()
    targets = stack.targets("fast", opt.targets)
    for t in targets:  # warm every pool and code path; figures dropped
        _wrk(stack, t, 20, 1, f"s1-warmup-{t.name}")
    out: Run = {"connections": {}, "checks": []}
    for conns in (20, 64):
        runs = _interleave(targets, opt.rounds, lambda t, r, c=conns: _wrk(
            stack, t, c, opt.s1_seconds, f"s1-c{c}-{t.name}-r{r}"))
        summary: Run = {}
        for name, rs in runs.items():
            ok = all(r["requests"] > 0 and r.get("non_2xx") == 0 for r in rs)
            opt.record(f"1 (c{conns})", name, ok, f"{sum(r['requests'] for r in rs)} requests, "
                       f"{sum(r.get('non_2xx', 0) for r in rs)} non-2xx",
                       any(r["requests"] > 0 for r in rs))
            summary[name] = {k: _med(rs, k) for k in (
                "rps", "p50_ms", "p99_ms", "cpu_us_per_req", "upstream_cpu_us_per_req",
                "others_pct")}
            summary[name]["runs"] = rs
        rps = {n: s["rps"] for n, s in summary.items()}
        summary["router_vs_hop"] = _ratio(rps.get("router"), rps.get("hop"))
        summary["router_vs_direct"] = _ratio(rps.get("router"), rps.get("direct"))
        if "litellm" in rps:
            summary["router_vs_litellm"] = _ratio(rps.get("router"), rps.get("litellm"))
        out["connections"][str(conns)] = summary
        out["checks"].append(_check(f"router req/s / bare hop req/s, {conns} connections",
                                    summary["router_vs_hop"], ">=", 0.7, "x"))
    return out


# ---------------------------------------------------------------- scenario 2


def latency(stack: Stack, opt: Options, rate: float = 200.0) -> Run:
    """Scenario 2: open-loop 200 req/s against a 50 ms upstream; router minus direct."""
    stack.restart_router()
    targets = stack.targets("slow", opt.targets)
    warm = 0.3 if opt.quick else 2.0

    def one(t: Target, r: int) -> Run:
        argv = [sys.executable, str(_BENCH / "paced.py"), "--url", t.chat_url, "--rate",
                str(rate), "--duration", str(opt.s2_seconds), "--warmup-s", str(warm),
                "--model", t.model, "--key", ROUTER_KEY]
        cr = ClientRun.run(stack.children, f"s2-{t.name}-r{r}", argv, _watch(t),
                           timeout_s=opt.s2_seconds + warm + 90)
        doc = _last_json(cr.stdout) or {"ok": 0, "error": cr.stdout[-500:]}
        lat = doc.get("latency_ms", {})
        own = cr.cpu_s.get(t.pid, 0.0) if t.pid is not None else None
        n = doc.get("ok", 0)
        total = (doc.get("ok", 0) * (opt.s2_seconds + warm) / opt.s2_seconds) if n else 0
        return {"ok": n, "errors": doc.get("errors"), "p50_ms": lat.get("p50"),
                "p99_ms": lat.get("p99"), "max_ms": lat.get("max"),
                "client_late_p99_ms": doc.get("lateness_ms", {}).get("p99"),
                "cpu_us_per_req": round(own * 1e6 / total, 1) if own is not None and total
                else None, **_noise(cr)}

    runs = _interleave(targets, opt.rounds, one)
    summary: Run = {}
    for name, rs in runs.items():
        opt.record("2", name, all(r["ok"] > 0 and not r["errors"] for r in rs),
                   f"{sum(r['ok'] for r in rs)} ok, errors {[r['errors'] for r in rs]}",
                   any(r["ok"] > 0 for r in rs))
        summary[name] = {k: _med(rs, k) for k in ("p50_ms", "p99_ms", "client_late_p99_ms",
                                                  "cpu_us_per_req", "others_pct")}
        summary[name]["runs"] = rs
    d = summary.get("direct", {})
    for name in ("hop", "router", "litellm"):
        if name in summary:
            summary[name]["added_p50_ms"] = _diff(summary[name]["p50_ms"], d.get("p50_ms"))
            summary[name]["added_p99_ms"] = _diff(summary[name]["p99_ms"], d.get("p99_ms"))
    r = summary.get("router", {})
    return {"rate": rate, "upstream_latency_ms": 50, "targets": summary, "checks": [
        _check("added latency at 200 req/s, p50 (router - direct)", r.get("added_p50_ms"),
               "<", 0.5, "ms"),
        _check("added latency at 200 req/s, p99 (router - direct)", r.get("added_p99_ms"),
               "<", 2.0, "ms"),
    ]}


# ---------------------------------------------------------------- scenarios 3 and 4


def _stream_run(stack: Stack, t: Target, n: int, rounds: int, encoding: str, name: str) -> Run:
    # Open connections at <= 250/s: a faster SYN burst overflows the 128-deep listen
    # backlogs (aiohttp's default) of busy servers, and SYN retries take 1 s, 3 s, 7 s.
    ramp = max(0.2, n / 250)
    argv = [sys.executable, str(_BENCH / "streams.py"), "--url", t.chat_url, "--streams",
            str(n), "--rounds", str(rounds), "--ramp-s", str(ramp), "--key", ROUTER_KEY,
            "--model", t.model, "--encoding", encoding]
    cr = ClientRun.run(stack.children, name, argv, _watch(t), timeout_s=300)
    doc = _last_json(cr.stdout) or {"streams_ok": 0, "streams_failed": n * rounds,
                                     "errors": {"no output": cr.stdout[-500:]}}
    own = cr.cpu_s.get(t.pid, 0.0) if t.pid is not None else None
    ok = doc["streams_ok"]
    ttft, gap, max_gap = doc.get("ttft_ms", {}), doc.get("gap_ms", {}), doc.get("max_gap_ms", {})
    cold = doc.get("cold_ttft_ms", {})
    return {
        "streams_ok": ok, "streams_failed": doc["streams_failed"], "errors": doc["errors"],
        "peak_concurrent": doc.get("peak_concurrent"), "window": doc.get("window"),
        "window_concurrency": doc.get("window_concurrency"),
        "measured_streams": doc.get("streams"), "cold_ttft_p99_ms": cold.get("p99"),
        "ttft_p50_ms": ttft.get("p50"), "ttft_p99_ms": ttft.get("p99"),
        "gap_p50_ms": gap.get("p50"), "gap_p99_ms": gap.get("p99"), "gap_max_ms": gap.get("max"),
        "stream_max_gap_p99_ms": max_gap.get("p99"),
        "cpu_s": round(own, 3) if own is not None else None,
        "cpu_ms_per_stream": round(own * 1000 / ok, 3) if own is not None and ok else None,
        "peak_rss_mb": round(cr.peak_rss_mb[t.pid], 1) if t.pid is not None else None,
        **_noise(cr),
    }


_STREAM_KEYS = ("ttft_p50_ms", "ttft_p99_ms", "cold_ttft_p99_ms", "gap_p50_ms", "gap_p99_ms",
                "gap_max_ms", "stream_max_gap_p99_ms", "cpu_ms_per_stream", "others_pct",
                "window_concurrency")


def streams(stack: Stack, opt: Options) -> Run:
    """Scenario 3: N concurrent streams of 50 chunks at 50 tokens/s; router vs direct."""
    out: Run = {"counts": {}, "checks": []}
    for n in opt.stream_counts:
        stack.restart_router()
        assert stack.router is not None
        idle_rss = round(rss_mb(stack.router.proc.pid), 1)
        # LiteLLM spends ~60 ms of CPU per stream here: 1,000 of them would only time out.
        targets = stack.targets("stream", [x for x in opt.targets
                                           if x != "litellm" or n <= _LITELLM_MAX_STREAMS])
        runs = _interleave(targets, opt.rounds, lambda t, r, n=n: _stream_run(
            stack, t, n, opt.stream_rounds, "identity", f"s3-n{n}-{t.name}-r{r}"))
        summary: Run = {}
        for name, rs in runs.items():
            opt.record(f"3 (n{n})", name,
                       all(r["streams_ok"] > 0 and not r["streams_failed"] for r in rs),
                       f"{sum(r['streams_ok'] for r in rs)} ok, "
                       f"{sum(r['streams_failed'] for r in rs)} failed",
                       any(r["streams_ok"] > 0 for r in rs))
            summary[name] = {k: _med(rs, k) for k in _STREAM_KEYS}
            summary[name]["failed"] = sum(r["streams_failed"] for r in rs)
            peaks = [r["peak_rss_mb"] for r in rs if r.get("peak_rss_mb") is not None]
            summary[name]["peak_rss_mb"] = max(peaks) if peaks else None
            summary[name]["runs"] = rs
        d = summary.get("direct", {})
        for name in ("hop", "router", "litellm"):
            if name in summary:
                s = summary[name]
                for k in ("ttft_p50_ms", "ttft_p99_ms", "gap_p99_ms", "stream_max_gap_p99_ms"):
                    s["added_" + k] = _diff(s[k], d.get(k))
        summary["router_idle_rss_mb"] = idle_rss
        out["counts"][str(n)] = summary
        r = summary.get("router", {})
        out["checks"] += [
            _check(f"router peak RSS, {n} streams", r.get("peak_rss_mb"), "<", 150, "MiB"),
            _check(f"p99 inter-chunk gap widened (router - direct), {n} streams",
                   r.get("added_gap_p99_ms"), "<", 5.0, "ms"),
        ]
    return out


def compression(stack: Stack, opt: Options) -> Run:
    """Scenario 4: the scenario-3 stream through the router with br, gzip and identity."""
    stack.restart_router()
    router = stack.targets("stream", ["router"])[0]
    n = opt.compression_streams
    codings = ["identity", "gzip", "br"]
    runs: dict[str, list[Run]] = {c: [] for c in codings}
    for r in range(opt.rounds):
        for c in (codings if r % 2 == 0 else list(reversed(codings))):
            runs[c].append(_stream_run(stack, router, n, opt.stream_rounds, c,
                                       f"s4-{c}-r{r}"))
    summary: Run = {}
    for c, rs in runs.items():
        opt.record("4", f"router ({c})",
                   all(x["streams_ok"] > 0 and not x["streams_failed"] for x in rs),
                   f"{sum(x['streams_ok'] for x in rs)} ok, "
                   f"{sum(x['streams_failed'] for x in rs)} failed")
        summary[c] = {k: _med(rs, k) for k in _STREAM_KEYS}
        summary[c]["runs"] = rs
    base = summary["identity"]["cpu_ms_per_stream"]
    for c in ("gzip", "br"):
        summary[c]["cpu_vs_identity"] = _ratio(summary[c]["cpu_ms_per_stream"], base)
    return {"streams": n, "codings": summary, "checks": [
        _check(f"router CPU with {c} / identity, {n} streams", summary[c]["cpu_vs_identity"],
               "<", 1.2, "x") for c in ("br", "gzip")]}


# ---------------------------------------------------------------- profile


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    # py-spy raw frames read "function (path/to/file.py:123)": drop the line number.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/llm_router/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            path = ("llm_router/" + path) if marker == "/llm_router/" else path
            break
    return f"{name} ({path})" if path else name


def profile(stack: Stack, opt: Options, seconds: float = 15.0, streams: bool = False) -> Run:
    """Sample the router with py-spy under load: wrk at 64 connections (scenario 1), or
    with ``streams`` 200 concurrent streams (scenario 3's shape)."""
    spy = _py_spy()
    if spy is None:
        return {"error": "py-spy not found: pip install py-spy (into this interpreter's venv)"}
    stack.restart_router()
    router = stack.targets("stream" if streams else "fast", ["router"])[0]
    assert router.pid is not None
    what = "streams" if streams else "chat"
    if not streams:
        _wrk(stack, router, 20, 1, "profile-warmup")
    raw = stack.children.log_dir / f"profile-router-{what}.txt"
    spy_proc = stack.children.start(f"py-spy-{what}", [
        spy, "record", "--pid", str(router.pid), "--rate", "250", "--duration",
        str(round(seconds)), "--format", "raw", "--output", str(raw)])
    time.sleep(1.0)  # py-spy attaches
    if streams:
        load = _stream_run(stack, router, 200, max(1, round(seconds)), "identity",
                           "profile-streams")
        rate = f"{load.get('streams_ok')} streams"
    else:
        load = _wrk(stack, router, 64, seconds, "profile-wrk")
        rate = f"{load.get('rps')} req/s"
    try:
        spy_proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stack.children.stop(spy_proc)
    if not raw.exists():
        return {"error": "py-spy wrote nothing:\n" + stack.children.log_tail(f"py-spy-{what}")}
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack_text.split(";") if " (" in f]
        if not frames or frames[0].startswith("Thread._bootstrap"):
            # Helper threads (watchfiles, the executor) sit blocked in native code, which
            # py-spy's idle detection misses here: /proc shows they use no CPU.
            continue
        total += n
        self_n[frames[-1]] += n
        for name in set(frames):
            incl_n[name] += n

    def top(c: collections.Counter[str], k: int) -> list[tuple[float, str]]:
        return [(round(100 * v / max(1, total), 1), name) for name, v in c.most_common(k)]

    return {"load": what, "samples": total, "rate": rate, "raw": str(raw),
            "top_self": top(self_n, 30), "top_inclusive": top(incl_n, 60)}
