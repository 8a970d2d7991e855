"""Key health: Retry-After parsing, cooldowns, the circuit breaker, bad keys.

The unit tests drive :class:`KeyHealth` directly with tiny settings; the end-to-end ones
show the circuit opening and recovering over real sockets.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from llm_router.config import CircuitSettings, key_label
from llm_router.providers.base import status_failure
from llm_router.state.health import KeyHealth, parse_retry_after
from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, Router, StartRouter
from .helpers import HELLO, openai_provider

FAST = CircuitSettings(window=4, window_s=60, min_requests=2, failure_rate=0.5, open_s=0.2,
                       cooldown_base_s=0.1, cooldown_max_s=0.5)


# ---------------------------------------------------------------- Retry-After


def test_retry_after_as_seconds() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None


def test_retry_after_as_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after-ms": "1500", "Retry-After": "40"}, 1.5),  # the finer one wins
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "-5"}, 0.0),
    ({"retry-after-ms": "soon", "Retry-After": "7"}, 7.0),  # unreadable: the other one
    ({"retry-after-ms": "inf", "Retry-After": "7"}, 7.0),
    ({"Retry-After": "7"}, 7.0),
    ({}, None),
], ids=["both", "ms-only", "negative-ms", "bad-ms", "infinite-ms", "seconds-only", "neither"])
def test_retry_hint_prefers_retry_after_ms(headers: dict[str, str],
                                           seconds: float | None) -> None:
    failure = status_failure("p", 429, CIMultiDict(headers), b"")
    assert parse_retry_after(failure.retry_after) == seconds


# ---------------------------------------------------------------- cooldowns


class Clock:
    """A monotonic clock the test moves: :class:`KeyHealth` reads it instead of the
    system's, so nothing here sleeps and nothing depends on the machine's speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_429_cooldown_uses_retry_after_then_recovers(clock: Clock) -> None:
    h = KeyHealth(clock)
    h.record_failure("p", "k", FAST, retry_after=0.05, rate_limited=True)
    assert h.available_at("p", "k", clock()) == clock() + 0.05
    assert h.label("p", "k") == "cooldown"
    clock.advance(0.049)
    assert h.label("p", "k") == "cooldown"  # not a moment early
    clock.advance(0.001)
    assert h.available_at("p", "k", clock()) == 0.0
    assert h.label("p", "k") == "ok"


def test_429_without_timing_escalates_and_is_capped(clock: Clock) -> None:
    h = KeyHealth(clock)
    settings = CircuitSettings(min_requests=100, cooldown_base_s=0.1, cooldown_max_s=0.5)
    waits = []
    for _ in range(4):
        h.record_failure("p", "k", settings, rate_limited=True)
        waits.append(h.state("p", "k").cooldown_until - clock())
        clock.advance(waits[-1])  # the cooldown elapses
    assert [round(w, 9) for w in waits] == [0.1, 0.3, 0.5, 0.5]
    h.record_success("p", "k", settings)
    h.record_failure("p", "k", settings, rate_limited=True)
    assert round(h.state("p", "k").cooldown_until - clock(), 9) == 0.1  # reset by success


def test_a_5xx_is_counted_but_starts_no_cooldown(clock: Clock) -> None:
    h = KeyHealth(clock)
    h.record_failure("p", "k", CircuitSettings(min_requests=5))
    assert h.available_at("p", "k", clock()) == 0.0
    assert h.state("p", "k").outcomes[-1][1] is False


# ---------------------------------------------------------------- circuit breaker


def test_circuit_opens_at_the_failure_share_then_admits_exactly_one_probe(
        clock: Clock) -> None:
    h = KeyHealth(clock)
    h.record_success("p", "k", FAST)  # never failed: nothing tracked yet
    h.record_failure("p", "k", FAST)
    h.record_success("p", "k", FAST)
    assert h.label("p", "k") == "ok"  # 1 of 2 failed... and min_requests is 2:
    h.record_failure("p", "k", FAST)  # 2 of 3 ≥ 50 %
    assert h.label("p", "k") == "open"
    assert h.available_at("p", "k", clock()) == clock() + FAST.open_s
    clock.advance(FAST.open_s)
    assert h.available_at("p", "k", clock()) == 0.0
    assert h.label("p", "k") == "half_open"
    assert h.begin("p", "k") is True  # the probe
    assert h.available_at("p", "k", clock()) > clock()  # nobody else meanwhile
    assert h.begin("p", "k") is False
    h.record_success("p", "k", FAST)
    assert h.label("p", "k") == "ok"
    assert not h.state("p", "k").outcomes  # window cleared on close


def _opened_then_half_open(h: KeyHealth, clock: Clock) -> None:
    for _ in range(2):
        h.record_failure("p", "k", FAST)
    assert h.label("p", "k") == "open"
    clock.advance(FAST.open_s)
    h.available_at("p", "k", clock())  # a pick's read moves it to half-open


