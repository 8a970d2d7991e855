"""Budgets and tpm hold against bursts, and a budget cannot be bypassed through a model
without a price (issue 12). Real traffic: aiohttp/openai SDK → router → FakeUpstream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from llm_router.cli import main as cli_main

from .conftest import StartRouter, Upstream
from .helpers import HELLO, write_config
from .teams_config import ALICE, BOB, BOB_CI, chat, team

PRICE = {"input": 1000.0, "output": 1000.0}  # $0.001 a token: a few tokens are visible
BURST = 50


async def _burst(router: Any, key: str, n: int = BURST, model: str = "g", *,
                 content: str = "hello there", chunked: bool = False
                 ) -> list[tuple[int, float, int, str]]:
    """``n`` concurrent chats: (status, X-Router-Cost-USD, tokens, error code) each."""
    raw = orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}],
                        "max_tokens": 7})

    async def body() -> Any:  # an async generator: aiohttp sends it chunked
        yield raw

    async def one(s: aiohttp.ClientSession) -> tuple[int, float, int, str]:
        async with s.post(router.url + "/v1/chat/completions",
                          data=body() if chunked else raw,
                          headers={"Authorization": f"Bearer {key}",
                                   "Content-Type": "application/json"}) as resp:
            doc = await resp.json()
            if resp.status != 200:
                return resp.status, 0.0, 0, doc["error"]["code"]
            return (200, float(resp.headers["X-Router-Cost-USD"]),
                    doc["usage"]["total_tokens"], "")

    async with aiohttp.ClientSession() as s:
        return await asyncio.gather(*(one(s) for _ in range(n)))


async def test_concurrent_burst_cannot_outrun_a_budget(start_router: StartRouter,
                                                       make_upstream: Any) -> None:
    slow = await make_upstream(latency_ms=300)  # every request is in flight at once
    one_request = 13 * 0.001  # 6 prompt + 7 completion tokens at $1,000 per 1M
    budget = 3 * one_request
    router = await start_router(team(slow, bob={"budget": {"usd": budget, "period": "total"}},
                                     pricing={"real-model": PRICE}))
    first = await _burst(router, BOB)
    served = [r for r in first if r[0] == 200]
    assert served, "the budget allows some requests"
    assert {r[3] for r in first if r[0] != 200} == {"budget_exhausted"}
    assert {r[0] for r in first} <= {200, 402}
    # Keep bursting until nothing is served: what was spent is what clients were charged,
    # and it passes the budget by at most one request.
    spent = sum(r[1] for r in served)
    while True:
        wave = await _burst(router, BOB_CI, 10)  # the user's budget covers all its keys
        charged = [r[1] for r in wave if r[0] == 200]
        if not charged:
            break
        spent += sum(charged)
    assert budget <= spent <= budget + one_request + 1e-9
    report = router.state.ledger.usage(_caller(router, BOB))["user"]["budget"]
    assert report["spent_usd"] == pytest.approx(spent, rel=1e-9)
    assert report["in_flight_usd"] == 0.0  # every reservation was settled


async def test_chunked_bodies_are_reserved_at_their_real_size(
        start_router: StartRouter, make_upstream: Any) -> None:
    # A long prompt sent without Content-Length: its reservation must still count it.
    slow = await make_upstream(latency_ms=300)
    prompt = "word " * 800  # the fake upstream counts about 1,000 prompt tokens
    router = await start_router(team(slow, bob={"budget": {"usd": 3.0, "period": "total"}},
                                     pricing={"real-model": PRICE}))
    results = await _burst(router, BOB, content=prompt, chunked=True)
    charged = [r[1] for r in results if r[0] == 200]
    assert charged and {r[3] for r in results if r[0] != 200} == {"budget_exhausted"}
    assert sum(charged) <= 3.0 + max(charged)


async def test_concurrent_burst_cannot_outrun_tpm(start_router: StartRouter,
                                                  make_upstream: Any) -> None:
    slow = await make_upstream(latency_ms=300)
    router = await start_router(team(slow, bob={"limits": {"tpm": 80}}))
    results = await _burst(router, BOB)
    tokens = [r[2] for r in results if r[0] == 200]
    assert tokens and {r[3] for r in results if r[0] != 200} == {"rate_limit_exceeded"}
    # Estimates in flight count toward the minute: at most one request over the limit.
    assert sum(tokens) <= 80 + max(tokens)


async def test_budgeted_caller_cannot_reach_an_unpriced_model(
        start_router: StartRouter, upstream: Upstream) -> None:
    cfg = team(upstream, bob={"budget": {"usd": 5.0, "period": "monthly"}},
               pricing={"real-model": PRICE},
               groups=[{"name": "g", "models": [{"provider": "up", "name": "real-model"}]},
                       {"name": "h", "models": [{"provider": "up", "name": "other-model"}]},
                       {"name": "mixed", "models": [{"provider": "up", "name": "real-model"},
                                                    {"provider": "up", "name": "free-model"}]}])
    router = await start_router(cfg)
    for model in ("h", "up/gpt-4o-mini-2024-07-18"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            await chat(router, BOB, model)
        assert info.value.code == "model_not_priced"
        assert model in info.value.message
    assert len(upstream.fake.requests) == 0  # refused before anything was sent
    # A group with a priced member serves a budgeted caller from that member only.
    for _ in range(4):
        raw = await router.openai(BOB).chat.completions.with_raw_response.create(
            model="mixed", messages=HELLO)  # type: ignore[arg-type]
        assert raw.headers["X-Router-Model"] == "real-model"
        assert float(raw.headers["X-Router-Cost-USD"]) > 0
    # Callers without a budget are not charged, so they may use anything.
    assert (await chat(router, ALICE, "h")).choices


async def test_pricing_default_charges_models_the_table_does_not_name(
        start_router: StartRouter, upstream: Upstream) -> None:
    cfg = team(upstream, bob={"budget": {"usd": 0.02, "period": "daily"}},
               pricing={"default": PRICE})
    router = await start_router(cfg)
    raw = await router.openai(BOB).chat.completions.with_raw_response.create(
        model="up/gpt-4o-mini-2024-07-18", messages=HELLO, max_tokens=7)  # type: ignore[arg-type]
    assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(0.013)
    await chat(router, BOB, "h", max_tokens=7)
    with pytest.raises(openai.APIStatusError) as info:
        await chat(router, BOB, "h")
    assert info.value.status_code == 402


def test_check_warns_when_a_budgeted_user_can_reach_an_unpriced_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upstream: Any = SimpleNamespace(base_url="http://127.0.0.1:9/v1")  # never called
    path = tmp_path / "config.yaml"
    write_config(path, team(upstream, bob={"budget": {"usd": 5.0}, "models": ["g", "h"]},
                            pricing={"real-model": PRICE}))
    assert cli_main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "'bob'" in err and "'up/other-model'" in err and "model_not_priced" in err
    assert "real-model" not in err and "alice" not in err  # priced; not budgeted
    write_config(path, team(upstream, bob={"budget": {"usd": 5.0}},
                            pricing={"real-model": PRICE, "default": PRICE}))
    assert cli_main(["check", str(path)]) == 0
    assert capsys.readouterr().err == ""


def _caller(router: Any, key: str) -> Any:
    from llm_router.ledger.accounting import extract_key

    return router.state.keys.authenticate(extract_key(f"Bearer {key}", None))
