"""Upstreams that answer too much, too slowly or for too long, and clients that send
what the router cannot hold: every case ends in a clear answer, never a hang or a 500."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from llm_router.config import load_config
from llm_router.observe.redact import RedactingFilter, Redactor

from .conftest import StartRouter, Upstream
from .helpers import (
    AUTH,
    eventually,
    metric_samples,
    metrics_page,
    openai_provider,
    total,
    write_config,
)

HELLO = [{"role": "user", "content": "hello"}]
_CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
          "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
_ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def _event(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


async def _hostile(aiohttp_server: AiohttpServer) -> str:
    """An OpenAI-shaped upstream whose behaviour is chosen by the request's model."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        if model == "huge-json":
            return web.Response(body=b'{"pad": "' + b"x" * (1 << 20) + b'"}',
                                content_type="application/json")
        if model == "2k-json":  # one write: usually all in the router's buffer at once
            return web.Response(body=b'{"pad": "' + b"x" * 2048 + b'"}',
                                content_type="application/json")
        if model == "echo-error":  # quotes the credentials it was sent, as some do
            return web.json_response({"error": {
                "message": f"Invalid header: Authorization: {request.headers['Authorization']}",
                "type": "invalid_request_error"}}, status=400)
        if model == "echo-answer":
            answer = orjson.loads(orjson.dumps(_ANSWER))
            answer["choices"][0]["message"]["content"] = request.headers["Authorization"]
            if body.get("stream"):
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                chunk = orjson.loads(orjson.dumps(_CHUNK))
                chunk["choices"][0]["delta"]["content"] = request.headers["Authorization"]
                await resp.write(_event(chunk) + b"data: [DONE]\n\n")
                await resp.write_eof()
                return resp
            return web.json_response(answer)
        if model == "json-to-stream":  # ignores stream: true
            return web.json_response(_ANSWER)
        if model == "not-a-completion":
            return web.json_response({"object": "list", "data": []})
        if model == "huge-error":
            return web.Response(status=400, body=b'{"error": "' + b"x" * (1 << 20) + b'"}',
                                content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if model == "huge-event":
            await resp.write(b"data: ")
            for _ in range(64):
                await resp.write(b"x" * 16384)
        elif model == "trickle":
            await resp.write(_event(_CHUNK))
            for _ in range(100):  # bytes, never an event boundary
                await resp.write(b"x")
                await asyncio.sleep(0.1)
        elif model == "linger":
            await resp.write(_event(_CHUNK) + b"data: [DONE]\n\n")
            await asyncio.sleep(5)  # keeps the connection open after [DONE]
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


async def _router(start_router: StartRouter, hostile: str, upstream: Upstream,
                  **extra: Any) -> Any:
    models = ["huge-json", "2k-json", "huge-error", "huge-event", "trickle", "linger", "echo-error",
              "echo-answer", "json-to-stream", "not-a-completion"]
    return await start_router({
        "providers": [{"name": "bad", "type": "openai", "base_url": hostile,
                       "api_keys": ["sk-bad-key-0123456789"],
                       "timeouts": {"idle": 1, "total": 30}},
                      openai_provider("good", upstream)],
        # Each bad model fails over to the good upstream.
        "groups": [{"name": m, "strategy": "priority",
                    "models": [{"provider": "bad", "name": m}, {"provider": "good", "name": "m"}]}
                   for m in models],
        "upstream_limits": {"max_error_body_bytes": 65536, "max_response_bytes": 262144,
                            "max_event_bytes": 262144},
        **extra,
    })


async def _post(http: aiohttp.ClientSession, url: str, model: str, stream: bool = False
                ) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url + "/v1/chat/completions",
                         headers={**AUTH, "Accept-Encoding": "identity"},
                         json={"model": model, "messages": HELLO, "stream": stream}) as r:
        return r.status, dict(r.headers), await r.read()


