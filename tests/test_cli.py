"""The command's edges: a port already in use, text access lines nobody can forge, and
``check`` accepting exactly the configs ``serve`` starts."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.config import load_config
from llm_router.gateway.router_state import RouterState
from llm_router.server.app import start_server

from .helpers import AUTH, ROUTER_KEY, write_config


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


# ---------------------------------------------------------------- check agrees with serve

_MOCK = {"providers": [{"name": "local", "type": "mock"}],
         "groups": [{"name": "g", "models": [{"provider": "local", "name": "m"}]}]}
_ROOT = Path(__file__).resolve().parent.parent
# (id, config file text or dict, extra options given to both check and serve, env)
_CASES: list[tuple[str, Any, tuple[str, ...], dict[str, str]]] = [
    ("shared-key", {"api_key": ROUTER_KEY, **_MOCK}, (), {}),
    ("users-only", {"users": [{"name": "a", "keys": [{"key": "sk-a"}]}], **_MOCK}, (), {}),
    ("warnings-only", {"api_key": ROUTER_KEY, "shutdown_grace_s": 90, **_MOCK}, (), {}),
    ("json", orjson.dumps({"api_key": ROUTER_KEY, **_MOCK}).decode(), (), {}),
    ("example-yaml", (_ROOT / "config.example.yaml").read_text(), (),
     {"ROUTER_API_KEY": "sk-router", "OPENAI_API_KEY": "sk-openai"}),
    ("no-auth-insecure", _MOCK, ("--insecure-no-auth",), {}),
    ("no-auth", _MOCK, (), {}),
    ("empty-file", "", (), {}),
    ("no-providers", {"api_key": ROUTER_KEY}, (), {}),
    ("unknown-provider", {"api_key": ROUTER_KEY, **_MOCK, "groups": [
        {"name": "g", "models": [{"provider": "lokal", "name": "m"}]}]}, (), {}),
    ("duplicate-key", f"api_key: {ROUTER_KEY}\nserver: {{}}\nserver: {{}}\n"
     "providers: [{name: local, type: mock}]\n", (), {}),
    ("unset-variable", {"api_key": "${NO_SUCH_ROUTER_KEY}", **_MOCK}, (), {}),
    ("not-yaml", "providers: [\n", (), {}),
    ("workers-without-redis", {"api_key": ROUTER_KEY, **_MOCK}, ("--workers", "2"), {}),
    ("workers-zero", {"api_key": ROUTER_KEY, **_MOCK}, ("--workers", "0"), {}),
]


@pytest.mark.parametrize(("config", "options", "env"), [c[1:] for c in _CASES],
                         ids=[c[0] for c in _CASES])
async def test_every_config_check_accepts_starts_and_every_one_it_refuses_is_refused(
        tmp_path: Path, config: Any, options: tuple[str, ...], env: dict[str, str]) -> None:
    name = "config.json" if isinstance(config, str) and config.startswith("{") \
        else "config.yaml"
    path = tmp_path / name
    if isinstance(config, str):
        path.write_text(config)
    else:
        write_config(path, config)
    environ = {**os.environ, **env}
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_router", "check", str(path), *options, cwd=tmp_path,
        env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    check_out, check_err = await asyncio.wait_for(check.communicate(), 30)
    assert check.returncode in (0, 1), check_err.decode()
    accepted = check.returncode == 0

    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_router", "serve", "--config", str(path), "--host",
        "127.0.0.1", "--port", "0", "--log-format", "text", *options, cwd=tmp_path,
        env=environ, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert serve.stderr is not None
    seen = b""
    started = False
    try:
        while line := await asyncio.wait_for(serve.stderr.readline(), 30):
            seen += line
            if re.search(rb"listening on http://", line):
                started = True
                break
    finally:
        if serve.returncode is None:
            serve.send_signal(signal.SIGTERM)
        seen += await asyncio.wait_for(serve.stderr.read(), 30)
        code = await asyncio.wait_for(serve.wait(), 30)
    report = f"check said:\n{check_out.decode()}{check_err.decode()}\nserve said:\n{seen.decode()}"
    assert started == accepted, report
    if accepted:
        assert code == 0, report
    else:
        assert code != 0 and b"Traceback" not in seen, report
