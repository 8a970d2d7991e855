"""``--log-format json``: stderr is one JSON object per line too, not only the access log."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
from pathlib import Path

import orjson

from llm_router.observe.logs import JsonFormatter, setup_stderr_logging

from .helpers import ROUTER_KEY, write_config


async def test_serve_with_json_logs_writes_json_lines_to_stderr(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, {"api_key": ROUTER_KEY, "providers": [{"name": "local", "type": "mock"}],
                          "groups": [{"name": "g", "models": [{"provider": "local",
                                                                "name": "m"}]}]})
    err = tmp_path / "router.err"
    with open(err, "wb") as err_fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llm_router", "serve", "--config", str(config), "--host",
            "127.0.0.1", "--port", "0", "--log-format", "json",
            stdout=asyncio.subprocess.DEVNULL, stderr=err_fh)
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while b"listening on" not in err.read_bytes():
            assert proc.returncode is None, err.read_text()
            assert asyncio.get_running_loop().time() < deadline, err.read_text()
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [orjson.loads(line) for line in err.read_bytes().splitlines()]
    assert len(lines) >= 3  # listening, SIGTERM received, draining, stopped
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message"}
        assert line["time"].endswith("+00:00")
    assert lines[0]["logger"] == "llm_router" and lines[0]["level"] == "INFO"
    assert "listening on http://127.0.0.1:" in lines[0]["message"]
    assert lines[-1]["message"] == "stopped"


def test_json_lines_carry_extra_fields_and_tracebacks_in_one_line() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_stderr_logging("INFO", "json", out)
    log = logging.getLogger("llm_router.test_logs")
    try:
        log.warning("reload refused: %d problem(s)", 2, extra={"path": Path("/etc/x.yaml")})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:] = saved[0]  # leave the root logger as pytest had it
        root.setLevel(saved[1])
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "reload refused: 2 problem(s)"
    assert first["fields"] == {"path": "/etc/x.yaml"}
    assert first["level"] == "WARNING" and first["logger"] == "llm_router.test_logs"
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]
    assert "fields" not in second


def test_formatter_alone_needs_no_setup() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    assert orjson.loads(JsonFormatter().format(record))["message"] == "hi there"
