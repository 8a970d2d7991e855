"""Resilience end to end: failover, cooldowns, timeouts, broken streams, disconnects.

Real sockets throughout: the openai SDK or aiohttp → the router → FakeUpstream servers
told to fail with :class:`Fault`. Timing values are tiny (tenths of a second) so the
waits stay short; assertions are about *what* happened, never how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from llm_router.config import key_label
from llm_router.testing.upstream import FakeUpstream, Fault

from .conftest import MakeUpstream, Router, StartRouter, Upstream
from .helpers import AUTH, HELLO, chat_served_by, eventually, metric_samples, openai_provider


def _group(*providers: dict[str, Any], strategy: str = "priority",
           **extra: Any) -> dict[str, Any]:
    """One group ``g`` over the given providers (model ``m-<name>``), in that order."""
    return {
        "providers": list(providers),
        "groups": [{"name": "g", "strategy": strategy, **extra,
                    "models": [{"provider": p["name"], "name": f"m-{p['name']}"}
                               for p in providers]}],
    }


async def _chat(router: Router, **kw: Any) -> Any:
    """A chat completion through the SDK; returns the raw response (headers + parse())."""
    return await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=HELLO, **kw)  # type: ignore[arg-type]


def _events(raw: bytes) -> list[Any]:
    """SSE body → list of parsed data payloads ("[DONE]" kept as a string, comments as
    the string "keepalive")."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            out.append("keepalive")
            continue
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


async def _stream(http: aiohttp.ClientSession, router: Router, **body: Any
                  ) -> tuple[int, Any, list[Any]]:
    payload = {"model": "g", "messages": HELLO, "stream": True, **body}
    async with http.post(router.url + "/v1/chat/completions", json=payload,
                         headers={**AUTH, "Accept-Encoding": "identity"}) as resp:
        return resp.status, resp.headers, _events(await resp.read())


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records
            if r.name == "llm_router.access"]


# ---------------------------------------------------------------- what fails over


async def test_5xx_fails_over_to_the_next_member(
        start_router: StartRouter, make_upstream: MakeUpstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.access")
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=503))
    raw = await _chat(router)
    assert raw.parse().choices[0].message.content
    assert raw.headers["X-Router-Attempts"] == "2"
    assert raw.headers["X-Router-Provider"] == "b"
    assert len(a.fake.requests) == 1 and len(b.fake.requests) == 1
    samples = await metric_samples(router.url)
    assert samples["llm_router_fallbacks_total{group=g}"] == 1
    label = key_label("sk-a")
    assert samples[f"llm_router_upstream_errors_total{{key={label},provider=a,"
                   "reason=status_5xx}"] == 1
    (line,) = _access_lines(caplog)
    assert line["status"] == 200 and line["attempts"] == 2 and line["provider"] == "b"
    assert line["failures"] == [f"a/{label}:status_5xx"]


async def test_429_fails_over_to_another_key_of_the_same_provider(
        start_router: StartRouter, upstream: Upstream) -> None:
    keys = [{"key": "sk-1", "name": "k1"}, {"key": "sk-2", "name": "k2"}]
    # round-robin starts at the first key by label, so k1 is tried first.
    router = await start_router(_group(openai_provider("a", upstream, keys),
                                       strategy="round-robin"))
    upstream.fake.add_fault(Fault(status=429, key="sk-1", retry_after="30"))
    raw = await _chat(router)
    assert raw.parse().choices
    assert raw.headers["X-Router-Attempts"] == "2"
    assert raw.headers["X-Router-Key"] == "k2"
    assert upstream.keys_seen() == ["sk-1", "sk-2"]
    assert router.state.health.label("a", "k1") == "cooldown"


@pytest.mark.parametrize(("status", "error"), [(400, openai.BadRequestError),
                                               (404, openai.NotFoundError),
                                               (413, openai.APIStatusError),
                                               (422, openai.UnprocessableEntityError)])
