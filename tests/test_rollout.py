"""A rolling update fails no request (docs/kubernetes.md): behind a balancer that sends
each new connection to the next ready replica, a new router starts, the old one gets
SIGTERM, and a client that never stops sending sees every request answered.

The balancer is what kube-proxy is to a Service: a TCP forwarder over the endpoints
that pass their readiness probe, probed the way the kubelet does (a fresh connection
each time). On SIGTERM the old router turns unready for ``shutdown_delay_s`` while
still serving, and tells keep-alive clients to reconnect (``Connection: close``), so
they land on the new one; only then does it stop accepting and drain."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import MakeUpstream, Upstream
from .helpers import AUTH, HELLO, ROUTER_KEY, eventually, openai_provider, write_config
from .processes import RouterProcess

_PROBE_PERIOD_S = 0.05  # the kubelet's periodSeconds, shrunk to fit a test


class Balancer:
    """Round robin over ready endpoints, one backend per TCP connection (kube-proxy)."""

    def __init__(self) -> None:
        self.endpoints: list[int] = []  # ports of the ready routers, in order
        self.connections: Counter[int] = Counter()  # connections sent to each port
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.endpoints:
                return  # no endpoint: the client's connection is closed unanswered
            port = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            self.connections[port] += 1
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return  # refused: the client sees its connection closed, a failure
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until either side closes; then close the other, as a TCP proxy does."""
    with contextlib.suppress(ConnectionError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    dst.close()


async def _endpoints_controller(balancer: Balancer, routers: list[RouterProcess],
                                stop: asyncio.Event) -> None:
    """Keep ``balancer.endpoints`` to the routers whose /health/ready answers 200."""
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection per probe
    async with aiohttp.ClientSession(connector=connector) as probe:
        while not stop.is_set():
            ready = []
            for rp in list(routers):
                with contextlib.suppress(aiohttp.ClientError):
                    async with probe.get(rp.url + "/health/ready") as resp:
                        if resp.status == 200:
                            ready.append(rp.port)
            balancer.endpoints = ready
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _PROBE_PERIOD_S)


class Traffic:
    """Clients sending chats and streams in a loop over keep-alive connections."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    async def run(self, clients: int) -> None:
        async with aiohttp.ClientSession(headers={**AUTH, "Accept-Encoding": "identity"}) as http:
            await asyncio.gather(*(self._client(http, n) for n in range(clients)))

    async def _client(self, http: aiohttp.ClientSession, n: int) -> None:
        stream = n % 2 == 1
        while not self.stop.is_set():
            body: dict[str, Any] = {"model": "g", "messages": HELLO, "max_tokens": 8,
                                    "stream": stream}
            try:
                async with http.post(self.url + "/v1/chat/completions", json=body) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        self.failures.append(f"{resp.status}: {text[:200]}")
                    elif stream and not text.rstrip().endswith("data: [DONE]"):
                        self.failures.append(f"stream cut: {text[-200:]!r}")
                    else:
                        self.ok += 1
            except aiohttp.ClientError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    async def more(self, n: int) -> None:
        """Wait until ``n`` more requests have succeeded."""
        target = self.ok + n

        async def reached() -> bool:
            return self.ok >= target

        await eventually(reached, timeout=20)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Callable[[str], RouterProcess]]:
    made: list[RouterProcess] = []

    def make(name: str) -> RouterProcess:
        logs = tmp_path / name
        logs.mkdir()
        rp = RouterProcess(tmp_path / "config.yaml", logs)
        made.append(rp)
        return rp

    yield make
    for rp in made:
        await rp.kill()


async def test_rolling_update_behind_a_balancer_fails_no_request(
        make_upstream: MakeUpstream, tmp_path: Path,
        replicas: Callable[[str], RouterProcess]) -> None:
    # Slow enough that requests are in flight at every step, and that four clients stay
    # light on a machine that runs other tests meanwhile.
    up: Upstream = await make_upstream(latency_ms=50, tokens_per_second=100)
    write_config(tmp_path / "config.yaml", {
        "api_key": ROUTER_KEY,
        "providers": [openai_provider("up", up, ["sk-one"])],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}],
        # Twenty probe periods: the balancer drops the old router long before it closes.
        "shutdown_delay_s": 1.0, "shutdown_grace_s": 10})
    balancer = Balancer()
    await balancer.start()
    old, new = replicas("old"), replicas("new")
    routers = [old]
    await old.start()
    stop_probing = asyncio.Event()
    controller = asyncio.create_task(_endpoints_controller(balancer, routers, stop_probing))

    async def endpoints(*expected: RouterProcess) -> bool:
        return sorted(balancer.endpoints) == sorted(rp.port for rp in expected)

    await eventually(lambda: endpoints(old))
    traffic = Traffic(f"http://127.0.0.1:{balancer.port}")
    clients = asyncio.create_task(traffic.run(clients=4))
    try:
        await traffic.more(20)  # every client is on a keep-alive connection to the old one
        await new.start()
        routers.append(new)
        await eventually(lambda: endpoints(old, new))
        await traffic.more(20)
        old.signal(signal.SIGTERM)
        assert await old.wait(timeout=20) == 0
        routers.remove(old)
        served_by_old = balancer.connections[old.port]
        await traffic.more(20)  # all of it on the new router now
    finally:
        traffic.stop.set()
        await clients
        stop_probing.set()
        await controller
        await balancer.stop()
    assert traffic.failures == [], f"{len(traffic.failures)} of {traffic.ok} failed"
    assert "draining in 1.0 s" in old.log  # the unready delay ran
    assert balancer.connections[old.port] == served_by_old
    assert balancer.connections[new.port] > 0
