"""Plain helpers the test files share: constants, config writers, polling, /metrics.

Fixtures live in conftest.py; this module holds no fixtures, so any test file can import
from it by name.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
import yaml

if TYPE_CHECKING:
    from .conftest import Router, Upstream

ROUTER_KEY = "sk-test-router"
AUTH = {"Authorization": f"Bearer {ROUTER_KEY}"}
HELLO = [{"role": "user", "content": "hello there"}]

RELOAD_OK = "llm_router_config_reloads_total{result=success}"
RELOAD_FAILED = "llm_router_config_reloads_total{result=failure}"


def openai_provider(name: str, up: Upstream, keys: list[Any] | None = None,
                    **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": up.base_url,
            "api_keys": keys if keys is not None else [f"sk-{name}"], **extra}


def _yaml_text(config: dict[str, Any] | str) -> str:
    return config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)


def write_config(path: Path, config: dict[str, Any] | str) -> None:
    if isinstance(config, dict) and path.suffix == ".json":
        path.write_bytes(orjson.dumps(config))
    else:
        path.write_text(_yaml_text(config))


def save_by_rename(path: Path, config: dict[str, Any] | str) -> None:
    """How vim, VS Code and most tools save: write a temp file, rename it over the old."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(_yaml_text(config))
    os.replace(tmp, path)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Poll ``check`` (a coroutine function, or a plain one for state in this process)
    until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _holds(check):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


async def _holds(check: Callable[[], Awaitable[bool] | bool]) -> bool:
    result = check()
    return await result if inspect.isawaitable(result) else result


async def chat_served_by(http: aiohttp.ClientSession, router: Router, provider: str,
                         attempts: int, model: str = "g") -> dict[str, Any]:
    """POST a small chat to ``model``; assert ``provider`` answered it 200 on attempt
    ``attempts`` (the failover tests' question). Returns the answer."""
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": model, "messages": HELLO}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Router-Provider"] == provider
        assert resp.headers["X-Router-Attempts"] == str(attempts)
        answer: dict[str, Any] = await resp.json()
    assert answer["choices"]
    return answer


async def metrics_page(url: str) -> tuple[str, dict[str, float]]:
    """GET ``url``/metrics: the exposition text, and every sample keyed ``name{k=v,...}``
    (labels sorted, values unquoted; ``name{}`` when it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return text, samples


async def metric_samples(url: str) -> dict[str, float]:
    """The samples of :func:`metrics_page`, for a test that does not read the text."""
    return (await metrics_page(url))[1]


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include every ``labels`` pair
    exactly (``model="m"`` does not match ``model=m2``)."""
    want = [f",{k}={v}," for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.startswith(name + "{") and all(w in f",{k[len(name) + 1:-1]}," for w in want))


def key_tokens(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.startswith("llm_router_key_tokens{")}
