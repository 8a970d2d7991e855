"""Where features meet: budgets x streams x dialects, each over real sockets.

Each test here is a defect found by using the router as a hostile client would, at a
seam no single feature's tests covered.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import orjson
import pytest

from .conftest import MakeUpstream, StartRouter
from .helpers import ROUTER_KEY, eventually

USER_KEY = "sk-qa-user"


def _user_config(up_root: str) -> dict[str, Any]:
    return {
        "providers": [{"name": "claude", "type": "anthropic", "base_url": up_root,
                       "api_keys": ["sk-ant-qa"]}],
        "groups": [{"name": "c", "models": [{"provider": "claude", "name": "claude-x"}]}],
        "users": [{"name": "u", "keys": [
            {"sha256": hashlib.sha256(USER_KEY.encode()).hexdigest(), "name": "k"}]}],
        "pricing": {"claude-x": {"input": 1.0, "output": 1.0}},
    }


async def test_abandoned_anthropic_stream_is_charged_for_what_the_client_received(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    # Anthropic's message_start reports output_tokens: 1 as a placeholder; the real count
    # comes in message_delta at the end. A client that reads the text and leaves before
    # the end must not pay for one token (a budget walks through that hole).
    up = await make_upstream(tokens_per_second=40)
    router = await start_router(_user_config(up.root))
    auth = {"Authorization": f"Bearer {USER_KEY}"}
    deltas = 0
    for route, body in (
            ("/v1/messages", {"model": "c", "max_tokens": 400, "stream": True,
                              "messages": [{"role": "user", "content": "hello"}]}),
            ("/v1/chat/completions", {"model": "c", "max_tokens": 400, "stream": True,
                                      "messages": [{"role": "user", "content": "hello"}]})):
        async with aiohttp.ClientSession() as s:
            resp = await s.post(router.url + route, json=body, headers=auth)
            assert resp.status == 200
            seen = 0
            while seen < 10:
                line = await resp.content.readline()
                if b"content_block_delta" in line or b'"content":"' in line:
                    seen += 1
            deltas += seen
            resp.close()
        await eventually(lambda: router.state.inflight == 0)
    async with aiohttp.ClientSession() as s, s.get(router.url + "/v1/usage",
                                                   headers=auth) as r:
        total = orjson.loads(await r.read())["user"]["usage"]["total"]
    assert total["requests"] == 2
    assert total["completion_tokens"] >= deltas  # the fake sends one token per delta
    assert total["cost_usd"] > 0


async def test_big_admin_and_metrics_answers_are_compressed_when_accepted(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    # Contract: Accept-Encoding compresses responses. Model answers were; the largest
    # ones, a /metrics scrape (100+ KB) and the status page, were not.
    up = await make_upstream()
    router = await start_router({
        "providers": [{"name": "p", "type": "openai", "base_url": up.base_url,
                       "api_keys": ["sk-p"]}],
        "groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}]})
    auth = {"Authorization": f"Bearer {ROUTER_KEY}"}
    chat = {"model": "g", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(router.url + "/v1/chat/completions", json=chat,
                         headers={**auth, "Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"  # compressed once, not twice
        assert orjson.loads(gzip.decompress(await r.read()))["usage"]
    for path in ("/metrics", "/admin/status", "/v1/usage", "/ui"):
        async with http.get(router.url + path, headers={**auth, "Accept-Encoding": "br"}) as r:
            assert r.status == 200
            assert r.headers.get("Content-Encoding") == "br", path
            assert "Accept-Encoding" in r.headers.get("Vary", "")
            plain = brotli.decompress(await r.read())
        async with http.get(router.url + path,
                            headers={**auth, "Accept-Encoding": "identity"}) as r:
            assert "Content-Encoding" not in r.headers
            assert await r.read() == plain or path in ("/metrics", "/admin/status", "/v1/usage")
    async with http.get(router.url + "/metrics", headers={"Accept-Encoding": "gzip"}) as r:
        assert b"llm_router_requests_total" in gzip.decompress(await r.read())


async def _raw_post(port: int, path: str, header: bytes, body: bytes) -> tuple[int, bytes]:
    """POST with one header line as raw bytes (clients refuse to send non-UTF-8 values)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%b\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
                 % (path.encode(), header, len(body), body))
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


