"""A real ``redis-server`` on a free loopback port, for the shared-state tests.

Started without persistence (so "restart empty" is real), stopped at the end. Faults are
real too: SIGSTOP stalls it with its socket still accepting, a kill takes it away.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from .ports import free_port

__all__ = ["REDIS_PASSWORD", "RedisServer", "redis_server", "redis_server_with_password"]

REDIS_PASSWORD = "hunter2-redis-pw"  # requirepass of redis_server_with_password

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"



class RedisServer:
    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password  # requirepass, when set
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL the router is given: with the password, when the server requires one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", "",
             *(("--requirepass", self.password) if self.password else ())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Redis(port=self.port, socket_timeout=1, password=self.password)
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except OSError:
                    await asyncio.sleep(0.02)
                except Exception:  # redis ConnectionError is not an OSError
                    await asyncio.sleep(0.02)
            pytest.fail("redis-server did not start")
        finally:
            await client.aclose()

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections; nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot exit
            self.proc.kill()
            self.proc.wait(5)

    async def restart_empty(self) -> None:
        self.stop()
        await self.start()

    def client(self) -> Redis:
        return Redis(port=self.port, socket_timeout=2, password=self.password)


def _require_redis_server() -> None:
    if not os.path.exists(REDIS_SERVER):
        # Locally a skip; in CI a failure, so a green run always means Redis was tested.
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI: .ci/run installs the Debian package "
                        "'redis-server'", pytrace=False)
        pytest.skip("redis-server is not installed (.ci/run installs it)")


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    _require_redis_server()
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_server_with_password(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server with ``requirepass`` :data:`REDIS_PASSWORD`."""
    _require_redis_server()
    server = RedisServer(tmp_path, password=REDIS_PASSWORD)
    await server.start()
    yield server
    server.stop()
