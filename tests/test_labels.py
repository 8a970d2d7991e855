"""Metric labels carry only names from the config, whatever model names clients send."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .conftest import StartRouter, Upstream
from .helpers import (
    AUTH,
    HELLO,
    RELOAD_OK,
    ROUTER_KEY,
    eventually,
    metric_samples,
    metrics_page,
    openai_provider,
    save_by_rename,
    total,
)


def _config(up: Upstream) -> dict[str, Any]:
    return {
        "providers": [openai_provider("p1", up)],
        "groups": [{"name": "g", "models": [{"provider": "p1", "name": "m"}]}],
    }


async def _send(http: aiohttp.ClientSession, url: str, models: list[str],
                stream: bool = False) -> None:
    async def one(model: str) -> None:
        async with http.post(url + "/v1/chat/completions", headers=AUTH,
                             json={"model": model, "messages": HELLO, "stream": stream}) as r:
            assert r.status == 200, await r.text()
            await r.read()

    for at in range(0, len(models), 50):
        await asyncio.gather(*(one(m) for m in models[at:at + 50]))


async def test_unique_model_names_do_not_grow_the_series(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(_config(upstream))
    await _send(http, router.url, ["g", "p1/m", "p1/first-unknown"])
    await _send(http, router.url, ["p1/first-unknown-stream"], stream=True)
    text, before = await metrics_page(router.url)
    await _send(http, router.url, [f"p1/unique-{i}" for i in range(1000)])
    await _send(http, router.url, [f"p1/unique-stream-{i}" for i in range(20)], stream=True)
    text, after = await metrics_page(router.url)
    assert sorted(after) == sorted(before)  # the very same series, only their values grew
    assert "unique-" not in text and "first-unknown" not in text
    other = total(after, "llm_router_requests_total", group="p1/other", model="other")
    assert other == 1022  # every unknown name, in one series (per status)
    # Names the config gives keep their own series.
    assert any("group=p1/m," in k and "model=m," in k for k in after)
    assert any("group=g," in k for k in after)


async def test_a_name_the_reloaded_config_drops_is_labelled_other_from_then_on(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    config = {**_config(upstream), "pricing": {"priced": {"input": 1.0, "output": 2.0}}}
    router = await start_router(config)
    await _send(http, router.url, ["p1/priced"] * 3)
    before = await metric_samples(router.url)
    own = 'llm_router_requests_total{group=p1/priced,model=priced,provider=p1,' \
          'route=/v1/chat/completions,status=200,user=default}'
    assert before.get(own) == 3, sorted(before)
    # "priced" is no longer named
    save_by_rename(router.config_path, {"api_key": ROUTER_KEY, **_config(upstream)})

    async def reloaded() -> bool:
        return (await metric_samples(router.url)).get(RELOAD_OK) == 1

    await eventually(reloaded)
    await _send(http, router.url, ["p1/priced"] * 2)
    after = await metric_samples(router.url)
    assert after[own] == 3  # the old series no longer grows
    other = own.replace("group=p1/priced", "group=p1/other").replace("model=priced",
                                                                     "model=other")
    assert after[other] == 2
