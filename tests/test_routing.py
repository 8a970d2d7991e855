"""Selection: inverse weight over per-(provider, key, model) token counters (README, "How
selection works")."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from .conftest import MakeUpstream, StartRouter
from .helpers import HELLO, openai_provider


async def _two_providers(start_router: StartRouter, make_upstream: MakeUpstream,
                         latency_ms: float = 0.0) -> tuple[Any, Any, Any]:
    a = await make_upstream(latency_ms=latency_ms)
    b = await make_upstream(latency_ms=latency_ms)
    router = await start_router({
        "providers": [openai_provider("a", a, ["sk-a1", "sk-a2"]),
                      openai_provider("b", b, ["sk-b1"])],
        "groups": [{"name": "g", "models": [{"provider": "a", "name": "m-a", "weight": 1},
                                            {"provider": "b", "name": "m-b", "weight": 2}]}],
    })
    return router, a, b


async def test_token_shares_converge_to_inverse_weights(start_router: StartRouter,
                                                        make_upstream: MakeUpstream) -> None:
    router, a, b = await _two_providers(start_router, make_upstream)
    client = router.openai()
    for n in range(120):
        # 120 conversations: turns of one would stay on its key (prompt-cache affinity,
        # tests/test_affinity_e2e.py), within the group's slack of these shares.
        await client.chat.completions.create(  # type: ignore[call-overload]
            model="g", messages=[{"role": "user", "content": f"hello {n:03}"}])
    tokens = router.state.counters.tokens
    a1, a2 = tokens[("a", _label("sk-a1"), "m-a")], tokens[("a", _label("sk-a2"), "m-a")]
    b1 = tokens[("b", _label("sk-b1"), "m-b")]
    # Each weight-1 key settles at about twice the tokens of the weight-2 key.
    per_request = (a1 + a2 + b1) / 120
    assert abs(a1 - a2) <= 2 * per_request
    assert abs(a1 - 2 * b1) <= 3 * per_request
    per_key = Counter(r.api_key for r in a.fake.requests + b.fake.requests)
    assert abs(per_key["sk-a1"] - 48) <= 3 and abs(per_key["sk-a2"] - 48) <= 3
    assert abs(per_key["sk-b1"] - 24) <= 3


async def test_concurrent_burst_spreads_by_weight(start_router: StartRouter,
                                                  make_upstream: MakeUpstream) -> None:
    router, a, b = await _two_providers(start_router, make_upstream, latency_ms=200)
    client = router.openai()
    await asyncio.gather(*(client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
                           for _ in range(60)))
    per_key = Counter(r.api_key for r in a.fake.requests + b.fake.requests)
    # Without in-flight estimates all 60 would pile onto one key (counters all zero).
    assert set(per_key) == {"sk-a1", "sk-a2", "sk-b1"}
    assert 18 <= per_key["sk-a1"] <= 30 and 18 <= per_key["sk-a2"] <= 30
    assert 6 <= per_key["sk-b1"] <= 18
    assert router.state.counters.inflight == {}


async def test_weight_zero_is_always_preferred(start_router: StartRouter,
                                               make_upstream: MakeUpstream) -> None:
    a = await make_upstream()
    b = await make_upstream()
    router = await start_router({
        "providers": [openai_provider("a", a), openai_provider("b", b)],
        "groups": [{"name": "g", "models": [{"provider": "a", "name": "m", "weight": 0},
                                            {"provider": "b", "name": "m", "weight": 1}]}],
    })
    client = router.openai()
    for _ in range(10):
        await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert len(a.fake.requests) == 10 and b.fake.requests == []


async def test_key_restricted_to_models_is_skipped_for_others(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    a = await make_upstream()
    router = await start_router({
        "providers": [openai_provider("a", a, ["sk-any", {"key": "sk-mini", "name": "mini",
                                                         "models": ["small"]}])],
        "groups": [{"name": "big", "models": [{"provider": "a", "name": "large"}]}],
    })
    client = router.openai()
    for _ in range(6):
        await client.chat.completions.create(model="big", messages=HELLO)  # type: ignore[arg-type]
    assert {r.api_key for r in a.fake.requests} == {"sk-any"}


def _label(secret: str) -> str:
    from llm_router.config import key_label
    return key_label(secret)