async def test_upstream_client_errors_are_passed_on_not_retried(
        start_router: StartRouter, make_upstream: MakeUpstream, status: int,
        error: type[openai.APIStatusError]) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=status))
    with pytest.raises(error) as exc:
        await _chat(router)
    assert exc.value.status_code == status
    assert exc.value.response.headers["X-Router-Attempts"] == "1"
    assert len(a.fake.requests) == 1 and b.fake.requests == []
    # The client's mistake is not the key's fault: it stays healthy for everyone.
    assert router.state.health.label("a", key_label("sk-a")) == "ok"


@pytest.mark.parametrize("status", [408, 409], ids=["408-timeout", "409-conflict"])
async def test_upstream_408_409_fail_over_without_cooling_the_key(
        start_router: StartRouter, make_upstream: MakeUpstream, status: int) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router({
        **_group(openai_provider("a", a), openai_provider("b", b)),
        # Strict enough that one counted failure would open a's circuit.
        "circuit": {"min_requests": 1, "failure_rate": 0.5, "open_s": 30},
    })
    # A Retry-After too, so that treating the status as a rate limit would show.
    a.fake.add_fault(Fault(status=status, retry_after="30"))
    raw = await _chat(router)
    assert raw.parse().choices[0].message.content
    assert raw.headers["X-Router-Provider"] == "b"
    assert raw.headers["X-Router-Attempts"] == "2"
    assert len(a.fake.requests) == 1 and len(b.fake.requests) == 1
    # Not the key's fault: no cooldown, no circuit verdict; the next request lands on it.
    assert router.state.health.label("a", key_label("sk-a")) == "ok"
    later = await _chat(router)
    assert later.headers["X-Router-Provider"] == "a"
    assert later.headers["X-Router-Attempts"] == "1"


async def test_upstream_401_marks_the_key_bad_once_and_fails_over(
        start_router: StartRouter, make_upstream: MakeUpstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.health")
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=401, times=None, hang_s=0.1))
    # Concurrent requests all meet the 401 before any verdict: still logged once.
    raws = await asyncio.gather(*(_chat(router) for _ in range(3)))
    assert [r.headers["X-Router-Provider"] for r in raws] == ["b"] * 3
    assert {r.headers["X-Router-Attempts"] for r in raws} == {"2"}
    later = await _chat(router)
    assert later.headers["X-Router-Attempts"] == "1"  # the bad key is no longer tried
    assert len(a.fake.requests) == 3
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "sk-a" not in rejected[0].getMessage()
    label = key_label("sk-a")
    samples = await metric_samples(router.url)
    assert samples[f"llm_router_key_state{{key={label},provider=a,state=bad}}"] == 1
    # A config change (the secret was probably rotated) gives the key another chance.
    a.fake.clear_faults()
    router.state.swap_config(router.state.config)
    again = await _chat(router)
    assert again.headers["X-Router-Provider"] == "a"


async def test_max_attempts_bounds_the_failover(start_router: StartRouter,
                                                make_upstream: MakeUpstream) -> None:
    ups = [await make_upstream() for _ in range(4)]
    providers = [openai_provider(f"p{i}", up) for i, up in enumerate(ups)]
    for up in ups:
        up.fake.add_fault(Fault(status=500, times=None))
    router = await start_router({**_group(*providers), "groups": [
        {"name": "g", "max_attempts": 2,
         "models": [{"provider": p["name"], "name": "m"} for p in providers]},
        {"name": "default", "models": [{"provider": p["name"], "name": "m"}
                                       for p in providers]},
    ]})
    with pytest.raises(openai.APIStatusError) as exc:
        await _chat(router)
    assert exc.value.status_code == 502
    assert sum(len(up.fake.requests) for up in ups) == 2
    # Without max_attempts: the number of candidates, at most 3.
    with pytest.raises(openai.APIStatusError):
        await router.openai().chat.completions.create(model="default", messages=HELLO)  # type: ignore[arg-type]
    assert sum(len(up.fake.requests) for up in ups) == 2 + 3


# ---------------------------------------------------------------- cooldowns


async def _until_served_by(router: Router, provider: str, limit_s: float = 4.0
                           ) -> list[tuple[float, float, str]]:
    """Send requests until ``provider`` serves one; each as (sent, done, provider),
    in wall-clock seconds."""
    seen: list[tuple[float, float, str]] = []
    stop = time.time() + limit_s
    while time.time() < stop:
        sent = time.time()
        raw = await _chat(router)
        seen.append((sent, time.time(), raw.headers["X-Router-Provider"]))
        if seen[-1][2] == provider:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{provider} never served again: {seen}")


