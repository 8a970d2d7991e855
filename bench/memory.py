#!/usr/bin/env python3
"""What the bounded stores cost in RSS when full, against the documented figures (issue 33).

    python bench/memory.py                   # all three stores
    python bench/memory.py --only pins       # pins | responses | models

Each store is filled to its cap and the resident memory it added is divided by the
entries it holds:

* **pins**: the affinity map (``MemoryAffinityStore``), 65,536 pins, each digest a fresh
  16-byte ``bytes`` as the router makes one per request. Documented: docs/affinity.md.
* **responses**: the Responses store (``MemoryResponseStore``) at its defaults (10,000
  entries, 64 MiB), filled with entries of ~2.5 KB of JSON, then 8,000 more puts that
  evict; then a second store whose byte bound (16 MiB) binds first, filled with three
  times that much. Documented: an entry costs its JSON + its id + ~200 bytes, and the
  whole store stays within ``store_max_bytes`` (docs/responses.md).
* **models**: the per-model state (selection counters, learned lengths, usage rows)
  of a real router process, sent 5,000 requests each naming a new ``provider/<random>``
  model through a fake upstream. Documented: bounded by the config (docs/teams.md), so
  ~0 bytes per new name.

The first two run in this process with the router's own classes and the same
serialisation path as a request (``StoredResponse.to_json`` through ``put``), so the
entry counts and JSON bytes are exact; the third measures the router process
(``/proc/<pid>/status``). RSS is read after a ``gc.collect()``; the figures are per
process. Results: bench/results/memory-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import uuid
from hashlib import sha256
from pathlib import Path
from typing import Any

import aiohttp
from procs import Children, free_port, rss_mb

_BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(_BENCH.parent))  # the checkout's llm_router, when not installed

from llm_router.dialects.responses.store import (  # noqa: E402
    MemoryResponseStore,
    StoredResponse,
)
from llm_router.gateway.affinity import DEFAULT_MAX_PINS, MemoryAffinityStore  # noqa: E402

_KEY = "sk-bench-memory"
_MIB = 1024 * 1024
# The figures the docs give, per entry, in bytes.
_DOC_PIN = 250  # docs/affinity.md: 65,536 pins, about 16 MiB


def _rss_self() -> float:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / _MIB


def _pins() -> dict[str, Any]:
    async def fill() -> dict[str, Any]:
        store = MemoryAffinityStore()
        # Counter keys come from the config: a few shared tuples, as in the router.
        keys = [("openai", f"key-{k}", "gpt-4o-mini") for k in range(8)]
        before = _rss_self()
        for n in range(DEFAULT_MAX_PINS):
            await store.remember(sha256(b"conversation %d" % n).digest()[:16], keys[n % 8],
                                 3600.0)
        after = _rss_self()
        return {"entries": len(store), "rss_mib": after - before,
                "per_entry": (after - before) * _MIB / len(store), "documented": _DOC_PIN}
    return asyncio.run(fill())


def _entry(n: int, text_bytes: int) -> StoredResponse:
    rid = f"resp_{uuid.uuid4().hex}{n:016x}"
    words = ("route cache token weight prompt group answer stream " * (text_bytes // 48 + 1))
    said = words[:text_bytes // 2]
    return StoredResponse(
        {"id": rid, "object": "response", "created_at": 1_700_000_000 + n,
         "status": "completed", "model": "gpt-4o-mini",
         "output": [{"type": "message", "id": f"msg_{n}", "role": "assistant",
                     "content": [{"type": "output_text", "text": said}]}],
         "usage": {"input_tokens": 300, "output_tokens": 300, "total_tokens": 600}},
        "bob",
        [{"type": "message", "role": "user", "content": said[::-1]},
         {"type": "message", "role": "assistant", "content": said}])


def _responses(text_bytes: int) -> dict[str, Any]:
    async def fill(max_entries: int, max_bytes: int, puts: int) -> dict[str, Any]:
        store = MemoryResponseStore(max_entries, max_bytes, 3600.0)
        before = _rss_self()
        json_bytes = 0
        for n in range(puts):
            entry = _entry(n, text_bytes)
            if n >= puts - max_entries:
                json_bytes += len(entry.to_json())
            await store.put(entry)
        after = _rss_self()
        held = len(store)
        json_held = json_bytes * held / min(puts, max_entries)  # same-size entries
        return {"entries": held, "puts": puts, "max_bytes_mib": max_bytes / _MIB,
                "counted_mib": store.bytes / _MIB, "json_mib": json_held / _MIB,
                "rss_mib": after - before, "per_entry": (after - before) * _MIB / held,
                "json_per_entry": json_held / held,
                # What the store counts per entry: JSON, bytes header, id, bookkeeping.
                "documented": store.bytes / held}

    async def both() -> dict[str, Any]:
        full = await fill(10_000, 64 * _MIB, 10_000)
        churn = await fill(10_000, 64 * _MIB, 18_000)
        per = len(_entry(0, text_bytes).to_json())
        byte_bound = await fill(1_000_000, 16 * _MIB, 3 * 16 * _MIB // per)
        return {"at_entry_cap": full, "after_evictions": churn, "at_byte_cap": byte_bound}
    return asyncio.run(both())


def _models(children: Children, work: Path, names: int) -> dict[str, Any]:
    fake_port, port = free_port(), free_port()
    fake = children.start("fake", [sys.executable, "-m", "llm_router", "fake-upstream",
                                   "--host", "127.0.0.1", "--port", str(fake_port)], cwd=work)
    upstream = f"http://127.0.0.1:{fake_port}"
    children.wait_ready("fake", fake, upstream + "/v1/models")
    cfg = work / "memory.yaml"
    cfg.write_text("\n".join([
        "host: 127.0.0.1", "port: 8080", f"api_key: {_KEY}", "shutdown_grace_s: 1",
        "providers:",
        "  - {name: up, type: openai, base_url: " + upstream + "/v1, api_keys: [sk-up]}",
        "groups:", "  - {name: g, models: [{provider: up, name: m}]}",
        "pricing:", "  m: {input: 1, output: 2}", ""]))
    router = children.start("router", [
        sys.executable, "-m", "llm_router", "serve", "--config", str(cfg), "--host",
        "127.0.0.1", "--port", str(port), "--log-level", "WARNING"], cwd=work)
    base = f"http://127.0.0.1:{port}"
    children.wait_ready("router", router, base + "/health")

    async def send(models: list[str]) -> int:
        failed = 0
        sem = asyncio.Semaphore(16)
        auth = {"Authorization": f"Bearer {_KEY}"}
        async with aiohttp.ClientSession() as s:
            async def one(model: str) -> None:
                nonlocal failed
                async with sem, s.post(base + "/v1/chat/completions", headers=auth, json={
                        "model": model, "max_tokens": 4,
                        "messages": [{"role": "user", "content": "hi"}]}) as r:
                    await r.read()
                    failed += r.status != 200
            await asyncio.gather(*(one(m) for m in models))
        return failed

    try:
        # Warm-up on the configured names: buffers, caches and first-use allocations.
        failed = asyncio.run(send(["g"] * 2000 + ["up/m"] * 2000))
        before = rss_mb(router.pid)
        failed += asyncio.run(send([f"up/{uuid.uuid4().hex}" for _ in range(names)]))
        after = rss_mb(router.pid)
        again = asyncio.run(send([f"up/{uuid.uuid4().hex}" for _ in range(names)]))
        final = rss_mb(router.pid)
    finally:
        children.stop(router)
        children.stop(fake)
    return {"names": names, "failed": failed + again, "rss_mib": after - before,
            "per_entry": (after - before) * _MIB / names,
            "second_round_rss_mib": final - after, "documented": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("pins", "responses", "models"))
    ap.add_argument("--entry-bytes", type=int, default=1200,
                    help="text per stored answer; the entry's JSON is about twice it")
    ap.add_argument("--names", type=int, default=5000, help="unknown model names sent")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    if args.only in (None, "pins"):
        p = out["pins"] = _pins()
        print(f"pins       {p['entries']:>7,}  {p['rss_mib']:6.1f} MiB  "
              f"{p['per_entry']:6.0f} B/pin  (docs: {p['documented']} B)", flush=True)
    if args.only in (None, "responses"):
        out["responses"] = _responses(args.entry_bytes)
        for name, r in out["responses"].items():
            print(f"responses  {r['entries']:>7,}  {r['rss_mib']:6.1f} MiB  "
                  f"{r['per_entry']:6.0f} B/entry (JSON {r['json_per_entry']:.0f} B; docs: "
                  f"{r['documented']:.0f} B)  counted {r['counted_mib']:.1f} of "
                  f"{r['max_bytes_mib']:.0f} MiB  [{name}, {r['puts']:,} puts]", flush=True)
    if args.only in (None, "models"):
        results = _BENCH / "results"
        children = Children(results / f"memory-{stamp}-logs")
        with tempfile.TemporaryDirectory(prefix="llm-router-memory-") as tmp:
            try:
                m = out["models"] = _models(children, Path(tmp), args.names)
            finally:
                children.stop_all()
        print(f"models     {m['names']:>7,}  {m['rss_mib']:6.1f} MiB  "
              f"{m['per_entry']:6.0f} B/name  (docs: bounded, 0 B); a second "
              f"{m['names']:,} new names: {m['second_round_rss_mib']:+.1f} MiB; "
              f"{m['failed']} failed", flush=True)
    path = _BENCH / "results" / f"memory-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