async def test_oversized_answers_fail_over_as_bad_response(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    router = await _router(start_router, await _hostile(aiohttp_server), upstream)
    for model, stream in (("huge-json", False), ("huge-event", True)):
        t0 = time.perf_counter()
        status, headers, body = await _post(http, router.url, model, stream)
        assert status == 200, body[:200]
        assert headers["X-Router-Provider"] == "good" and headers["X-Router-Attempts"] == "2"
        assert time.perf_counter() - t0 < 5
    samples = await metric_samples(router.url)
    bad = total(samples, "llm_router_upstream_errors_total", provider="bad",
                reason="bad_response")
    assert bad == 2


async def test_an_answer_over_the_bound_fails_over_even_when_it_came_whole(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # 2 KB against a 1 KB bound: read from the buffer without waiting (answer.relay_body),
    # it is refused as one read bit by bit would be.
    router = await _router(start_router, await _hostile(aiohttp_server), upstream,
                           upstream_limits={"max_response_bytes": 1024})
    status, headers, body = await _post(http, router.url, "2k-json")
    assert status == 200, body[:200]
    assert headers["X-Router-Provider"] == "good" and headers["X-Router-Attempts"] == "2"
    samples = await metric_samples(router.url)
    assert any(
        k.startswith("llm_router_upstream_errors_total{") and "provider=bad," in k
        and "reason=bad_response" in k and v == 1 for k, v in samples.items())


async def test_oversized_error_body_is_not_relayed(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    router = await _router(start_router, await _hostile(aiohttp_server), upstream)
    status, _, body = await _post(http, router.url, "huge-error")
    assert status == 400 and len(body) < 1024
    assert orjson.loads(body)["error"]["message"] == "upstream 'bad' answered 400"


async def test_bytes_without_an_event_boundary_trip_the_idle_timeout(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    router = await _router(start_router, await _hostile(aiohttp_server), upstream)
    t0 = time.perf_counter()
    status, _, body = await _post(http, router.url, "trickle", stream=True)
    elapsed = time.perf_counter() - t0
    assert status == 200
    assert b'"code":"stream_interrupted"' in body and b"(timeout)" in body
    assert elapsed < 6  # idle is 1 s; the trickle would have lasted 10 s


async def test_stream_ends_at_done_while_the_upstream_lingers(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer) -> None:
    router = await _router(start_router, await _hostile(aiohttp_server), upstream)

    async def one() -> float:
        # A client that closes its connection as soon as it has [DONE], like an SDK.
        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as s, s.post(
                router.url + "/v1/chat/completions", headers=AUTH,
                json={"model": "linger", "messages": HELLO, "stream": True}) as r:
            assert r.status == 200
            body = await r.read()  # returns once the router ends the response
        assert body.endswith(b"data: [DONE]\n\n")
        return time.perf_counter() - t0

    took = await asyncio.gather(*(one() for _ in range(10)))
    assert max(took) < 3  # not the upstream's 5 s linger

    async def all_counted() -> bool:  # a request is counted once its response has ended
        samples = await metric_samples(router.url)
        return total(samples, "llm_router_requests_total", group="linger") >= 10

    await eventually(all_counted)
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_requests_total", group="linger", status="200") == 10
    assert total(samples, "llm_router_requests_total", group="linger", status="499") == 0


async def test_json_nested_too_deep_is_400_invalid_json(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router({"providers": [openai_provider("good", upstream)],
                                 "groups": [{"name": "g", "models": [{"provider": "good",
                                                                      "name": "m"}]}]})
    for depth in (300, 1000, 5000):
        raw = (b'{"model": "g", "messages": [{"role": "user", "content": "x"}], "x": '
               + b"[" * depth + b"]" * depth + b"}")
        async with http.post(router.url + "/v1/chat/completions", data=raw,
                             headers={**AUTH, "Content-Type": "application/json"}) as r:
            assert r.status == 400, depth
            assert (await r.json())["error"]["code"] == "invalid_json"


async def test_a_body_sent_too_slowly_gets_408(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router({"providers": [openai_provider("good", upstream)],
                                 "groups": [{"name": "g", "models": [{"provider": "good",
                                                                      "name": "m"}]}],
                                 "server": {"body_timeout_s": 0.5,
                                            "body_min_bytes_per_s": 100000}})
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: " + AUTH["Authorization"].encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"mo")
    await writer.drain()
    t0 = time.perf_counter()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    rest = await asyncio.wait_for(reader.readexactly(length), 10)
    assert orjson.loads(rest)["error"]["code"] == "request_timeout"
    assert time.perf_counter() - t0 < 5
    writer.close()


async def test_configured_secrets_never_reach_the_client(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    router = await _router(start_router, await _hostile(aiohttp_server), upstream)
    for model, stream in (("echo-error", False), ("echo-answer", False),
                          ("echo-answer", True)):
        status, headers, body = await _post(http, router.url, model, stream)
        assert status == (400 if model == "echo-error" else 200)
        assert headers["X-Router-Provider"] == "bad"
        assert b"sk-bad-key-0123456789" not in body
        assert b"Bearer [redacted]" in body


async def test_a_key_read_from_a_file_never_reaches_the_client(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    key_file = tmp_path / "bad-key"
    key_file.write_text("sk-bad-file-key-98765\n")
    hostile = await _hostile(aiohttp_server)
    router = await start_router({
        "providers": [{"name": "bad", "type": "openai", "base_url": hostile,
                       "api_keys": [{"key_file": str(key_file)}]},
                      openai_provider("good", upstream)],
        "groups": [{"name": m, "strategy": "priority", "models": [
            {"provider": "bad", "name": m}, {"provider": "good", "name": "m"}]}
            for m in ("echo-error", "echo-answer")]})
    for model, stream in (("echo-error", False), ("echo-answer", False),
                          ("echo-answer", True)):
        status, headers, body = await _post(http, router.url, model, stream)
        assert status == (400 if model == "echo-error" else 200)
        assert headers["X-Router-Provider"] == "bad"
        assert b"sk-bad-file-key-98765" not in body
        assert b"Bearer [redacted]" in body


def test_log_lines_lose_the_secrets_tracebacks_included(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"api_key": "sk-router-shared-key", "providers": [
        {"name": "p", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
         "api_keys": ["sk-provider-secret-1"]}], "groups": []}))
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    redactor = Redactor(cfg)
    handler.addFilter(RedactingFilter(lambda: redactor))
    logger = logging.getLogger("test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("upstream said %s", "bad key sk-provider-secret-1")
        try:
            raise ValueError("header was Bearer sk-router-shared-key")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "sk-provider-secret-1" not in text and "sk-router-shared-key" not in text
    assert text.count("[redacted]") >= 2 and "ValueError: header was Bearer [redacted]" in text


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    write_config(path, config)
    return path


async def test_a_json_answer_to_a_stream_request_becomes_a_stream(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer) -> None:
    router = await _router(start_router, await _hostile(aiohttp_server), upstream)
    stream = await router.openai().chat.completions.create(
        model="json-to-stream", messages=HELLO, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hi"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 4
    # An Anthropic client of the same answer gets Messages events, translated.
    async with router.anthropic().messages.stream(
            model="json-to-stream", max_tokens=8, messages=HELLO) as s:  # type: ignore[arg-type]
        message = await s.get_final_message()
    assert message.content[0].text == "hi" and message.usage.output_tokens == 1  # type: ignore[union-attr]


async def test_a_stream_request_answered_with_something_else_fails_over(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    router = await _router(start_router, await _hostile(aiohttp_server), upstream)
    status, headers, body = await _post(http, router.url, "not-a-completion", stream=True)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["X-Router-Provider"] == "good" and headers["X-Router-Attempts"] == "2"
    assert body.endswith(b"data: [DONE]\n\n")


async def test_a_rate_limit_header_that_is_not_a_finite_number_leaves_the_gauge_finite(
        start_router: StartRouter, aiohttp_server: AiohttpServer) -> None:
    """``float()`` reads ``-inf``, ``1e999`` and ``nan``: an upstream sending one as its
    ``x-ratelimit-remaining-*`` put -Inf in /metrics, and a ``min()`` alert on the gauge
    fired for good. Such a value is ignored like one that is not a number."""
    said = ["42", "-inf", "1e999", "nan", "-1e400", "Infinity"]

    async def chat(request: web.Request) -> web.Response:
        value = said.pop(0) if said else "7"
        return web.json_response(_ANSWER, headers={"x-ratelimit-remaining-requests": value,
                                                   "x-ratelimit-remaining-tokens": value})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    router = await start_router({
        "providers": [{"name": "up", "type": "openai", "base_url": str(server.make_url("/v1")),
                       "api_keys": ["sk-up-key-0001"]}],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}]})
    async with aiohttp.ClientSession() as http:
        for _ in range(6):
            status, _, _ = await _post(http, router.url, "g")
            assert status == 200
            text, samples = await metrics_page(router.url)
            gauges = {k: v for k, v in samples.items()
                      if k.startswith("llm_router_upstream_ratelimit_remaining{")}
            assert sorted(gauges.values()) == [42.0, 42.0], gauges  # the last finite value
            lines = [line for line in text.splitlines()
                     if line.startswith("llm_router_upstream_ratelimit_remaining{")]
            assert len(lines) == 2 and all(line.endswith(" 42.0") for line in lines), lines
        if shutil.which("promtool") is not None:
            check = subprocess.run(["promtool", "check", "metrics"], input=text,
                                   capture_output=True, text=True, check=False)
            assert check.returncode == 0, check.stdout + check.stderr