def test_failed_probe_reopens_the_circuit(clock: Clock) -> None:
    h = KeyHealth(clock)
    _opened_then_half_open(h, clock)
    assert h.begin("p", "k")
    h.record_failure("p", "k", FAST)
    assert h.label("p", "k") == "open"
    assert h.available_at("p", "k", clock()) == clock() + FAST.open_s  # a full open_s again


def test_probe_without_verdict_is_released(clock: Clock) -> None:
    h = KeyHealth(clock)
    _opened_then_half_open(h, clock)
    assert h.begin("p", "k")
    h.release("p", "k")  # e.g. the client went away mid-probe
    assert h.available_at("p", "k", clock()) == 0.0
    assert h.begin("p", "k")


def test_failures_outside_the_window_are_forgotten(clock: Clock) -> None:
    h = KeyHealth(clock)
    settings = CircuitSettings(window=4, window_s=0.05, min_requests=2, failure_rate=0.5)
    h.record_failure("p", "k", settings)
    clock.advance(0.06)
    h.record_failure("p", "k", settings)
    assert h.label("p", "k") == "ok"  # the first one aged out: 1 < min_requests
    for _ in range(4):
        h.record_success("p", "k", settings)
    h.record_failure("p", "k", settings)
    assert h.label("p", "k") == "ok"  # last 4: 1 failure, 25 %


def test_bad_key_stays_out_until_the_config_changes(clock: Clock) -> None:
    h = KeyHealth(clock)
    h.mark_bad("p", "k", 401)
    assert h.available_at("p", "k", clock()) == float("inf")
    assert h.label("p", "k") == "bad"
    clock.advance(3600)
    assert h.label("p", "k") == "bad"  # time alone does not bring it back
    h.generation += 1  # what RouterState.swap_config does
    assert h.available_at("p", "k", clock()) == 0.0


# ---------------------------------------------------------------- end to end


async def _key_states(http: aiohttp.ClientSession, router: Router) -> dict[str, str]:
    async with http.get(router.url + "/metrics") as resp:
        text = await resp.text()
    return {s.labels["provider"]: s.labels["state"]
            for family in text_string_to_metric_families(text)
            if family.name == "llm_router_key_state" for s in family.samples}


async def _served_by(router: Router, n: int = 1) -> list[str]:
    client = router.openai()
    raws = await asyncio.gather(*(client.chat.completions.with_raw_response.create(
        model="g", messages=HELLO) for _ in range(n)))  # type: ignore[arg-type]
    return [r.headers["X-Router-Provider"] for r in raws]


def _circuit_config(a: Any, b: Any) -> dict[str, Any]:
    return {
        "providers": [openai_provider("a", a), openai_provider("b", b)],
        "groups": [{"name": "g", "strategy": "priority",
                    "models": [{"provider": "a", "name": "m"}, {"provider": "b", "name": "m"}]}],
        # Open far longer than any test step can take on a loaded machine: the tests end
        # the open period themselves (_open_period_over), so slowness cannot end it early.
        "circuit": {"window": 4, "min_requests": 2, "failure_rate": 0.5, "open_s": 600},
    }


def _open_period_over(router: Router, provider: str) -> None:
    """As if the circuit's ``open_s`` had passed for ``provider``'s key (the unit tests
    above move a clock; here the router's own clock runs, so its deadline moves)."""
    st = router.state.health.state(provider, key_label(f"sk-{provider}"))
    assert st.opened_until > time.monotonic()  # it was open, and would have stayed so
    st.opened_until = time.monotonic()


async def test_circuit_opens_probes_once_and_closes(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_circuit_config(a, b))
    a.fake.add_fault(Fault(status=500, times=2))
    assert await _served_by(router) == ["b"]
    assert await _served_by(router) == ["b"]
    assert (await _key_states(http, router))["a"] == "open"
    assert await _served_by(router, 3) == ["b"] * 3  # a is not even tried while open
    assert len(a.fake.requests) == 2
    _open_period_over(router, "a")
    assert (await _key_states(http, router))["a"] == "half_open"
    a.fake.latency_ms = 200  # the probe takes a while: concurrent requests must not join it
    served = await _served_by(router, 4)
    assert sorted(served) == ["a", "b", "b", "b"]
    assert len(a.fake.requests) == 3
    assert (await _key_states(http, router))["a"] == "ok"
    a.fake.latency_ms = 0
    assert await _served_by(router, 2) == ["a", "a"]  # closed: priority again


async def test_failed_probe_keeps_the_circuit_open(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_circuit_config(a, b))
    a.fake.add_fault(Fault(status=502, times=3))
    await _served_by(router)
    await _served_by(router)
    _open_period_over(router, "a")
    assert await _served_by(router) == ["b"]  # the probe went to a and failed over
    assert len(a.fake.requests) == 3
    assert (await _key_states(http, router))["a"] == "open"
    assert await _served_by(router) == ["b"]
    assert len(a.fake.requests) == 3
    label = key_label("sk-a")
    assert router.state.health.label("a", label) == "open"