async def test_retry_after_seconds_keeps_the_key_out_until_it_elapses(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=429, retry_after="1"))
    before = time.time()
    first = await _chat(router)
    assert first.headers["X-Router-Provider"] == "b"
    seen = await _until_served_by(router, "a")
    # Everything answered before the cooldown could have ended came from b …
    assert all(p == "b" for _, done, p in seen if done < before + 1.0)
    assert len(seen) > 3
    # … and a was back once it had ended (its one request was the 429).
    assert seen[-1][1] >= before + 1.0
    assert len(a.fake.requests) == 2


async def test_retry_after_http_date_is_honoured(start_router: StartRouter,
                                                 make_upstream: MakeUpstream) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    until = int(time.time()) + 2  # HTTP dates have whole seconds
    a.fake.add_fault(Fault(status=429, retry_after=email.utils.formatdate(until, usegmt=True)))
    assert (await _chat(router)).headers["X-Router-Provider"] == "b"
    seen = await _until_served_by(router, "a")
    assert all(p == "b" for _, done, p in seen if done < until)
    assert seen[-1][1] >= until
    assert len(a.fake.requests) == 2


async def test_429_without_timing_gets_an_escalating_default_cooldown(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router({
        **_group(openai_provider("a", a), openai_provider("b", b)),
        # Long enough that a loaded CI box sends the next request inside the cooldown.
        "circuit": {"cooldown_base_s": 0.4, "cooldown_max_s": 2.0, "min_requests": 50},
    })
    label = key_label("sk-a")
    health = router.state.health.state("a", label)
    a.fake.add_fault(Fault(status=429, times=3))
    cooldowns = []
    def a_usable() -> bool:
        return router.state.health.label("a", label) != "cooldown"

    for i in range(3):
        await eventually(a_usable)
        raw = await _chat(router)  # meets a's 429, fails over to b
        assert raw.headers["X-Router-Attempts"] == "2"
        cooldowns.append(health.cooldown_until - time.monotonic())
        if i:
            skipped = await _chat(router)  # a is cooling: not even tried
            assert skipped.headers["X-Router-Attempts"] == "1"
            assert skipped.headers["X-Router-Provider"] == "b"
    assert len(a.fake.requests) == 3
    # 0.4 s, then 1.2 s, then 3.6 s capped at 2 s: never none, never unbounded.
    assert 0 < cooldowns[0] <= 0.4
    assert 0.4 < cooldowns[1] <= 1.2
    assert 1.2 < cooldowns[2] <= 2.0
    # A success resets the escalation.
    await eventually(a_usable)
    assert (await _chat(router)).headers["X-Router-Provider"] == "a"
    assert health.cooldown_streak == 0


async def test_all_candidates_cooling_is_503_with_the_soonest_retry_after(
        start_router: StartRouter, make_upstream: MakeUpstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.access")
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=429, retry_after="20"))
    b.fake.add_fault(Fault(status=429, retry_after="2"))
    with pytest.raises(openai.RateLimitError):  # the request that met both 429s
        await _chat(router)
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] in ("1", "2")  # b's, not a's 20 s
        doc = await resp.json()
    assert doc["error"]["code"] == "no_candidate_available"
    assert len(a.fake.requests) == 1 and len(b.fake.requests) == 1  # nothing hammered
    samples = await metric_samples(router.url)
    assert samples[f"llm_router_key_state{{key={key_label('sk-a')},provider=a,"
                   "state=cooldown}"] == 1
    met_429s, cooling = _access_lines(caplog)
    assert met_429s["status"] == 429 and met_429s["key_state"] == "cooldown"
    assert [f.split(":")[1] for f in met_429s["failures"]] == ["status_429"] * 2
    assert cooling["status"] == 503 and cooling["error"] == "cooling_down"


