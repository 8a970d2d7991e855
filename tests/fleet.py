"""A fleet of routers sharing one redis-server: its config (users admin and alice, group
g on one fake upstream, state under prefix ``t``) and the calls the shared-state tests
make of each replica."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from llm_router.config import sha256_hex

from .conftest import Router, Upstream
from .helpers import HELLO, openai_provider
from .redis_server import RedisServer

ALICE = "sk-alice"
ADMIN = "sk-admin"


def fleet_config(up: Upstream, redis: RedisServer, *, alice: dict[str, Any] | None = None,
                 keys: list[Any] | None = None, timeout_ms: int = 500,
                 **top: Any) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up, keys)],
        # Affinity off: these tests send one identical prompt, which affinity would pin.
        "groups": [{"name": "g", "affinity": "off",
                    "models": [{"provider": "up", "name": "m"}]}],
        "users": [
            {"name": "admin", "role": "admin", "keys": [{"sha256": sha256_hex(ADMIN),
                                                         "name": "ops"}]},
            {"name": "alice", "keys": [{"sha256": sha256_hex(ALICE), "name": "laptop"}],
             **(alice or {})},
        ],
        "pricing": {"m": {"input": 1000.0, "output": 1000.0}},
        "state": {"redis_url": redis.url, "prefix": "t", "sync_interval_ms": 50,
                  "timeout_ms": timeout_ms},
        **top,
    }


async def post_chat(http: aiohttp.ClientSession, router: Router, key: str = ALICE,
                    **body: Any) -> tuple[int, dict[str, str], Any]:
    async with http.post(router.url + "/v1/chat/completions",
                         headers={"Authorization": f"Bearer {key}"},
                         json={"model": "g", "messages": HELLO, **body}) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


async def get_json(http: aiohttp.ClientSession, router: Router, path: str,
                   key: str = ALICE) -> tuple[int, Any]:
    async with http.get(router.url + path, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, orjson.loads(await resp.read())
