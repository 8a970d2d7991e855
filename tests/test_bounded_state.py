"""Per-model state stays bounded whatever model names clients send (issue 23, item 3).

A caller may address any ``provider/<name>`` directly. Selection counters, usage
reports and the usage snapshot keep names the config gives; every other name is summed
under ``other`` per provider (docs/teams.md, "Unknown model names"). Real traffic:
aiohttp → router → FakeUpstream, then the admin reports and the snapshot on disk.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.config import sha256_hex

from .conftest import StartRouter, Upstream
from .helpers import HELLO, openai_provider

ADMIN = "sk-admin-bounded"
UNIQUE_NAMES = 5000
ONE_MB = 1 << 20


def _config(up: Upstream, snapshot: Path) -> dict[str, Any]:
    return {
        "providers": [openai_provider("p1", up)],
        "groups": [{"name": "g", "models": [{"provider": "p1", "name": "m"}]}],
        "users": [{"name": "admin", "role": "admin",
                   "keys": [{"sha256": sha256_hex(ADMIN), "name": "ops"}]}],
        "pricing": {"m": {"input": 1.0, "output": 2.0}},
        "usage": {"snapshot_path": str(snapshot), "snapshot_interval_s": 3600},
    }


async def _send(http: aiohttp.ClientSession, url: str, models: list[str],
                stream: bool = False) -> None:
    async def one(model: str) -> None:
        async with http.post(url + "/v1/chat/completions",
                             headers={"Authorization": f"Bearer {ADMIN}"},
                             json={"model": model, "messages": HELLO, "stream": stream}) as r:
            assert r.status == 200, await r.text()
            await r.read()

    for at in range(0, len(models), 100):
        await asyncio.gather(*(one(m) for m in models[at:at + 100]))


async def _get(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_unique_model_names_keep_reports_and_snapshot_small(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    snapshot = tmp_path / "usage.json"
    router = await start_router(_config(upstream, snapshot))
    await _send(http, router.url, ["g", "p1/m"])
    names = [f"p1/{secrets.token_hex(12)}" for _ in range(UNIQUE_NAMES)]
    await _send(http, router.url, names[:-20])
    await _send(http, router.url, names[-20:], stream=True)

    usage = await _get(http, router.url + "/admin/usage")
    status = await _get(http, router.url + "/admin/status")
    await router.close()  # writes the final snapshot
    on_disk = snapshot.read_bytes()
    total = len(usage) + len(status) + len(on_disk)
    assert total < ONE_MB, (len(usage), len(status), len(on_disk))
    for doc in (usage, status, on_disk):
        assert names[0].encode() not in doc and names[-1].encode() not in doc

    # Nothing is lost by folding: the unknown names' traffic is one "other" entry.
    report = orjson.loads(usage)
    admin = next(u for u in report["users"] if u["name"] == "admin")
    models = admin["usage"]["total"]["models"]
    assert models["p1/other"]["requests"] == UNIQUE_NAMES
    assert models["p1/m"]["requests"] == 2  # named by the config: its own entry
    assert admin["usage"]["total"]["requests"] == UNIQUE_NAMES + 2
    tokens = orjson.loads(status)["providers"][0]["keys"][0]["tokens"]
    assert set(tokens) == {"m", "other"}
    # Unpriced, but said once for all of them, not once per invented name.
    unpriced = [r for r in caplog.records if r.levelno == logging.WARNING
                and "pricing" in r.getMessage()]
    assert len(unpriced) == 1 and "counted as 'other'" in unpriced[0].getMessage()