async def test_max_wait_covering_the_cooldown_waits_and_succeeds(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router({
        **_group(openai_provider("a", upstream), max_wait_s=3),
        "circuit": {"cooldown_base_s": 0.3},
    })
    upstream.fake.add_fault(Fault(status=429))
    with pytest.raises(openai.RateLimitError):
        await _chat(router)
    assert router.state.health.label("a", key_label("sk-a")) == "cooldown"
    raw = await _chat(router)  # would be a 503 without max_wait_s (test above)
    assert raw.parse().choices and raw.headers["X-Router-Attempts"] == "1"
    assert len(upstream.fake.requests) == 2


# ---------------------------------------------------------------- timeouts


def _timeouts(up: Upstream, name: str = "a", **timeouts: float) -> dict[str, Any]:
    return openai_provider(name, up, timeouts=timeouts)


async def test_hung_upstream_is_504_after_first_byte_timeout(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_group(_timeouts(upstream, first_byte=0.3)))
    upstream.fake.add_fault(Fault(status=0, hang_s=30, times=None))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        await _chat(router)
    assert exc.value.status_code == 504
    assert "timed out" in exc.value.message
    assert time.monotonic() - started < 10  # the timeout, not the 30 s hang, ended it
    with pytest.raises(openai.APIStatusError) as exc:  # streams too, before any byte
        await router.openai().chat.completions.create(model="g", messages=HELLO,  # type: ignore[arg-type]
                                                      stream=True)
    assert exc.value.status_code == 504


async def test_hung_upstream_fails_over_to_a_healthy_member(
        start_router: StartRouter, make_upstream: MakeUpstream) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(_timeouts(a, first_byte=0.3), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=0, hang_s=30))
    raw = await _chat(router)
    assert raw.headers["X-Router-Provider"] == "b" and raw.headers["X-Router-Attempts"] == "2"


async def test_connect_timeout_is_enforced(start_router: StartRouter,
                                           upstream: Upstream) -> None:
    # A listener whose accept queue is full: the kernel drops new SYNs, so connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        provider = _timeouts(upstream, connect=0.3, first_byte=30)
        provider["base_url"] = f"http://127.0.0.1:{port}/v1"
        router = await start_router(_group(provider))
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as exc:
            await _chat(router)
        assert exc.value.status_code == 504
        assert "timed out connecting to upstream 'a'" in exc.value.message
        assert time.monotonic() - started < 10
    finally:
        for s in (*fillers, listener):
            s.close()


async def test_total_timeout_bounds_the_wait_for_headers(start_router: StartRouter,
                                                         upstream: Upstream) -> None:
    router = await start_router(_group(_timeouts(upstream, first_byte=30, total=0.3)))
    upstream.fake.add_fault(Fault(status=0, hang_s=30))
    with pytest.raises(openai.APIStatusError) as exc:
        await _chat(router)
    assert exc.value.status_code == 504


