"""Upstream token counts are untrusted input (issue 23, item 1; docs/observability.md).

An upstream answering ``"prompt_tokens": 1e30`` once broke every snapshot write, made
``/health/ready`` 503 for good, turned ``/admin/*``, ``/v1/usage`` and ``/metrics`` into
500s, and ended the caller's budget. Now every count out of range is replaced by the
router's own estimate, counted in ``llm_router_upstream_usage_rejected_total`` and
logged once. Real traffic: aiohttp → router → a hostile upstream on loopback that
answers, plain and streamed, in the OpenAI and in the Anthropic dialect, with absurd
usage; the router then restarts from the snapshot it wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from llm_router.config import sha256_hex
from llm_router.hub.usage import (
    CACHED,
    COMPLETION,
    PROMPT,
    TOKEN_COUNT_LIMIT,
    AnthropicUsage,
    Usage,
    token_count,
)

from .conftest import Router, StartRouter
from .helpers import metric_samples

USER, ADMIN = "sk-usage-user", "sk-usage-admin"
PRICE_PER_TOKEN = 0.001  # $1,000 per 1M tokens
MAX_TOKENS = 20  # the completion estimate cannot exceed this

# A count as the upstream writes it (raw JSON), and why it is refused.
ABSURD: dict[str, bytes] = {
    "float-1e30": b"1e30",
    "float-1e308": b"1e308",
    "negative": b"-5",
    "string": b'"lots"',
    "bool": b"true",
    "u64-max": b"18446744073709551615",
    "fraction": b"12.5",
    "object": b'{"n": 1}',
}


def _openai_usage(v: bytes) -> bytes:
    return (b'{"prompt_tokens": ' + v + b', "completion_tokens": ' + v
            + b', "total_tokens": ' + v + b', "prompt_tokens_details": {"cached_tokens": '
            + v + b"}}")


def _anthropic_usage(v: bytes) -> bytes:
    return (b'{"input_tokens": ' + v + b', "output_tokens": ' + v
            + b', "cache_read_input_tokens": ' + v + b"}")


async def _wild_upstream(aiohttp_server: AiohttpServer, absurd: list[bytes]) -> str:
    """Answers every chat and Messages request with ``absurd[0]`` as each count."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = _openai_usage(absurd[0])
        head = b'{"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", '
        if not body.get("stream"):
            return web.Response(content_type="application/json", body=(
                b'{"id": "c1", "object": "chat.completion", "created": 1, "model": "m", '
                b'"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, '
                b'"finish_reason": "stop"}], "usage": ' + usage + b"}"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + head + b'"choices": [{"index": 0, "delta": {"role": '
                         b'"assistant", "content": "hi"}, "finish_reason": null}]}\n\n')
        await resp.write(b"data: " + head + b'"choices": [{"index": 0, "delta": {}, '
                         b'"finish_reason": "stop"}]}\n\n')
        await resp.write(b"data: " + head + b'"choices": [], "usage": ' + usage + b"}\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = _anthropic_usage(absurd[0])
        message = (b'{"id": "msg_1", "type": "message", "role": "assistant", "model": "m", '
                   b'"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", '
                   b'"stop_sequence": null, "usage": ' + usage + b"}")
        if not body.get("stream"):
            return web.Response(content_type="application/json", body=message)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = message.replace(b'[{"type": "text", "text": "hi"}]', b"[]")
        for event, data in (
                (b"message_start", b'{"type": "message_start", "message": ' + start + b"}"),
                (b"content_block_start", b'{"type": "content_block_start", "index": 0, '
                                         b'"content_block": {"type": "text", "text": ""}}'),
                (b"content_block_delta", b'{"type": "content_block_delta", "index": 0, '
                                         b'"delta": {"type": "text_delta", "text": "hi"}}'),
                (b"content_block_stop", b'{"type": "content_block_stop", "index": 0}'),
                (b"message_delta", b'{"type": "message_delta", "delta": {"stop_reason": '
                                   b'"end_turn", "stop_sequence": null}, "usage": '
                                   + usage + b"}"),
                (b"message_stop", b'{"type": "message_stop"}')):
            await resp.write(b"event: " + event + b"\ndata: " + data + b"\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def _config(root: str, dialect: str, snapshot: Path) -> dict[str, Any]:
    provider: dict[str, Any] = {"name": "wild", "type": dialect, "api_keys": ["sk-up"],
                                "base_url": root + "/v1" if dialect == "openai" else root}
    return {
        "providers": [provider],
        "groups": [{"name": "g", "models": [{"provider": "wild", "name": "m"}]}],
        "users": [
            {"name": "admin", "role": "admin",
             "keys": [{"sha256": sha256_hex(ADMIN), "name": "ops"}]},
            {"name": "bob", "keys": [{"sha256": sha256_hex(USER), "name": "laptop"}],
             "budget": {"usd": 100.0, "period": "total"}},
        ],
        "pricing": {"m": {"input": PRICE_PER_TOKEN * 1e6, "output": PRICE_PER_TOKEN * 1e6}},
        "usage": {"snapshot_path": str(snapshot), "snapshot_interval_s": 3600},
    }


def _request(route: str, stream: bool) -> tuple[str, bytes]:
    hello = [{"role": "user", "content": "hello there"}]
    if route == "responses":
        body: dict[str, Any] = {"model": "g", "input": "hello there",
                                "max_output_tokens": MAX_TOKENS}
    else:
        body = {"model": "g", "messages": hello, "max_tokens": MAX_TOKENS}
    if stream:
        body["stream"] = True
    path = {"chat": "/v1/chat/completions", "messages": "/v1/messages",
            "responses": "/v1/responses"}[route]
    return path, orjson.dumps(body)


async def _get(http: aiohttp.ClientSession, router: Router, path: str, key: str) -> Any:
    async with http.get(router.url + path, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return orjson.loads(await r.read())


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("route", "dialect"), [
    ("chat", "openai"), ("messages", "anthropic"),  # passed through as sent
    ("chat", "anthropic"), ("messages", "openai"), ("responses", "openai"),  # translated
])
async def test_absurd_upstream_usage_is_counted_at_the_estimate(
        route: str, dialect: str, stream: bool, aiohttp_server: AiohttpServer,
        start_router: StartRouter, http: aiohttp.ClientSession, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    absurd: list[bytes] = [b"0"]
    root = await _wild_upstream(aiohttp_server, absurd)
    snapshot = tmp_path / "usage.json"
    cfg = _config(root, dialect, snapshot)
    router = await start_router(cfg)
    path, body = _request(route, stream)
    for value in ABSURD.values():
        absurd[0] = value
        async with http.post(router.url + path, data=body, headers={
                "Authorization": f"Bearer {USER}", "Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()
            answer = await r.read()
        # Not cut short: no in-band error in any of the three dialects.
        for failed in (b'"error":{', b"event:error", b"response.failed"):
            assert failed not in answer.replace(b" ", b"")

    # Every endpoint that reads the counts still answers.
    samples = await metric_samples(router.url)
    assert samples["llm_router_upstream_usage_rejected_total{provider=wild}"] == len(ABSURD)
    tokens = [v for k, v in samples.items() if k.startswith("llm_router_tokens_total{")]
    assert tokens and all(0 <= v < 1e6 for v in tokens)
    usage = await _get(http, router, "/v1/usage", USER)
    admin = await _get(http, router, "/admin/usage", ADMIN)
    await _get(http, router, "/admin/status", ADMIN)
    async with http.get(router.url + "/health/ready") as r:
        assert r.status == 200
    # Spend is what the estimates allow: the prompt at a token per 4 bytes of body, the
    # completion at most max_tokens (or, in a stream, one token per event relayed).
    spent = usage["user"]["budget"]["spent_usd"]
    per_request = (len(body) / 4 + MAX_TOKENS) * PRICE_PER_TOKEN
    assert 0 < spent <= len(ABSURD) * per_request
    bob = next(u for u in admin["users"] if u["name"] == "bob")
    assert bob["usage"]["total"]["requests"] == len(ABSURD)
    assert bob["usage"]["total"]["cost_usd"] == pytest.approx(spent)

    # One WARNING naming the provider, however many answers were refused.
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "token counts" in r.getMessage()]
    assert len(warnings) == 1 and "upstream 'wild'" in warnings[0]

    # The snapshot is written, and a restart from it keeps the spend.
    await router.close()
    assert orjson.loads(snapshot.read_bytes())["sections"]
    again = await start_router(cfg, name="again.yaml")
    restored = await _get(http, again, "/v1/usage", USER)
    assert restored["user"]["budget"]["spent_usd"] == pytest.approx(spent)


async def test_counts_in_range_are_taken_as_reported(
        aiohttp_server: AiohttpServer, start_router: StartRouter,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    # The bound is far above any context window: a large, valid count is not refused.
    absurd = [b"1000000000"]
    root = await _wild_upstream(aiohttp_server, absurd)
    router = await start_router(_config(root, "openai", tmp_path / "usage.json"))
    path, body = _request("chat", False)
    async with http.post(router.url + path, data=body, headers={
            "Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}) as r:
        assert r.status == 200
        assert float(r.headers["X-Router-Cost-USD"]) == pytest.approx(2e9 * PRICE_PER_TOKEN)
    samples = await metric_samples(router.url)
    assert samples.get("llm_router_upstream_usage_rejected_total{provider=wild}", 0) == 0


@pytest.mark.parametrize(("value", "count"), [
    (0, 0), (12, 12), (12.0, 12), (TOKEN_COUNT_LIMIT, TOKEN_COUNT_LIMIT),
    (TOKEN_COUNT_LIMIT + 1, None), (-1, None), (-0.5, None), (12.5, None), (1e30, None),
    (float("inf"), None), (float("nan"), None), (True, None), ("12", None), (None, None),
    ([1], None),
], ids=repr)
def test_token_count(value: object, count: int | None) -> None:
    assert token_count(value) == count


def test_openai_usage_marks_only_the_counts_out_of_range() -> None:
    usage = Usage.from_openai({"prompt_tokens": 7, "completion_tokens": 1e30,
                               "prompt_tokens_details": {"cached_tokens": "x"}})
    assert (usage.prompt, usage.completion, usage.cached) == (7, 0, 0)
    assert usage.rejected == COMPLETION | CACHED
    assert Usage.from_openai(None).rejected == 0  # none reported is not a rejection
    assert Usage.from_openai("lots").rejected == PROMPT | COMPLETION


def test_anthropic_usage_is_cumulative_and_a_later_valid_count_clears_a_bad_one() -> None:
    counts = AnthropicUsage()
    counts.add({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": -1})
    assert counts.usage.rejected == COMPLETION
    counts.add({"output_tokens": 30})  # message_delta: the total, valid this time
    usage = counts.usage
    assert (usage.prompt, usage.completion, usage.cached, usage.rejected) == (15, 30, 5, 0)
