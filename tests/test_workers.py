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
from pathlib import Path

import aiohttp

from llm_router.config import sha256_hex
from llm_router.state.redis_store import LEASE_S

from .conftest import StartRouter, Upstream, write_config
from .ports import free_port
from .redis_server import RedisServer, redis_server
from .test_reload import eventually
from .test_shared_state import ALICE, fleet_config, post_chat
from .test_shutdown import RouterProcess

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

        client = redis_server.client()
        try:
            async def in_flight_on_doomed() -> bool:
                return bool(await client.zcard("t:slots:u\x1falice") == 1)

            await eventually(in_flight_on_doomed, timeout=10)
        finally:
            await client.aclose()
        assert await slot_taken()
        await doomed.kill()  # SIGKILL: no drain, no release
        hanging.cancel()
        t0 = asyncio.get_running_loop().time()

        async def slot_free() -> bool:
            return (await post_chat(http, survivor))[0] == 200

        await eventually(slot_free, timeout=LEASE_S + 10)
        # Not before the lease could have run out, and not much after.
        assert asyncio.get_running_loop().time() - t0 <= LEASE_S + 10
    finally:
        await doomed.kill()