async def test_total_timeout_bounds_a_body_that_stalls_and_fails_over(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # Headers and half the body at once, then nothing: only total can end the wait.
    async def stall(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 200
        await resp.prepare(request)
        await resp.write(b'{"id": "x", "choices": [')
        await asyncio.sleep(30)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stall)
    server = await aiohttp_server(app)
    stalled = _timeouts(upstream, first_byte=5, total=0.4)
    stalled["base_url"] = str(server.make_url("/v1"))
    router = await start_router(_group(stalled, openai_provider("b", upstream)))
    started = time.monotonic()
    await chat_served_by(http, router, "b", attempts=2)
    assert time.monotonic() - started < 10  # total ended it, not the 30 s stall
    samples = await metric_samples(router.url)
    assert samples[f"llm_router_upstream_errors_total{{key={key_label('sk-a')},provider=a,"
                   "reason=timeout}"] == 1
    assert len(router.state.deadlines) == 0  # no wait left registered


async def test_total_timeout_ends_a_long_stream_in_band(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    slow = await make_upstream(tokens_per_second=10)  # 16 tokens: about 1.6 s
    router = await start_router(_group(_timeouts(slow, total=0.5)))
    status, _, events = await _stream(http, router)
    assert status == 200
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "stream_interrupted"
    assert "timeout" in events[-2]["error"]["message"]
    assert 1 < len(events) - 2 < 16  # some content came, then the cut


async def test_idle_timeout_applies_between_chunks_not_before_the_first(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    # The first event comes 0.4 s after the headers (longer than idle, within
    # first_byte): fine. Later events come every 0.25 s: longer than idle → cut.
    slow = await make_upstream(latency_ms=400, tokens_per_second=4)
    router = await start_router(_group(_timeouts(slow, idle=0.1, first_byte=5)))
    status, _, events = await _stream(http, router)
    assert status == 200
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "stream_interrupted"
    assert len(events) == 3
    # The SDK surfaces the in-band error instead of a silent, truncated success.
    stream = await router.openai().chat.completions.create(model="g", messages=HELLO,  # type: ignore[arg-type]
                                                           stream=True)
    with pytest.raises(openai.APIError, match="interrupted"):
        async for _ in stream:
            pass


# ---------------------------------------------------------------- streams


async def test_cut_stream_ends_in_band_and_the_router_keeps_serving(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    up = await make_upstream(tokens_per_second=200)
    router = await start_router(_group(openai_provider("a", up)))
    up.fake.add_fault(Fault(status=0, cut_after_chunks=3))
    status, headers, events = await _stream(http, router)
    assert status == 200 and headers["X-Accel-Buffering"] == "no"
    assert len(events) == 5
    assert [e["object"] for e in events[:3]] == ["chat.completion.chunk"] * 3
    assert events[3]["error"]["code"] == "stream_interrupted"
    assert events[4] == "[DONE]"
    assert len(up.fake.requests) == 1  # nothing is retried once streaming started
    status, _, events = await _stream(http, router)
    assert status == 200 and events[-1] == "[DONE]" and "error" not in events[-2]
    assert router.state.counters.inflight == {}


async def test_stream_cut_before_its_first_event_fails_over(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    a, b = await make_upstream(tokens_per_second=200), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=0, cut_after_chunks=0))
    status, headers, events = await _stream(http, router)
    assert status == 200
    assert headers["X-Router-Provider"] == "b" and headers["X-Router-Attempts"] == "2"
    assert events[-1] == "[DONE]" and all("error" not in e for e in events[:-1])


async def test_keepalive_comments_while_waiting_for_the_first_event(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    slow = await make_upstream(latency_ms=500)
    router = await start_router({**_group(openai_provider("a", slow)), "keepalive_s": 0.1})
    status, headers, events = await _stream(http, router, max_tokens=2)
    assert status == 200
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["X-Router-Provider"] == "a"
    keepalives = events.index(next(e for e in events if e != "keepalive"))
    assert keepalives >= 2
    assert events[keepalives:][-1] == "[DONE]"
    assert "keepalive" not in events[keepalives:]  # only while waiting
    # The SDK ignores the comments.
    chunks = [c async for c in await router.openai().chat.completions.create(
        model="g", messages=HELLO, stream=True, max_tokens=2)]  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "lorem ipsum"


async def test_keepalive_during_a_hung_upstream_then_an_in_band_timeout(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router({**_group(_timeouts(upstream, first_byte=0.5)),
                                 "keepalive_s": 0.1})
    upstream.fake.add_fault(Fault(status=0, hang_s=30))
    status, _, events = await _stream(http, router)
    # Keepalives committed the stream, so the timeout can only be reported in-band.
    assert status == 200
    assert events[0] == "keepalive"
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "upstream_error"
    assert "timed out" in events[-2]["error"]["message"]


async def test_stream_waiting_for_a_cooling_key_gets_keepalives(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router({
        **_group(openai_provider("a", upstream), max_wait_s=3),
        "circuit": {"cooldown_base_s": 0.4}, "keepalive_s": 0.1,
    })
    upstream.fake.add_fault(Fault(status=429))
    with pytest.raises(openai.RateLimitError):
        await _chat(router)
    status, headers, events = await _stream(http, router, max_tokens=2)
    assert status == 200 and headers["X-Router-Group"] == "g"
    assert events[0] == "keepalive"
    assert events[-1] == "[DONE]"
    content = [e for e in events if isinstance(e, dict)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in content
                   if c["choices"]) == "lorem ipsum"


async def test_anthropic_client_gets_an_anthropic_in_band_error(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router({**_group(_timeouts(upstream, first_byte=0.4)),
                                 "keepalive_s": 0.1})
    upstream.fake.add_fault(Fault(status=0, hang_s=30))
    stream = await router.anthropic().messages.create(
        model="g", max_tokens=8, messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(anthropic.APIStatusError, match="timed out"):
        async for _ in stream:
            pass


# ---------------------------------------------------------------- client disconnects


@pytest.fixture
async def endless_upstream(aiohttp_server: AiohttpServer) -> AsyncIterator[
        tuple[str, dict[str, asyncio.Event]]]:
    """An OpenAI-style upstream whose stream never ends; it reports when the router
    closes the connection (its next write fails)."""
    seen = {"started": asyncio.Event(), "closed": asyncio.Event()}

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        seen["started"].set()
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "tick "}}]}
        try:
            for _ in range(400):  # at most 20 s, far beyond the test
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            seen["closed"].set()
            raise
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    yield str(server.make_url("/v1")), seen


async def test_client_disconnect_mid_stream_frees_the_slot_and_closes_upstream(
        start_router: StartRouter, upstream: Upstream,
        endless_upstream: tuple[str, dict[str, asyncio.Event]],
        http: aiohttp.ClientSession) -> None:
    url, seen = endless_upstream
    provider = openai_provider("a", upstream)
    provider["base_url"] = url
    router = await start_router(_group(provider))
    async with aiohttp.ClientSession() as client:
        resp = await client.post(router.url + "/v1/chat/completions", headers=AUTH,
                                 json={"model": "g", "messages": HELLO, "stream": True})
        assert (await resp.content.readline()).startswith(b"data: ")
        samples = await metric_samples(router.url)
        assert samples["llm_router_inflight_requests{}"] == 1
        assert router.state.counters.inflight
        resp.close()
    async with asyncio.timeout(5):
        await seen["closed"].wait()  # the router dropped its upstream connection
    await eventually(lambda: router.state.inflight == 0)
    samples = await metric_samples(router.url)
    assert samples["llm_router_inflight_requests{}"] == 0
    assert router.state.counters.inflight == {}
    assert sum(router.state.counters.tokens.values()) > 0  # counted for what it used


async def test_exhausted_attempts_are_reported_on_the_error(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    up = await make_upstream()
    up.fake.add_fault(Fault(status=500, times=None))
    router = await start_router({
        "providers": [openai_provider("a", up, ["sk-1", "sk-2"])],
        "groups": [{"name": "g", "models": [{"provider": "a", "name": "m"}]}],
    })
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 502
        assert resp.headers["X-Router-Attempts"] == "2"
        assert resp.headers["X-Router-Group"] == "g"


async def test_upstream_comment_lines_do_not_commit_the_stream(
        start_router: StartRouter, http: aiohttp.ClientSession) -> None:
    # An upstream that sends an SSE comment, then fails: the router can still fail over.
    async def flaky(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": PROCESSING\n\n")
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", flaky)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    good = FakeUpstream()
    good_runner = web.AppRunner(good.app())
    await good_runner.setup()
    await web.TCPSite(good_runner, "127.0.0.1", 0).start()
    good_port = good_runner.addresses[0][1]
    try:
        router = await start_router({
            "providers": [
                {"name": "flaky", "base_url": f"http://127.0.0.1:{port}/v1", "api_keys": ["k"]},
                {"name": "good", "base_url": f"http://127.0.0.1:{good_port}/v1",
                 "api_keys": ["k"]}],
            "groups": [{"name": "g", "strategy": "priority", "models": [
                {"provider": "flaky", "name": "m"}, {"provider": "good", "name": "m"}]}],
        })
        body = {"model": "g", "messages": HELLO, "stream": True}
        async with http.post(router.url + "/v1/chat/completions", json=body,
                             headers={**AUTH, "Accept-Encoding": "identity"}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Router-Provider"] == "good"
            text = await resp.text()
        assert ": PROCESSING" not in text and text.endswith("data: [DONE]\n\n")
    finally:
        await runner.cleanup()
        await good_runner.cleanup()
