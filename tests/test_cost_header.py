"""``X-Router-Cost-USD`` is the same figure as /v1/usage (issue 33): the headers of many
answers, parsed and summed, equal the user's total to the last bit, which 8 fixed
decimals did not (each answer lost up to 5e-9 USD)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from llm_router.gateway import answer

from .conftest import StartRouter
from .helpers import RELOAD_OK, eventually, metric_samples, save_by_rename
from .teams_config import BOB, team

# Prices whose per-answer costs need more than 8 decimals: 7 tokens cost 8.61e-07 USD.
PRICE = {"input": 0.123, "output": 0.4567}


async def test_cost_headers_sum_to_the_usage_total_exactly(start_router: StartRouter,
                                                           make_upstream: Any) -> None:
    up = await make_upstream()
    router = await start_router(team(up, pricing={"real-model": PRICE}))
    auth = {"Authorization": f"Bearer {BOB}", "Content-Type": "application/json"}
    headers: list[str] = []
    async with aiohttp.ClientSession() as s:
        for n in range(40):  # one at a time: the ledger adds them in this order
            body = {"model": "g", "max_tokens": 1 + n % 9,
                    "messages": [{"role": "user", "content": "word " * (1 + n)}]}
            async with s.post(router.url + "/v1/chat/completions", data=orjson.dumps(body),
                              headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                headers.append(resp.headers["X-Router-Cost-USD"])
        async with s.get(router.url + "/v1/usage", headers=auth) as resp:
            total = (await resp.json())["user"]["usage"]["total"]
    assert total["requests"] == len(headers)
    assert all("e" not in h and float(h) > 0 for h in headers)  # plain decimal notation
    spent = 0.0
    for h in headers:
        spent += float(h)
    assert spent == total["cost_usd"]


async def test_a_price_changed_by_a_reload_counts_from_the_next_answer(
        start_router: StartRouter, make_upstream: Any) -> None:
    # The answer path resolves a candidate's price and series once per config: a reload
    # must not leave the old price in the header, the usage or the cost metric.
    up = await make_upstream()
    router = await start_router(team(up, pricing={"real-model": PRICE}))
    auth = {"Authorization": f"Bearer {BOB}", "Content-Type": "application/json"}
    body = orjson.dumps({"model": "g", "max_tokens": 5,
                         "messages": [{"role": "user", "content": "word word"}]})
    costs: list[float] = []
    async with aiohttp.ClientSession() as s:
        for price in (PRICE, {"input": 1000.0, "output": 2000.0}):
            if price is not PRICE:
                save_by_rename(router.config_path, team(up, pricing={"real-model": price}))

                async def reloaded() -> bool:
                    return (await metric_samples(router.url))[RELOAD_OK] == 1

                await eventually(reloaded)
            async with s.post(router.url + "/v1/chat/completions", data=body,
                              headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                usage = (await resp.json())["usage"]
                costs.append(float(resp.headers["X-Router-Cost-USD"]))
            expected = (usage["prompt_tokens"] * price["input"]
                        + usage["completion_tokens"] * price["output"]) / 1_000_000
            assert costs[-1] == expected
        async with s.get(router.url + "/v1/usage", headers=auth) as resp:
            total = (await resp.json())["user"]["usage"]["total"]
        metrics = await metric_samples(router.url)
    assert total["cost_usd"] == costs[0] + costs[1]
    assert metrics["llm_router_cost_usd_total{model=real-model,provider=up,user=bob}"] \
        == costs[0] + costs[1]


def test_cost_texts_are_plain_decimals_and_their_memory_is_bounded() -> None:
    # The header's text is kept per cost: the same digits as made afresh, whatever
    # came before, and never more than _MAX_COST_TEXTS of them.
    answer._COST_TEXT.clear()
    costs = [0.0, 8.61e-07, 1e-4, 0.5, 5e-324, 1.5e16, 123.456]
    costs += [n * 1.37e-07 for n in range(1, 3 * answer._MAX_COST_TEXTS)]
    for usd in (*costs, *costs):
        text = answer._COST_TEXT.get(usd) or answer._cost_text(usd)
        assert "e" not in text and float(text) == usd
        assert text == (repr(usd) if "e" not in repr(usd) else f"{Decimal(repr(usd)):f}")
        assert len(answer._COST_TEXT) <= answer._MAX_COST_TEXTS
    assert answer._cost_text(5e-324) == "0." + "0" * 323 + "5"
