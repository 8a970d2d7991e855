"""The edge dispatches the routes without a variable part itself and leaves the rest to
aiohttp's router (server/app.py): both ways must answer alike, over real sockets.

Each answer carries a request id, errors keep the OpenAI shape (the Anthropic one on
/v1/messages), and while the router drains every answer closes its connection, whichever
way it was dispatched.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .conftest import StartRouter, Upstream
from .helpers import AUTH, ROUTER_KEY, openai_provider, write_config

HELLO = [{"role": "user", "content": "hello"}]


def _config(up: Upstream) -> dict[str, Any]:
    return {"providers": [openai_provider("p", up)],
            "groups": [{"name": "g", "models": [{"provider": "p", "name": "m"}]}]}


async def _raw(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as is on a fresh connection: the head and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 10)
        head, _, body = data.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 100"):  # the interim answer to Expect: 100-continue
            if not body:
                body = await asyncio.wait_for(reader.read(65536), 10)
            head, _, body = body.partition(b"\r\n\r\n")
        return head, body
    finally:
        writer.close()


async def test_routes_dispatched_either_way_answer_with_ids_and_shaped_errors(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream))
    url = router.url
    async with http.post(url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 200 and resp.headers["X-Request-Id"]
    # A path with a variable part goes through aiohttp's router, through the same edge.
    async with http.get(url + "/v1/models/g", headers={**AUTH, "X-Request-Id": "abc"}) as resp:
        assert resp.status == 200 and (await resp.json())["id"] == "g"
        assert resp.headers["X-Request-Id"] == "abc"
    async with http.get(url + "/v1/models/g") as resp:  # no key: the edge still asks for one
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_api_key"
    async with http.head(url + "/health") as resp:
        assert resp.status == 200
    async with http.post(url + "/health") as resp:  # a wrong method: 405 in our shape
        assert resp.status == 405 and "error" in await resp.json()
        assert resp.headers["X-Request-Id"]
    async with http.get(url + "/v1/chat/completions", headers=AUTH) as resp:
        assert resp.status == 405 and "error" in await resp.json()
    async with http.get(url + "/v1/nowhere", headers=AUTH) as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    async with http.post(url + "/v1/messages/nowhere", headers=AUTH, json={}) as resp:
        assert resp.status == 404 and (await resp.json())["type"] == "error"  # Anthropic's
    # An encoded slash is not a path separator, as for aiohttp's router: unknown path.
    head, body = await _raw(router.port, b"POST /v1/chat%2Fcompletions HTTP/1.1\r\n"
                            b"Host: x\r\nAuthorization: " + AUTH["Authorization"].encode()
                            + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert head.startswith(b"HTTP/1.1 404") and b'"not_found"' in body


async def test_expect_100_continue_is_answered_then_served(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    body = b'{"model": "g", "messages": [{"role": "user", "content": "hello"}]}'
    head, answer = await _raw(router.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                              b"Authorization: " + AUTH["Authorization"].encode()
                              + b"\r\nContent-Type: application/json\r\nExpect: 100-continue"
                              b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
                              % (len(body), body))
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"X-Request-Id" in head and b'"choices"' in answer


async def test_while_draining_every_answer_closes_its_connection(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream))
    async with http.get(router.url + "/health") as resp:
        assert resp.headers.get("Connection", "").lower() != "close"
    router.state.draining = True
    for method, path, body in (("POST", "/v1/chat/completions", {"model": "g",
                                                                 "messages": HELLO}),
                               ("GET", "/v1/models/g", None), ("GET", "/health", None),
                               ("GET", "/v1/nowhere", None)):
        async with http.request(method, router.url + path, headers=AUTH, json=body) as resp:
            assert resp.headers["Connection"].lower() == "close", (path, resp.status)


async def test_the_daemon_writes_one_json_access_line_per_request_on_stdout(
        tmp_path: Path) -> None:
    """Through ``serve``'s own access handler (the line written without a LogRecord),
    redacted as every log line is."""
    path = tmp_path / "config.yaml"
    write_config(path, {"api_key": ROUTER_KEY, "providers": [{"name": "local", "type": "mock"}],
                        "groups": [{"name": "g", "models": [{"provider": "local",
                                                             "name": "m"}]}]})
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as out_fh, open(err, "wb") as err_fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llm_router", "serve", "--config", str(path), "--host",
            "127.0.0.1", "--port", "0", stdout=out_fh, stderr=err_fh)
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while not (m := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", err.read_bytes())):
            assert proc.returncode is None and asyncio.get_running_loop().time() < deadline, \
                err.read_text()
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{int(m.group(1))}"
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/chat/completions",
                                 headers={**AUTH, "X-Request-Id": "line-1"},
                                 json={"model": "g", "messages": HELLO}) as resp:
                assert resp.status == 200
            async with http.get(url + "/v1/nowhere",
                                headers={**AUTH, "X-Request-Id": "line-2"}) as resp:
                assert resp.status == 404
            async with http.get(url + "/health") as resp:  # public: no access line
                assert resp.status == 200
            # A configured secret never reaches the log, whichever field carries it.
            async with http.get(url + "/v1/models",
                                headers={**AUTH, "X-Request-Id": f"id-{ROUTER_KEY}"}) as resp:
                assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["line-1", "line-2", "id-[redacted]"]
    ok, missing, _ = lines
    assert ok["status"] == 200 and ok["route"] == "/v1/chat/completions" and ok["group"] == "g"
    assert missing["status"] == 404 and missing["error"] == "not_found"
    assert ROUTER_KEY not in out.read_text()
    for line in lines:  # as datetime.isoformat(timespec="milliseconds") writes UTC
        stamp = datetime.fromisoformat(line["time"])
        assert stamp.utcoffset() == timedelta(0)
        assert stamp.isoformat(timespec="milliseconds") == line["time"]
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)
