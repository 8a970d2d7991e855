"""``X-Router-Cost-USD`` is the same figure as /v1/usage (issue 33): the headers of many
answers, parsed and summed, equal the user's total to the last bit, which 8 fixed
decimals did not (each answer lost up to 5e-9 USD)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from .conftest import StartRouter
from .test_teams import BOB, team

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
