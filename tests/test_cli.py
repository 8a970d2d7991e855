"""The command's edges: a port already in use, and text access lines nobody can forge."""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from llm_router.config import load_config
from llm_router.gateway.router_state import RouterState
from llm_router.server.app import start_server

from .conftest import AUTH, ROUTER_KEY, write_config


async def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, {"api_key": ROUTER_KEY, "providers": [{"name": "local", "type": "mock"}],
                        "groups": [{"name": "g", "models": [{"provider": "local",
                                                             "name": "m"}]}]})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llm_router", "serve", "--config", str(path), "--host",
            "127.0.0.1", "--port", str(port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    lines = [line for line in err.decode().splitlines() if line.startswith("llm-router:")]
    assert lines == [f"llm-router: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert "Traceback" not in err.decode() and "ERROR" not in err.decode() and not out


async def test_text_access_line_quotes_values(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, {"api_key": ROUTER_KEY, "providers": [{"name": "local", "type": "mock"}],
                        "groups": [{"name": "g", "models": [{"provider": "local",
                                                             "name": "m"}]}]})
    state = RouterState(load_config(path))
    runner, port = await start_server(state, "127.0.0.1", 0, log_format="text")
    caplog.set_level(logging.INFO, logger="llm_router.access")
    try:
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                headers={**AUTH, "X-Request-Id": 'abc user=mallory status=200 "x'},
                json={"model": "g", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
    finally:
        await runner.cleanup()
    [line] = [r.getMessage() for r in caplog.records if r.name == "llm_router.access"]
    fields = dict(part.split("=", 1) for part in shlex.split(line))
    assert fields["request_id"] == 'abc user=mallory status=200 \\"x' or \
        fields["request_id"] == 'abc user=mallory status=200 "x'
    assert fields["user"] != "mallory" and fields["status"] == "200"
    assert re.search(r' request_id="abc user=mallory status=200 \\"x" ', line)
    assert "route=/v1/chat/completions" in line  # plain words stay bare
