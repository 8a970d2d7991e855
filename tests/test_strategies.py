"""Group strategies and per-request preference headers, each shown by its choices.

Two or three fake upstreams behind one group ``g``; the tests read which provider and
key served each request from the ``X-Router-*`` response headers and the fakes' logs.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .helpers import AUTH, HELLO, openai_provider


def _config(*providers: dict[str, Any], strategy: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": list(providers),
        "groups": [{"name": "g", "strategy": strategy,
                    "models": [{"provider": p["name"], "name": f"m-{p['name']}"}
                               for p in providers]}],
        **extra,
    }


async def _served(router: Router, n: int = 1, **headers: str) -> list[str]:
    """Provider/key label that served each of ``n`` sequential requests."""
    client = router.openai()
    out = []
    for _ in range(n):
        raw = await client.chat.completions.with_raw_response.create(
            model="g", messages=HELLO, extra_headers=headers)  # type: ignore[arg-type]
        out.append(f"{raw.headers['X-Router-Provider']}/{raw.headers['X-Router-Key']}")
    return out


async def _three(make_upstream: MakeUpstream) -> tuple[Upstream, Upstream, Upstream]:
    return await make_upstream(), await make_upstream(), await make_upstream()


# ---------------------------------------------------------------- strategies


async def test_priority_uses_the_first_member_until_all_its_keys_are_unusable(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    a, b, _ = await _three(make_upstream)
    keys = [{"key": "sk-a1", "name": "a1"}, {"key": "sk-a2", "name": "a2"}]
    router = await start_router(_config(openai_provider("a", a, keys),
                                        openai_provider("b", b, [{"key": "sk-b", "name": "b"}]),
                                        strategy="priority"))
    assert {s.split("/")[0] for s in await _served(router, 6)} == {"a"}
    assert b.fake.requests == []
    # Exhaust-first: both of a's keys are tried before b is.
    a.fake.add_fault(Fault(status=429, key="sk-a1", retry_after="30"))
    a.fake.add_fault(Fault(status=429, key="sk-a2", retry_after="30"))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Attempts"] == "3"
    assert set(a.keys_seen()[-2:]) == {"sk-a1", "sk-a2"}
    assert await _served(router, 3) == ["b/b"] * 3


async def test_round_robin_takes_each_member_key_in_turn(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    a, b, _ = await _three(make_upstream)
    router = await start_router(_config(
        openai_provider("a", a, [{"key": "sk-a1", "name": "a1"}, {"key": "sk-a2", "name": "a2"}]),
        openai_provider("b", b, [{"key": "sk-b", "name": "b"}]),
        strategy="round-robin"))
    assert await _served(router, 6) == ["a/a1", "a/a2", "b/b"] * 2


async def test_latency_prefers_the_fastest_measured_candidate(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    slow, fast = await make_upstream(latency_ms=150), await make_upstream()
    router = await start_router(_config(openai_provider("slow", slow),
                                        openai_provider("fast", fast), strategy="latency"))
    served = [s.split("/")[0] for s in await _served(router, 8)]
    # Each candidate is measured once (unmeasured ones go first), then the fastest wins.
    assert served.count("slow") == 1
    assert served[2:] == ["fast"] * 6


async def test_price_prefers_the_cheapest_priced_model(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    a, b, c = await _three(make_upstream)
    router = await start_router(_config(
        openai_provider("a", a), openai_provider("b", b), openai_provider("c", c),
        strategy="price",
        pricing={"m-a": {"input": 2.5, "output": 10.0}, "m-b": {"input": 0.15, "output": 0.6}}))
    # c has no price: unknown never counts as cheapest.
    assert {s.split("/")[0] for s in await _served(router, 5)} == {"b"}
    b.fake.add_fault(Fault(status=500))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "a"  # the next cheapest, not the unpriced


# ---------------------------------------------------------------- preference headers


async def _ab(start_router: StartRouter, make_upstream: MakeUpstream,
              strategy: str = "priority", **extra: Any) -> tuple[Router, Upstream, Upstream]:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_config(openai_provider("a", a), openai_provider("b", b),
                                        strategy=strategy, **extra))
    return router, a, b


async def test_provider_only_restricts_and_never_falls_back_outside(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    router, a, b = await _ab(start_router, make_upstream)
    only = {"X-Router-Provider-Only": "b"}
    assert {s.split("/")[0] for s in await _served(router, 3, **only)} == {"b"}
    b.fake.add_fault(Fault(status=500))
    with pytest.raises(openai.APIStatusError) as exc:
        await _served(router, **only)
    assert exc.value.status_code == 502
    assert a.fake.requests == []


async def test_provider_ignore_skips_a_provider(start_router: StartRouter,
                                                make_upstream: MakeUpstream) -> None:
    router, a, _ = await _ab(start_router, make_upstream)
    served = await _served(router, 3, **{"X-Router-Provider-Ignore": "a"})
    assert {s.split("/")[0] for s in served} == {"b"}
    assert a.fake.requests == []


async def test_provider_order_goes_first_and_falls_back_in_order(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    router, a, b = await _ab(start_router, make_upstream)  # priority would pick a
    order = {"X-Router-Provider-Order": "b, a"}
    assert {s.split("/")[0] for s in await _served(router, 3, **order)} == {"b"}
    assert a.fake.requests == []
    b.fake.add_fault(Fault(status=503))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=HELLO, extra_headers=order)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "a" and raw.headers["X-Router-Attempts"] == "2"


async def test_allow_fallbacks_false_stops_after_one_attempt(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    router, a, b = await _ab(start_router, make_upstream)
    a.fake.add_fault(Fault(status=500))
    with pytest.raises(openai.APIStatusError) as exc:
        await _served(router, **{"X-Router-Allow-Fallbacks": "false"})
    assert exc.value.status_code == 502
    assert len(a.fake.requests) == 1 and b.fake.requests == []
    a.fake.add_fault(Fault(status=500))
    assert await _served(router) == [f"b/{_label('sk-b')}"]  # by default it falls back


@pytest.mark.parametrize(("sort", "winner"), [("price", "b"), ("latency", "a")])
async def test_sort_header_overrides_the_group_strategy(
        start_router: StartRouter, make_upstream: MakeUpstream, sort: str, winner: str) -> None:
    a, b = await make_upstream(), await make_upstream(latency_ms=100)
    router = await start_router(_config(
        openai_provider("a", a), openai_provider("b", b), strategy="round-robin",
        pricing={"m-a": {"input": 3.0, "output": 15.0}, "m-b": {"input": 0.1, "output": 0.4}}))
    served = [s.split("/")[0] for s in await _served(router, 6, **{"X-Router-Sort": sort})]
    # round-robin would alternate; price always picks b; latency measures each once.
    assert served[2:] == [winner] * 4


@pytest.mark.parametrize("header", ["X-Router-Provider-Only", "X-Router-Provider-Ignore",
                                    "X-Router-Provider-Order"])
async def test_unknown_provider_in_a_preference_is_a_400_naming_it(
        start_router: StartRouter, make_upstream: MakeUpstream, http: aiohttp.ClientSession,
        header: str) -> None:
    router, a, b = await _ab(start_router, make_upstream)
    async with http.post(router.url + "/v1/chat/completions",
                         headers={**AUTH, header: "b, opnai"},
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert "opnai" in err["message"] and header in err["message"]
    assert err["code"] == "unknown_provider"
    assert a.fake.requests == [] and b.fake.requests == []


async def test_preferences_that_exclude_every_member_are_a_400(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    router, a, b = await _ab(start_router, make_upstream)
    async with http.post(router.url + "/v1/chat/completions",
                         headers={**AUTH, "X-Router-Provider-Ignore": "a,b"},
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert err["code"] == "no_provider_allowed" and "'g'" in err["message"]
    assert a.fake.requests == [] and b.fake.requests == []


@pytest.mark.parametrize(("header", "value"), [("X-Router-Sort", "cheapest"),
                                               ("X-Router-Allow-Fallbacks", "maybe")])
async def test_invalid_preference_values_are_a_400(
        start_router: StartRouter, make_upstream: MakeUpstream, http: aiohttp.ClientSession,
        header: str, value: str) -> None:
    router, _, _ = await _ab(start_router, make_upstream)
    async with http.post(router.url + "/v1/chat/completions", headers={**AUTH, header: value},
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 400
        assert header in (await resp.json())["error"]["message"]


def _label(secret: str) -> str:
    from llm_router.config import key_label
    return key_label(secret)
