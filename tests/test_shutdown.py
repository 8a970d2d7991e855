"""Snapshots and graceful shutdown (docs/operations.md): SIGTERM drains in-flight streams,
writes the usage snapshot and exits 0; counters survive a restart; a corrupt snapshot
never stops start-up. The router runs as a real ``python -m llm_router serve`` process."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.config import key_label
from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, StartRouter, Upstream
from .helpers import (
    AUTH,
    HELLO,
    RELOAD_OK,
    ROUTER_KEY,
    eventually,
    key_tokens,
    metric_samples,
    openai_provider,
    write_config,
)
from .processes import RouterProcess


@pytest.fixture
async def router_process(tmp_path: Path) -> AsyncIterator[Callable[..., RouterProcess]]:
    made: list[RouterProcess] = []

    def make(config: dict[str, Any]) -> RouterProcess:
        path = tmp_path / "config.yaml"
        write_config(path, {"api_key": ROUTER_KEY, **config})
        rp = RouterProcess(path, tmp_path)
        made.append(rp)
        return rp

    yield make
    for rp in made:
        await rp.kill()


def _config(up: Upstream, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up, [{"key": "sk-one", "name": "one"}, "sk-two"])],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        "usage": {"snapshot_path": str(tmp_path / "usage.json"), "snapshot_interval_s": 60},
        **extra,
    }


async def test_counters_survive_sigterm_and_restart_exactly(
        router_process: Callable[..., RouterProcess], upstream: Upstream, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    rp = router_process(_config(upstream, tmp_path))
    await rp.start()
    for n in range(5):
        async with http.post(rp.url + "/v1/chat/completions", headers=AUTH,
                             json={"model": "g", "messages": HELLO, "max_tokens": 3 + n}) as r:
            assert r.status == 200
    before = key_tokens(await metric_samples(rp.url))
    assert len(before) == 2 and all(v > 0 for v in before.values())
    rp.signal(signal.SIGTERM)
    assert await rp.wait() == 0
    assert "usage snapshot written" in rp.log
    await rp.start()
    assert key_tokens(await metric_samples(rp.url)) == before


async def test_sighup_reloads_the_config(
        router_process: Callable[..., RouterProcess], upstream: Upstream, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    rp = router_process(_config(upstream, tmp_path))
    await rp.start()
    rp.signal(signal.SIGHUP)  # the file is unchanged: only the signal can cause this reload

    async def reloaded() -> bool:
        samples = await metric_samples(rp.url)
        return samples[RELOAD_OK] == 1

    await eventually(reloaded)
    assert "config reloaded (SIGHUP)" in rp.log
    rp.signal(signal.SIGTERM)
    assert await rp.wait() == 0


async def _stream_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for line in resp.content:
        if line.strip():
            yield line.strip()


async def test_stream_started_before_sigterm_completes_with_done(
        router_process: Callable[..., RouterProcess], make_upstream: MakeUpstream,
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    slow = await make_upstream(tokens_per_second=20)
    rp = router_process(_config(slow, tmp_path, shutdown_delay_s=0.3, shutdown_grace_s=10))
    await rp.start()
    body = {"model": "g", "messages": HELLO, "max_tokens": 30, "stream": True,
            "stream_options": {"include_usage": True}}
    events: list[bytes] = []
    async with http.post(rp.url + "/v1/chat/completions", json=body,
                         headers={**AUTH, "Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200
        lines = _stream_lines(resp)
        events.append(await anext(lines))  # the stream is under way
        rp.signal(signal.SIGTERM)
        async with aiohttp.ClientSession() as probe:  # a fresh connection, as a balancer's

            async def not_ready() -> bool:
                async with probe.get(rp.url + "/health/ready") as r:
                    return r.status == 503

            await eventually(not_ready, timeout=2)

            async def refused() -> bool:
                try:
                    async with probe.get(rp.url + "/health/live"):
                        return False
                except aiohttp.ClientConnectionError:
                    return True

            await eventually(refused, timeout=3)  # stopped accepting after the delay …
        assert rp.proc is not None and rp.proc.returncode is None  # … but still streaming
        events.extend([line async for line in lines])
    assert events[-1] == b"data: [DONE]"
    usage = orjson.loads(events[-2].removeprefix(b"data: "))["usage"]
    assert usage["completion_tokens"] == 30
    assert await rp.wait() == 0
    # The final snapshot was written after the stream finished, so it counts it.
    doc = orjson.loads((tmp_path / "usage.json").read_bytes())
    rows = doc["sections"]["counters"]["key_tokens"]
    assert sum(r["tokens"] for r in rows) == usage["total_tokens"]


async def test_stream_outliving_the_grace_period_is_cut_with_an_in_band_error(
        router_process: Callable[..., RouterProcess], make_upstream: MakeUpstream,
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    slow = await make_upstream(tokens_per_second=20)
    rp = router_process(_config(slow, tmp_path, shutdown_grace_s=0.3))
    await rp.start()
    body = {"model": "g", "messages": HELLO, "max_tokens": 200, "stream": True}  # ~10 s
    events: list[bytes] = []
    async with http.post(rp.url + "/v1/chat/completions", json=body,
                         headers={**AUTH, "Accept-Encoding": "identity"}) as resp:
        lines = _stream_lines(resp)
        events.append(await anext(lines))
        rp.signal(signal.SIGTERM)
        events.extend([line async for line in lines])  # ends cleanly, not cut mid-frame
    assert len(events) < 50  # cut long before its 200 tokens
    # The client is told why: an OpenAI-shaped error event, then the usual end.
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert "shutting down" in error["message"]
    assert await rp.wait() == 0
    assert "cutting 1 request(s)" in rp.log
    assert (tmp_path / "usage.json").exists()
    access = (tmp_path / f"router-{rp.runs}.out").read_text()
    assert "status=200" in access and "error=shutdown" in access


async def test_stream_kept_alive_at_the_end_of_the_grace_gets_an_in_band_error(
        router_process: Callable[..., RouterProcess], upstream: Upstream,
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    # The upstream never answers; keepalive comments commit the stream meanwhile, so a
    # 503 is no longer possible when the grace runs out: the error goes in-band.
    upstream.fake.add_fault(Fault(status=0, hang_s=30, times=None))
    rp = router_process(_config(upstream, tmp_path, shutdown_grace_s=0.3, keepalive_s=0.1))
    await rp.start()
    async with http.post(rp.url + "/v1/chat/completions", json={
            "model": "g", "messages": HELLO, "stream": True},
            headers={**AUTH, "Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200
        lines = _stream_lines(resp)
        assert await anext(lines) == b": keepalive"
        rp.signal(signal.SIGTERM)
        rest = [line async for line in lines if line != b": keepalive"]
    assert rest[-1] == b"data: [DONE]"
    assert "shutting down" in orjson.loads(rest[-2].removeprefix(b"data: "))["error"]["message"]
    assert await rp.wait() == 0


async def test_request_still_waiting_at_the_end_of_the_grace_gets_a_503(
        router_process: Callable[..., RouterProcess], upstream: Upstream,
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    upstream.fake.add_fault(Fault(status=0, hang_s=30, times=None))
    rp = router_process(_config(upstream, tmp_path, shutdown_grace_s=0.3))
    await rp.start()
    for stream in (False, True):  # a stream that has not started is the same case
        if stream:
            await rp.wait()
            await rp.start()
        request = asyncio.create_task(http.post(
            rp.url + "/v1/chat/completions", headers=AUTH,
            json={"model": "g", "messages": HELLO, "stream": stream}))

        async def waiting(expected: int = 2 if stream else 1) -> bool:
            return len(upstream.fake.requests) == expected

        await eventually(waiting, timeout=5)
        rp.signal(signal.SIGTERM)
        async with await request as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"]["code"] == "shutting_down"
    assert await rp.wait() == 0


@pytest.mark.parametrize("content", [
    b"\x00\x01 not json at all",
    b'{"version": 1, "sections": {"counters": []}}',  # JSON of the wrong shape
    b'{"version": 99, "sections": {}}',  # written by a newer router
])
async def test_corrupt_snapshot_is_moved_aside_and_startup_continues(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path,
        http: aiohttp.ClientSession, content: bytes) -> None:
    snapshot = tmp_path / "usage.json"
    snapshot.write_bytes(content)
    router = await start_router(_config(upstream, tmp_path))
    assert [p.read_bytes() for p in tmp_path.glob("usage.json.corrupt-*")] == [content]
    # Replaced at once by a snapshot from zero (which also proves the directory writable).
    assert orjson.loads(snapshot.read_bytes())["sections"]["counters"]["key_tokens"] == []
    async with http.get(router.url + "/health/ready") as r:
        assert r.status == 200
    client = router.openai()
    await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert sum(router.state.counters.tokens.values()) > 0  # counting from zero


async def test_snapshot_restores_counters_of_keys_that_still_match(
        start_router: StartRouter, upstream: Upstream, tmp_path: Path) -> None:
    rows = [{"provider": "up", "key": "one", "model": "m", "tokens": 1234},
            {"provider": "gone", "key": "old", "model": "m", "tokens": 99}]
    (tmp_path / "usage.json").write_bytes(orjson.dumps(
        {"version": 1, "sections": {
            "counters": {"key_tokens": rows, "key_requests_day": "", "key_requests": []},
            "ledger": {"version": 1, "users": [], "keys": []}}}))
    router = await start_router(_config(upstream, tmp_path))
    assert router.state.counters.tokens[("up", "one", "m")] == 1234
    # Key sk-two is not in the snapshot: it was added while the router was down. It joins
    # level with "one" rather than at zero, so the two share the next requests at once.
    assert router.state.counters.tokens[("up", key_label("sk-two"), "m")] == 1234
    client = router.openai()
    for n in range(2):  # two conversations: prompt-cache affinity would keep one together
        await client.chat.completions.create(  # type: ignore[call-overload]
            model="g", messages=[{"role": "user", "content": f"conversation {n}"}])
    assert sorted(r.api_key for r in upstream.fake.requests) == ["sk-one", "sk-two"]
