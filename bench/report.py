"""The Markdown tables printed (and saved) at the end of a bench run."""

from __future__ import annotations

from typing import Any

from stats import median

__all__ = ["markdown"]

Doc = dict[str, Any]
_VERDICT = {True: "met", False: "**missed**", None: "no figure"}


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |"
            for r in rows]
    return [*out, ""]


def _others(doc: Doc) -> list[float]:
    """Every run's share of the machine used by processes other than the bench's."""
    found: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("others_pct"), float) and "runs" not in node:
                found.append(node["others_pct"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc.get("scenarios", {}))
    return found


def markdown(doc: Doc) -> str:
    meta = doc["meta"]
    s = doc["scenarios"]
    lines = [
        f"## llm-router bench, {meta['date']} "
        f"({'quick smoke run' if doc['quick'] else 'full run'})",
        "",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['mem_gib']} GiB, "
        f"Linux {meta['kernel']}, Python {meta['python']}, aiohttp {meta['aiohttp']}, "
        f"{meta['wrk']}",
        f"- Code: {meta['git']}",
        f"- Command: `{doc['command']}`",
    ]
    others = _others(doc)
    if others:
        lines.append(f"- Noise: processes outside the bench used a median {median(others):.0f} % "
                     f"(max {max(others):.0f} %) of the machine's CPU during the runs; "
                     f"load average at start {meta['loadavg']}")
    lines.append("")
    checks = [c for sc in s.values() if isinstance(sc, dict) for c in sc.get("checks", [])]
    if checks:
        lines += ["### Targets", ""]
        lines += _table(["target", "measured", "goal", "verdict"], [
            [c["label"], f"{_f(c['value'])} {c['unit']}", f"{c['op']} {c['threshold']} "
             f"{c['unit']}", _VERDICT[c["met"]]] for c in checks])
    if "1" in s and "connections" in s["1"]:
        lines += ["### 1. Non-streaming chat at saturation (wrk, upstream answers at once)", ""]
        rows = []
        for conns, summ in s["1"]["connections"].items():
            for name, t in summ.items():
                if isinstance(t, dict):
                    rows.append([conns, name, t["rps"], t["p50_ms"], t["p99_ms"],
                                 t["cpu_us_per_req"], t["upstream_cpu_us_per_req"]])
            rows.append([conns, "*router ÷ hop*", summ.get("router_vs_hop"), "", "", "", ""])
            if summ.get("router_vs_litellm") is not None:
                rows.append([conns, "*router ÷ litellm*", summ["router_vs_litellm"], "", "",
                             "", ""])
        lines += _table(["conns", "target", "req/s", "p50 ms", "p99 ms",
                         "target CPU µs/req", "fake CPU µs/req"], rows)
    if "2" in s and "targets" in s["2"]:
        lines += ["### 2. Added latency: open loop at 200 req/s, upstream 50 ms (bench/paced.py)",
                  ""]
        lines += _table(["target", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
                         "target CPU µs/req", "client late p99 ms"], [
            [n, t["p50_ms"], t["p99_ms"], t.get("added_p50_ms"), t.get("added_p99_ms"),
             t["cpu_us_per_req"], t["client_late_p99_ms"]]
            for n, t in s["2"]["targets"].items()])
    if "3" in s and "counts" in s["3"]:
        lines += ["### 3. Streams: 50 chunks at 50 tokens/s (bench/streams.py)", ""]
        rows = []
        for n, summ in s["3"]["counts"].items():
            for name, t in summ.items():
                if isinstance(t, dict):
                    rows.append([n, name, t["window_concurrency"], t["ttft_p50_ms"],
                                 t["ttft_p99_ms"],
                                 t.get("added_ttft_p99_ms"), t["cold_ttft_p99_ms"],
                                 t["gap_p99_ms"],
                                 t.get("added_gap_p99_ms"), t["stream_max_gap_p99_ms"],
                                 t["cpu_ms_per_stream"], t["peak_rss_mb"], t["failed"]])
        lines += _table(["streams", "target", "open", "TTFT p50 ms", "TTFT p99 ms",
                         "added TTFT p99",
                         "cold TTFT p99 ms", "gap p99 ms", "added gap p99",
                         "per-stream max gap p99 ms", "CPU ms/stream", "peak RSS MiB",
                         "failed"], rows)
    if "4" in s and "codings" in s["4"]:
        lines += [f"### 4. Compression: {s['4']['streams']} streams through the router", ""]
        lines += _table(["coding", "router CPU ms/stream", "÷ identity", "gap p99 ms",
                         "TTFT p99 ms"], [
            [c, t["cpu_ms_per_stream"], t.get("cpu_vs_identity"), t["gap_p99_ms"],
             t["ttft_p99_ms"]] for c, t in s["4"]["codings"].items()])
    for key in ("profile", "profile_streams"):
        prof = doc.get(key)
        if not prof:
            continue
        lines += [f"### Profile: router under {prof.get('load', 'chat')} load (py-spy)", ""]
        if "error" in prof:
            lines += [prof["error"], ""]
            continue
        lines += [f"{prof['samples']} samples of the event-loop thread ({prof['rate']}); "
                  f"raw stacks: `{prof['raw']}`", ""]
        lines += _table(["self %", "function"], [[p, f"`{n}`"]
                                                  for p, n in prof["top_self"][:20]])
        lines += _table(["inclusive %", "function"], [
            [p, f"`{n}`"] for p, n in prof["top_inclusive"] if "llm_router/" in n][:30])
    answered = doc.get("answered", [])
    bad = [a for a in answered if not a[2]]
    if bad:
        lines += ["### Targets that did not answer", ""]
        lines += [f"- scenario {a[0]}, {a[1]}: {a[3]}" for a in bad] + [""]
    unclean = [a for a in answered if a[2] and not a[4]]
    if unclean:
        lines += ["### Targets that answered, with some requests failed", ""]
        lines += [f"- scenario {a[0]}, {a[1]}: {a[3]}" for a in unclean] + [""]
    return "\n".join(lines)
