"""``llm-router serve --workers N`` and replicas as real processes (issue 14).

Workers share one port and one Redis; the parent restarts a killed worker and drains
them all on SIGTERM. A replica killed with SIGKILL gives its concurrency slots back
within the lease. Real processes, a real redis-server; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llm_router.config import sha256_hex
from llm_router.state.redis_store import LEASE_S

from .conftest import StartRouter, Upstream
from .fleet import ALICE, fleet_config, post_chat
from .helpers import eventually, write_config
from .ports import free_port
from .processes import RouterProcess
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

_STARTED = re.compile(rb"worker (\d+) started \(pid (\d+)\)")



async def _serve(tmp_path: Path, config: dict[str, object], *args: str
                 ) -> tuple[asyncio.subprocess.Process, Path]:
    path = tmp_path / "workers.yaml"
    write_config(path, config)
    err = tmp_path / "workers.err"
    with open(err, "wb") as fh, open(tmp_path / "workers.out", "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llm_router", "serve", "--config", str(path),
            "--log-format", "text", *args, stdout=out, stderr=fh)
    return proc, err


def test_more_than_one_worker_needs_redis(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "config.yaml"
    write_config(path, {"api_key": "sk-x", "providers": [{"name": "m", "type": "mock"}]})
    done = subprocess.run([sys.executable, "-m", "llm_router", "serve", "--config", str(path),
                           "--workers", "2", "--port", "0"], capture_output=True, timeout=30)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "state.redis_url" in err
    assert "per worker" in err


async def test_workers_share_a_port_restart_when_killed_and_drain_on_sigterm(
        redis_server: RedisServer, upstream: Upstream, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    port = free_port()
    cfg = fleet_config(upstream, redis_server, alice={"limits": {"rpm": 40}})
    proc, err = await _serve(tmp_path, cfg, "--workers", "2", "--host", "127.0.0.1",
                             "--port", str(port))
    try:
        async def two_listening() -> bool:
            return err.read_bytes().count(b"listening on") >= 2

        await eventually(two_listening, timeout=20)
        url = f"http://127.0.0.1:{port}"

        class At:
            pass

        at = At()
        at.url = url  # type: ignore[attr-defined]
        statuses = [s for s, _, _ in await asyncio.gather(
            *(post_chat(http, at) for _ in range(50)))]  # type: ignore[arg-type]
        # Two workers, one rpm: exactly 40 pass, whichever worker took each connection.
        assert statuses.count(200) == 40
        assert statuses.count(429) == 10
        pids = [int(m.group(2)) for m in _STARTED.finditer(err.read_bytes())]
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)

        async def restarted() -> bool:
            log = err.read_bytes()
            return b"restarting" in log and log.count(b"listening on") >= 3

        await eventually(restarted, timeout=20)
        async with http.get(url + "/health/ready") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert b"all 2 workers stopped" in err.read_bytes()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _mock_fleet(redis: RedisServer, latency_ms: float) -> dict[str, object]:
    return {
        "providers": [{"name": "up", "type": "mock", "latency_ms": latency_ms}],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "users": [{"name": "alice", "keys": [{"sha256": sha256_hex(ALICE), "name": "laptop"}],
                   "limits": {"max_concurrent": 1}}],
        "state": {"redis_url": redis.url, "prefix": "t", "sync_interval_ms": 50},
    }


async def test_a_killed_replica_frees_its_concurrency_slot(
        redis_server: RedisServer, start_router: StartRouter, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    path = tmp_path / "replica.yaml"
    write_config(path, _mock_fleet(redis_server, latency_ms=120_000))  # answers too late
    doomed = RouterProcess(path, tmp_path)
    await doomed.start()
    survivor = await start_router(_mock_fleet(redis_server, latency_ms=0), name="survivor.yaml")
    try:
        hanging = asyncio.create_task(post_chat(http, doomed))  # type: ignore[arg-type]

        async def slot_taken() -> bool:
            return (await post_chat(http, survivor))[0] == 429

        slots = "t:slots:u\x1falice"
        client = redis_server.client()
        try:
            async def in_flight_on_doomed() -> bool:
                return bool(await client.zcard(slots) == 1)

            await eventually(in_flight_on_doomed, timeout=10)
            assert await slot_taken()
            await doomed.kill()  # SIGKILL: no drain, no release, no more renewals
            hanging.cancel()
            # The end of the dead replica's lease (Unix ms), as it last renewed it.
            [(_, lease_end_ms)] = await client.zrange(slots, 0, -1, withscores=True)
        finally:
            await client.aclose()

        async def slot_free() -> bool:
            return (await post_chat(http, survivor))[0] == 200

        # Not much after the lease ran out (the timeout) ...
        await eventually(slot_free, timeout=LEASE_S + 10)
        # ... and not before: the survivor's admission came past the lease's end.
        assert time.time() * 1000 >= lease_end_ms
    finally:
        await doomed.kill()


def _samples(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``."""
    return [s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()]


