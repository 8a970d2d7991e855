"""Client connections under limits, over real sockets: idle and slow connections cannot
starve real clients, probes answer from a reserve, oversized headers get JSON 431."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from contextlib import suppress
from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import Router, StartRouter
from .helpers import AUTH, eventually

_MOCK = {"providers": [{"name": "local", "type": "mock"}],
         "groups": [{"name": "g", "models": [{"provider": "local", "name": "m"}]}]}
HELLO = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}


async def _chat(router: Router) -> int:
    async with aiohttp.ClientSession() as s, s.post(router.url + "/v1/chat/completions",
                                                     headers=AUTH, json=HELLO) as r:
        await r.read()
        return r.status


async def _open(router: Router, n: int) -> list[tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter]]:
    conns = []
    for _ in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", router.port))
    return conns


async def _closed_by_router(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""  # EOF: closed
    except ConnectionError:
        return True  # closed, and our later writes drew a reset or a broken pipe
    except TimeoutError:
        return False


async def _close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.close()


@pytest.fixture
def many_files() -> None:
    """5,000 loopback connections take 10,000 descriptors in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 12_000 if hard == resource.RLIM_INFINITY else min(hard, 12_000)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 11_000:
        pytest.skip("the open-file limit is too low for 5,000 connections")


async def test_5000_idle_connections_do_not_stop_a_client(
        start_router: StartRouter, many_files: None) -> None:
    router = await start_router({**_MOCK, "server": {"max_connections": 1000}})
    idle = await _open(router, 5000)
    try:
        t0 = time.perf_counter()
        assert await _chat(router) == 200
        assert time.perf_counter() - t0 < 5
        # The cap held: the longest-idle connections were closed to admit newer ones.
        guard = router.runner.guard  # type: ignore[attr-defined]
        assert guard.count <= 1000
        assert await _closed_by_router(idle[0][0], 5)
    finally:
        await _close_all(idle)


async def test_headers_must_arrive_within_the_header_timeout(start_router: StartRouter) -> None:
    router = await start_router({**_MOCK, "server": {"header_timeout_s": 0.5,
                                                     "keepalive_timeout_s": 60}})
    body = orjson.dumps(HELLO)
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
               + AUTH["Authorization"].encode() + b"\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def keep_alive_client(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        # Idle longer than the header timeout between its requests: that is the
        # keep-alive timeout's business, not the header timeout's.
        for pause in (0.0, 1.0):
            await asyncio.sleep(pause)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)

    (silent_r, silent_w), (slow_r, slow_w), (ok_r, ok_w) = await _open(router, 3)
    client = asyncio.create_task(keep_alive_client(ok_r, ok_w))
    slow_w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    t0 = time.perf_counter()
    for _ in range(4):  # slowloris: a header line now and then, never the blank line
        await asyncio.sleep(0.2)
        with suppress(ConnectionError):  # closed under us: what is asserted below
            slow_w.write(b"X-A: b\r\n")
    assert await _closed_by_router(silent_r, 5)
    assert await _closed_by_router(slow_r, 5)
    assert time.perf_counter() - t0 < 5
    await client
    for w in (silent_w, slow_w, ok_w):
        w.close()


async def _busy(router: Router, n: int) -> list[tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter]]:
    """``n`` connections with a request running: its body is still coming."""
    conns = await _open(router, n)
    for _, w in conns:
        w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                + AUTH["Authorization"].encode() + b"\r\nContent-Length: 1000\r\n\r\n{")
    await eventually(lambda: router.state.inflight == n)  # each one's request has begun
    return conns


async def test_past_the_cap_probes_answer_from_the_reserve(start_router: StartRouter) -> None:
    router = await start_router({**_MOCK, "server": {"max_connections": 2,
                                                     "reserve_connections": 2}})
    busy = await _busy(router, 2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(router.url + "/health/live") as r:
            assert r.status == 200
        async with s.get(router.url + "/metrics") as r:
            assert r.status == 200
        async with s.get(router.url + "/v1/models", headers=AUTH) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "too_many_connections"
    await _close_all(busy)


async def test_past_the_cap_and_reserve_new_connections_are_refused_at_once(
        start_router: StartRouter) -> None:
    router = await start_router({**_MOCK, "server": {"max_connections": 2,
                                                     "reserve_connections": 0}})
    busy = await _busy(router, 2)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    t0 = time.perf_counter()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
    assert time.perf_counter() - t0 < 2
    writer.close()
    await _close_all(busy)
    # Once the busy ones are gone, clients are served again.
    await eventually(lambda: router.runner.guard.count == 0)  # type: ignore[attr-defined]
    assert await _chat(router) == 200


@pytest.mark.parametrize("headers", [
    {f"X-H{i}": "v" for i in range(150)},  # too many
    {"X-Big": "v" * 70_000},  # one too large
    {f"X-H{i}": "v" * 8000 for i in range(10)},  # too large in all
], ids=["count", "one", "total"])
async def test_oversized_headers_get_json_431(start_router: StartRouter,
                                              headers: dict[str, str]) -> None:
    router = await start_router(_MOCK)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and head[8:13] == b" 431 ", head
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert error["code"] == "headers_too_large"
    writer.close()


async def test_client_disconnects_are_never_logged_as_errors(
        start_router: StartRouter, caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router({
        "providers": [{"name": "local", "type": "mock", "tokens_per_second": 400}],
        "groups": [{"name": "g", "models": [{"provider": "local", "name": "m"}]}]})
    caplog.set_level(logging.DEBUG)

    async def leave_early(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        body = orjson.dumps({**HELLO, "stream": True, "max_tokens": 40})
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     + AUTH["Authorization"].encode() + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        with suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(200 + i * 7), 0.01 * (i % 12))
        writer.transport.abort()  # a reset, mid-stream or before the answer

    await asyncio.gather(*(leave_early(i) for i in range(120)))
    await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
