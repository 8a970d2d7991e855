"""The shortcuts of the request path keep their promises (bench/README.md, issue 5).

Each shortcut replaced a general mechanism: the usage of an untouched answer is read
without parsing all of it, a request body is read in one go, a stream's waits share one
watchdog, a non-streamed request's waits share one clock tick (deadlines), and its
events are relayed a read at a time. These tests pin what must not change: malformed
answers still fail over, usage is still counted, over-long bodies are still refused, a
stream is cut for idleness only when it really idles, and a deadline ends only a wait
that outlived it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.config import key_label
from llm_router.gateway.deadlines import Deadlines
from llm_router.gateway.relay import passthrough_usage
from llm_router.ledger.accounting import ANONYMOUS
from llm_router.observe.exchange import Exchange
from llm_router.testing.upstream import Fault

from .conftest import MakeUpstream, StartRouter, Upstream
from .helpers import (
    AUTH,
    HELLO,
    chat_served_by,
    eventually,
    metric_samples,
    openai_provider,
    total,
)


def _group(*providers: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": list(providers),
        "groups": [{"name": "g", "strategy": "priority",
                    "models": [{"provider": p["name"], "name": f"m-{p['name']}"}
                               for p in providers]}],
    }


@pytest.mark.parametrize("body", [b"not json", b'{"choices": [tru', b"[1, 2]", b""])
async def test_a_200_answer_that_is_not_a_json_object_fails_over(
        start_router: StartRouter, make_upstream: MakeUpstream, http: aiohttp.ClientSession,
        body: bytes) -> None:
    a, b = await make_upstream(), await make_upstream()
    router = await start_router(_group(openai_provider("a", a), openai_provider("b", b)))
    a.fake.add_fault(Fault(status=200, body=body))
    await chat_served_by(http, router, "b", attempts=2)
    samples = await metric_samples(router.url)
    assert samples[f"llm_router_upstream_errors_total{{key={key_label('sk-a')},provider=a,"
                   "reason=bad_response}"] == 1


async def test_usage_of_an_untouched_answer_is_counted_wherever_it_sits(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    # As OpenAI answers: usage (with nested details) followed by more top-level fields.
    answer = {"id": "x", "object": "chat.completion", "model": "m-a",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": 'a "usage": {}'}}],
              "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                        "prompt_tokens_details": {"cached_tokens": 0}},
              "service_tier": "default", "system_fingerprint": "fp_1"}
    router = await start_router(_group(openai_provider("a", upstream)))
    upstream.fake.add_fault(Fault(status=200, body=orjson.dumps(answer)))
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": HELLO}) as resp:
        assert resp.status == 200
        assert await resp.read() == orjson.dumps(answer)  # passed on byte for byte
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", kind="prompt") == 11
    assert total(samples, "llm_router_tokens_total", kind="completion") == 7


def test_passthrough_usage_declines_what_it_cannot_read_cheaply() -> None:
    # None sends the caller to the full parse, which decides.
    assert passthrough_usage("openai", b'{"usage": null}') is None
    assert passthrough_usage("openai", b'{"choices": [tru') is None
    assert passthrough_usage("openai", b'{"usage": {"note": "}"}}') is None  # brace in a string
    usage = passthrough_usage("anthropic", b' {"usage": {"input_tokens": 5, '
                                           b'"output_tokens": 2}}\n')
    assert usage is not None and (usage.prompt, usage.completion) == (5, 2)


async def test_a_chunked_body_over_the_limit_is_refused(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router({**_group(openai_provider("a", upstream)),
                                 "max_body_bytes": 2048})

    async def body(size: int) -> AsyncIterator[bytes]:  # no Content-Length: chunked
        doc = orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "x" * size}]})
        for i in range(0, len(doc), 500):
            yield doc[i:i + 500]

    url = router.url + "/v1/chat/completions"
    async with http.post(url, data=body(4096), headers=AUTH) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"
    async with http.post(url, data=body(100), headers=AUTH) as resp:
        assert resp.status == 200
    assert len(upstream.fake.requests) == 1


async def test_a_stream_longer_than_idle_but_never_idle_is_not_cut(
        start_router: StartRouter, make_upstream: MakeUpstream,
        http: aiohttp.ClientSession) -> None:
    # 16 tokens at 20/s: about 0.8 s of stream, gaps of 0.05 s, idle 0.3 s. The watchdog
    # set for the first wait fires while the stream is still flowing and must re-arm.
    up = await make_upstream(tokens_per_second=20)
    router = await start_router(_group(openai_provider("a", up, timeouts={"idle": 0.3})))
    payload = {"model": "g", "messages": HELLO, "stream": True, "max_tokens": 16}
    async with http.post(router.url + "/v1/chat/completions", json=payload,
                         headers={**AUTH, "Accept-Encoding": "identity"}) as resp:
        assert resp.status == 200
        raw = await resp.read()
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


async def test_deadlines_end_overdue_waits_and_leave_other_cancels_alone() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError), deadlines.guard(loop.time() + 0.1):
        await asyncio.sleep(5)
    # Moved later before it was due: the wait completes.
    with deadlines.guard(loop.time() + 0.05) as guard:
        guard.move(loop.time() + 5)
        await asyncio.sleep(0.2)
    # A cancellation from elsewhere (the client went away) stays a cancellation.
    async def waits() -> None:
        with deadlines.guard(loop.time() + 5):
            await asyncio.sleep(5)

    task = loop.create_task(waits())
    await eventually(lambda: len(deadlines) == 1)  # the task is in its guard
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


def test_an_exchange_starts_with_every_field_set_and_empty() -> None:
    # Exchange.__init__ is written out (it runs for every request): a field added to the
    # class but not to it would be unset, and reading it an AttributeError mid-request.
    ex = Exchange("/v1/chat/completions", "rid", ANONYMOUS, "chat", "openai", 1.5)
    given = {"route": "/v1/chat/completions", "request_id": "rid", "caller": ANONYMOUS,
             "kind": "chat", "client": "openai", "t0": 1.5}
    for f in dataclasses.fields(Exchange):
        value = getattr(ex, f.name)
        assert value == given[f.name] if f.name in given else not value, f.name
    assert Exchange("/r", "rid", ANONYMOUS).client == "openai"
    assert ex.failures is not Exchange("/r", "rid", ANONYMOUS).failures


async def test_a_guard_starts_its_beat_during_the_wait_and_still_ends_it_at_the_deadline(
        ) -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started: list[float] = []
    t0 = loop.time()
    guard = deadlines.guard(t0 + 0.3)
    guard.beat(t0 + 0.1, lambda: started.append(loop.time()))
    with pytest.raises(TimeoutError), guard:
        await asyncio.sleep(5)
    assert len(started) == 1 and 0.1 <= started[0] - t0 < 0.3
    assert loop.time() - t0 >= 0.3
    assert len(deadlines) == 0
    # A wait that ends before the beat's time starts nothing and leaves no entry.
    guard = deadlines.guard(loop.time() + 5)
    guard.beat(loop.time() + 0.2, lambda: started.append(loop.time()))
    with guard:
        await asyncio.sleep(0.05)
    # A beat due after the deadline never starts; nor one a move put behind it.
    guard = deadlines.guard(loop.time() + 0.1)
    guard.beat(loop.time() + 0.2, lambda: started.append(loop.time()))
    with pytest.raises(TimeoutError), guard:
        await asyncio.sleep(5)
    guard = deadlines.guard(loop.time() + 5)
    guard.beat(loop.time() + 0.2, lambda: started.append(loop.time()))
    with pytest.raises(TimeoutError), guard:
        guard.move(loop.time() + 0.1)
        await asyncio.sleep(5)
    await asyncio.sleep(0.2)
    assert len(started) == 1
    # Moved later with the beat still first: it starts, and the wait goes on past it.
    guard = deadlines.guard(loop.time() + 0.15)
    guard.beat(loop.time() + 0.1, lambda: started.append(loop.time()))
    with guard:
        guard.move(loop.time() + 5)
        await asyncio.sleep(0.3)
    assert len(started) == 2
    assert len(deadlines) == 0