async def test_metrics_of_two_workers_are_one_view_whose_counters_never_go_backwards(
        redis_server: RedisServer, upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    proc, err = await _serve(tmp_path, fleet_config(upstream, redis_server), "--workers", "2",
                             "--host", "127.0.0.1", "--port", str(port))
    at = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    chat = {"route": "/v1/chat/completions"}
    # A new connection per request: the kernel hands each one to either worker, so
    # successive scrapes reach both.
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            async def two_listening() -> bool:
                return err.read_bytes().count(b"listening on") >= 2

            await eventually(two_listening, timeout=20)

            async def scrape() -> str:
                async with http.get(at.url + "/metrics") as resp:
                    assert resp.status == 200
                    return await resp.text()

            async def requests_total() -> float:
                return sum(_samples(await scrape(), "llm_router_requests_total", **chat))

            seen: list[float] = []
            traffic_done = asyncio.Event()

            async def scrape_during_traffic() -> None:
                while not traffic_done.is_set():
                    seen.append(await requests_total())

            scraper = asyncio.create_task(scrape_during_traffic())
            sent = 0
            for _ in range(4):
                statuses = [s for s, _, _ in await asyncio.gather(
                    *(post_chat(http, at) for _ in range(15)))]  # type: ignore[arg-type]
                assert statuses == [200] * 15
                sent += 15
                # Whichever worker answers, the fleet's total: every request, once.
                assert [await requests_total() for _ in range(6)] == [sent] * 6
            traffic_done.set()
            await scraper
            assert len(seen) > 1 and seen == sorted(seen), seen  # never backwards

            text = await scrape()
            assert sum(_samples(text, "llm_router_request_duration_seconds_count",
                                **chat)) == sent
            assert sum(_samples(text, "llm_router_overhead_seconds_count", **chat)) == sent
            # Each answer's usage, counted in the workers' files too.
            for kind in ("prompt", "completion"):
                assert sum(_samples(text, "llm_router_tokens_total", kind=kind)) >= sent
            assert _samples(text, "llm_router_inflight_requests") == [0]
            assert _samples(text, "llm_router_state_backend_up") == [1]
            assert _samples(text, "llm_router_build_info") == [1]  # not one per worker

            # A worker killed and restarted: what it counted stays counted.
            pids = [int(m.group(2)) for m in _STARTED.finditer(err.read_bytes())]
            os.kill(pids[0], signal.SIGKILL)

            async def restarted() -> bool:
                return err.read_bytes().count(b"listening on") >= 3

            await eventually(restarted, timeout=20)
            assert [await requests_total() for _ in range(6)] == [sent] * 6
            assert (await post_chat(http, at))[0] == 200  # type: ignore[arg-type]
            assert [await requests_total() for _ in range(6)] == [sent + 1] * 6
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_scrape_while_a_worker_creates_its_metric_file_is_not_a_500(
        redis_server: RedisServer, upstream: Upstream, tmp_path: Path,
        monkeypatch: Any) -> None:
    """A worker creates each metric file empty, then sizes it; a scrape reading it in
    between used to fail with struct.error, and /metrics answered 500."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    port = free_port()
    proc, err = await _serve(tmp_path, fleet_config(upstream, redis_server), "--workers", "2",
                             "--host", "127.0.0.1", "--port", str(port))
    try:
        async def two_listening() -> bool:
            return err.read_bytes().count(b"listening on") >= 2

        await eventually(two_listening, timeout=20)
        (metrics_dir / "counter_424242.db").touch()  # as a worker's first open leaves it
        connector = aiohttp.TCPConnector(force_close=True)  # reach both workers
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(6):
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    assert resp.status == 200, await resp.text()
                    assert "llm_router_build_info" in await resp.text()
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