async def test_header_bytes_that_are_not_utf8_get_a_json_error_not_a_500(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    up = await make_upstream()
    router = await start_router({
        "providers": [{"name": "p", "type": "openai", "base_url": up.base_url,
                       "api_keys": ["sk-p"]}],
        "groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}]})
    chat = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "hi"}]})
    auth = f"Authorization: Bearer {ROUTER_KEY}\r\n".encode()
    status, body = await _raw_post(router.port, "/v1/chat/completions",
                                   b"Authorization: Bearer \xff\xfe", chat)
    assert status == 401
    assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    for path, shape in (("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")):
        status, body = await _raw_post(router.port, path,
                                       auth + b"X-Router-Provider-Only: \xff\xfe", chat)
        assert status == 400, body
        doc = orjson.loads(body)
        message = doc["error"]["message"]
        assert "X-Router-Provider-Only" in message
        assert (doc["type"] == "error") if shape == "anthropic" else doc["error"]["code"]


def test_a_snapshot_path_naming_the_config_file_is_refused(tmp_path: Path) -> None:
    # The first snapshot overwrote the config (the original moved aside as corrupt),
    # and the router then served a file that would not load at the next start.
    path = tmp_path / "config.yaml"
    text = ("api_key: sk-x\nproviders: [{name: local, type: mock}]\n"
            "groups: [{name: g, models: [{provider: local, name: m}]}]\n"
            f"usage: {{snapshot_path: {path}}}\n")
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "llm_router", "check", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "usage.snapshot_path" in done.stdout + done.stderr
    assert path.read_text() == text


async def test_a_second_router_on_the_same_usage_snapshot_refuses_to_start(
        start_router: StartRouter, tmp_path: Path) -> None:
    # Two routers sharing one snapshot path (two replicas on one volume) each overwrote the
    # other's spend, last writer winning, and deleted each other's journal files.
    snapshot = tmp_path / "usage.json"
    config = {"providers": [{"name": "local", "type": "mock"}],
              "groups": [{"name": "g", "models": [{"provider": "local", "name": "m"}]}],
              "usage": {"snapshot_path": str(snapshot)}}
    first = await start_router(config)
    second = tmp_path / "second.yaml"
    second.write_text(first.config_path.read_text())
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "llm_router", "serve", "--config", str(second),
                         "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "in use by another llm-router" in done.stderr
    assert str(os.getpid()) in done.stderr  # names the holder
    await first.close()
    again = await start_router(config, name="again.yaml")  # released at shutdown
    assert again.state.snapshot is not None


def test_config_problems_never_quote_a_value_from_the_environment(tmp_path: Path) -> None:
    # A secret put under the wrong key was quoted by check, the reload log and the
    # status page: "expected a whole number, got 'sk-live-…' from an environment variable".
    path = tmp_path / "config.yaml"
    path.write_text(
        "port: ${SECRET_KEY}\napi_key: sk-x\n"
        "providers:\n  - name: p\n    type: ${SECRET_KEY}\n"
        "  - name: q\n    type: openai\n    base_url: http://127.0.0.1:9/v1\n"
        "    api_keys: [{key: k, models: ['${SECRET_KEY}']}]\n"
        "groups: [{name: g, strategy: '${SECRET_KEY}', models: [{provider: q, name: m}]}]\n")
    done = subprocess.run([sys.executable, "-m", "llm_router", "check", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SECRET_KEY": "sk-live-TOPSECRET123"})
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "TOPSECRET" not in out
    assert "port: expected a whole number, got '${SECRET_KEY}'" in out


async def test_a_refused_request_says_why_in_its_access_line(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    # The access log is where an operator greps first; refusals logged "error": null.
    up = await make_upstream()
    router = await start_router({
        "providers": [{"name": "p", "type": "openai", "base_url": up.base_url,
                       "api_keys": ["sk-p"]}],
        "groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}]})
    caplog.set_level(logging.INFO, logger="llm_router.access")
    chat = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({"Authorization": "Bearer wrong"},
                    {"Authorization": f"Bearer {ROUTER_KEY}"}):
        async with http.post(router.url + "/v1/chat/completions", json=chat,
                             headers=headers) as r:
            assert r.status in (401, 404)
    lines = [orjson.loads(r.getMessage()) for r in caplog.records
             if r.name == "llm_router.access"]
    assert [(line["status"], line["error"]) for line in lines] == [
        (401, "invalid_api_key"), (404, "model_not_found")]
