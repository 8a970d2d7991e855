"""Fixtures: the real router on a loopback port, in front of real fake upstreams.

Nothing here mocks the router's own functions: tests talk HTTP to the router, and the
router talks HTTP to :class:`FakeUpstream` servers (or answers from its mock provider).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from llm_router.config import load_config
from llm_router.gateway.router_state import RouterState
from llm_router.server.app import start_server
from llm_router.server.reload import RELOADER
from llm_router.testing.upstream import FakeUpstream

from .helpers import ROUTER_KEY, write_config


@dataclass
class Upstream:
    fake: FakeUpstream
    base_url: str  # …/v1, as an openai provider's base_url
    root: str  # without /v1, as an anthropic provider's base_url

    def keys_seen(self) -> list[str | None]:
        return [r.api_key for r in self.fake.requests]


@dataclass
class Router:
    state: RouterState
    runner: web.AppRunner
    port: int
    config_path: Path
    _clients: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def reload(self) -> None:
        """Apply the config file now, through the router's own reloader. A test that swapped
        the config itself could race the file watcher: a reload the watcher started on an
        earlier write may swap its older content in after the test's swap."""
        assert await self.runner.app[RELOADER].reload("test", force=True) is True

    def openai(self, key: str = ROUTER_KEY, **kw: Any) -> openai.AsyncOpenAI:
        c = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)
        self._clients.append(c)
        return c

    def anthropic(self, key: str = ROUTER_KEY) -> anthropic.AsyncAnthropic:
        c = anthropic.AsyncAnthropic(base_url=self.url, api_key=key, max_retries=0)
        self._clients.append(c)
        return c

    async def close(self) -> None:
        for c in self._clients:
            await c.close()
        await self.runner.cleanup()


StartRouter = Callable[..., Awaitable[Router]]
MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def make_upstream(aiohttp_server: AiohttpServer) -> MakeUpstream:
    async def make(latency_ms: float = 0.0, tokens_per_second: float = 0.0,
                   prompt_cache_ttl_s: float = 0.0) -> Upstream:
        fake = FakeUpstream(latency_ms, tokens_per_second, prompt_cache_ttl_s)
        server = await aiohttp_server(fake.app())
        root = str(server.make_url("")).rstrip("/")
        return Upstream(fake, root + "/v1", root)

    return make


@pytest.fixture
async def upstream(make_upstream: MakeUpstream) -> Upstream:
    return await make_upstream()


@pytest.fixture
async def start_router(tmp_path: Path) -> AsyncIterator[StartRouter]:
    routers: list[Router] = []

    async def start(config: dict[str, Any] | str, *, name: str = "config.yaml",
                    insecure_no_auth: bool = False) -> Router:
        path = tmp_path / name
        if isinstance(config, dict) and "api_key" not in config and "users" not in config \
                and not insecure_no_auth:
            config = {"api_key": ROUTER_KEY, **config}
        write_config(path, config)
        cfg = load_config(path)
        state = RouterState(cfg, config_path=str(path), insecure_no_auth=insecure_no_auth)
        runner, port = await start_server(state, "127.0.0.1", 0)
        router = Router(state, runner, port, path)
        routers.append(router)
        return router

    yield start
    for r in routers:
        await r.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # Raw bytes, uncompressed unless a test asks with its own Accept-Encoding.
    async with aiohttp.ClientSession(auto_decompress=False,
                                     headers={"Accept-Encoding": "identity"}) as s:
        yield s
