"""A router as a real ``python -m llm_router serve`` process, for the tests that signal,
kill or restart it (shutdown, durability, workers, rolling updates)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest

_LISTENING = re.compile(rb"listening on http://[^:]+:(\d+)")


class RouterProcess:
    """``python -m llm_router serve`` on a free loopback port, logs in files."""

    def __init__(self, config_path: Path, log_dir: Path) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.log_dir / f"router-{self.runs}.err").read_text()

    async def start(self) -> None:
        self.runs += 1
        err = self.log_dir / f"router-{self.runs}.err"
        with open(err, "wb") as err_fh, open(self.log_dir / f"router-{self.runs}.out",
                                             "wb") as out_fh:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llm_router", "serve", "--config", str(self.config_path),
                "--host", "127.0.0.1", "--port", "0", "--log-format", "text",
                stdout=out_fh, stderr=err_fh)
        deadline = asyncio.get_running_loop().time() + 15
        while not (m := _LISTENING.search(err.read_bytes())):
            if self.proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"router did not start:\n{err.read_text()}")
            await asyncio.sleep(0.02)
        self.port = int(m.group(1))

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
