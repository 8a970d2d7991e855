"""Native upstreams that answer oddly but possibly, as real ones do: an error as a
stream's first event, a stream cut mid-event or mid-frame, usage reported and then lost.
Each upstream here is a small aiohttp server speaking the provider's wire; the real
``openai`` and ``anthropic`` SDKs are the clients, and /metrics is read after."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from pytest_aiohttp import AiohttpServer

from llm_router.testing.bedrock import encode_event_message

from .conftest import Router, StartRouter, Upstream
from .google_keys import service_account
from .helpers import AUTH, eventually, metric_samples, openai_provider, total

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EVENT_STREAM = "application/vnd.amazon.eventstream"
ASK = [{"role": "user", "content": "Say hello"}]
TTFT_COUNT = "llm_router_time_to_first_token_seconds_count"


def sse(doc: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(doc) + b"\n\n"


def frame(event_type: str, payload: dict[str, Any]) -> bytes:
    """One Bedrock event-stream message of ``event_type``."""
    return encode_event_message({":event-type": event_type, ":content-type": "application/json",
                                 ":message-type": "event"}, orjson.dumps(payload))


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_event_message({":exception-type": exception_type,
                                 ":content-type": "application/json",
                                 ":message-type": "exception"},
                                orjson.dumps({"message": message}))


async def stream_of(request: web.Request, pieces: list[bytes],
                    content_type: str = "text/event-stream", cut: bool = False
                    ) -> web.StreamResponse:
    """A 200 streaming ``pieces`` one write each; ``cut``: the connection is dropped at
    the end instead of ending the body."""
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    for piece in pieces:
        await resp.write(piece)
        await asyncio.sleep(0.01)  # separate reads, as a model's pace gives them
    if cut:
        assert request.transport is not None
        request.transport.close()
    else:
        await resp.write_eof()
    return resp


async def serve(aiohttp_server: AiohttpServer, handler: Handler) -> str:
    """A server answering every POST with ``handler``; its root URL."""
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def native(kind: str, root: str) -> dict[str, Any]:
    """A provider named ``odd`` of type ``kind`` at ``root``."""
    extra: dict[str, Any] = {"gemini": {"api_keys": ["gk-odd"]},
                             "bedrock": {"region": "us-east-1", "api_keys": ["bedrock-api-key"]},
                             "anthropic": {"api_keys": ["sk-ant-odd"]},
                             "azure": {"api_keys": ["az-odd"], "api_version": "2024-10-21"}}[kind]
    return {"name": "odd", "type": kind, "base_url": root,
            "timeouts": {"idle": 5, "total": 20}, **extra}


async def router_for(start_router: StartRouter, provider: dict[str, Any],
                     fallback: Upstream | None = None) -> Router:
    """Group ``g``: the odd provider first, then (if given) an OpenAI fake."""
    members = [{"provider": "odd", "name": "m"}]
    providers = [provider]
    if fallback is not None:
        providers.append(openai_provider("good", fallback))
        members.append({"provider": "good", "name": "m"})
    return await start_router({"providers": providers, "groups": [
        {"name": "g", "strategy": "priority", "models": members}]})


# ------------------------------------------------------ an error as the first event


async def _gemini_unavailable_first(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [sse({"error": {
        "code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})])


async def _bedrock_throttled_first(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [exception_frame("throttlingException",
                                                     "Too many requests")], EVENT_STREAM)


async def _anthropic_overloaded_first(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [sse({"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}, "error")])


# How Azure opens a stream: a chunk with no choice, only the prompt's filter results.
AZURE_PROMPT_FILTER = sse({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                           "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
                               "hate": {"filtered": False, "severity": "safe"}}}]})
AZURE_SERVER_ERROR = sse({"error": {"message": "The server had an error while processing "
                                    "your request.", "type": "server_error", "param": None,
                                    "code": None}})
AZURE_RATE_LIMITED = sse({"error": {"message": "Rate limit is exceeded.",
                                    "type": "rate_limit_exceeded", "param": None,
                                    "code": "429"}})


async def _azure_error_after_prompt_filter(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [AZURE_PROMPT_FILTER, AZURE_SERVER_ERROR])


async def _azure_throttled_after_prompt_filter_in_one_read(
        request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [AZURE_PROMPT_FILTER + AZURE_RATE_LIMITED])


async def _bedrock_started_then_throttled(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [frame("messageStart", {"role": "assistant"}),
                                     exception_frame("throttlingException", "Slow down")],
                           EVENT_STREAM)


# How Anthropic opens every stream: message_start (the input usage) and maybe a ping,
# neither of them any part of the answer. An overload often comes right after them.
ANTHROPIC_START = sse({"type": "message_start", "message": {
    "id": "msg_odd", "type": "message", "role": "assistant", "model": "m", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 1234, "output_tokens": 1}}}, "message_start")
ANTHROPIC_PING = sse({"type": "ping"}, "ping")


def anthropic_error(kind: str, message: str) -> bytes:
    return sse({"type": "error", "error": {"type": kind, "message": message}}, "error")


async def _anthropic_started_then_overloaded(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [ANTHROPIC_START, ANTHROPIC_PING,
                                     anthropic_error("overloaded_error", "Overloaded")])


async def _anthropic_started_then_rate_limited_in_one_read(
        request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [ANTHROPIC_START + ANTHROPIC_PING + anthropic_error(
        "rate_limit_error", "Number of request tokens has exceeded your rate limit")])


async def _anthropic_started_then_api_error(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [ANTHROPIC_START,
                                     anthropic_error("api_error", "Internal server error")])


FIRST_EVENT_ERRORS = [
    # (provider type, upstream, whether the error says it is throttled or overloaded)
    pytest.param("gemini", _gemini_unavailable_first, False, id="gemini-unavailable"),
    pytest.param("bedrock", _bedrock_throttled_first, True, id="bedrock-throttling"),
    # messageStart says who speaks, not what: the exception after it is the first answer.
    pytest.param("bedrock", _bedrock_started_then_throttled, True,
                 id="bedrock-start-then-throttling"),
    pytest.param("anthropic", _anthropic_overloaded_first, True, id="anthropic-overloaded"),
    # message_start and ping say who answers and what the prompt cost, not what: the
    # error after them is the stream's first event.
    pytest.param("anthropic", _anthropic_started_then_overloaded, True,
                 id="anthropic-start-ping-then-overloaded"),
    pytest.param("anthropic", _anthropic_started_then_rate_limited_in_one_read, True,
                 id="anthropic-start-ping-then-rate-limited"),
    pytest.param("anthropic", _anthropic_started_then_api_error, False,
                 id="anthropic-start-then-api-error"),
    # The prompt-filter chunk is no answer: the error after it is the stream's first event.
    pytest.param("azure", _azure_error_after_prompt_filter, False,
                 id="azure-filter-then-error"),
    pytest.param("azure", _azure_throttled_after_prompt_filter_in_one_read, True,
                 id="azure-filter-then-throttled"),
]


@pytest.mark.parametrize(("kind", "handler", "throttled"), FIRST_EVENT_ERRORS)
async def test_an_error_as_the_first_event_fails_over_before_any_byte(
        kind: str, handler: Handler, throttled: bool, start_router: StartRouter,
        upstream: Upstream, aiohttp_server: AiohttpServer) -> None:
    # Nothing reached the client when the upstream's stream opened with its error: the
    # next member answers, as after a 5xx or a 429 (docs/resilience.md, Failover).
    router = await router_for(start_router, native(kind, await serve(aiohttp_server, handler)),
                              upstream)
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "good"
    assert raw.headers["X-Router-Attempts"] == "2"
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text
    async with router.anthropic().messages.stream(model="g", max_tokens=50,
                                                  messages=ASK) as stream:  # type: ignore[arg-type]
        message = await stream.get_final_message()
    assert message.stop_reason is not None and message.content
    # A throttle cools the key as a 429 would: the second request goes straight on.
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd",
                 reason="stream_error") == (1 if throttled else 2)
    # Time to first token is the answering attempt's: the failed one delivered none.
    assert total(samples, TTFT_COUNT, provider="odd") == 0
    assert total(samples, TTFT_COUNT, provider="good") == 2
    # Nor is it charged: what it reported (message_start's input tokens) is no answer.
    assert total(samples, "llm_router_tokens_total", provider="odd") == 0
    assert total(samples, "llm_router_tokens_total", provider="good", kind="prompt") > 0


@pytest.mark.parametrize(("kind", "handler", "throttled"), FIRST_EVENT_ERRORS)
async def test_an_error_as_the_first_event_of_the_only_member_is_an_error_status(
        kind: str, handler: Handler, throttled: bool, start_router: StartRouter,
        aiohttp_server: AiohttpServer) -> None:
    # A throttle (Anthropic's overloaded_error too) is a 429, as the same error in a status.
    root = await serve(aiohttp_server, handler)
    router = await router_for(start_router, native(kind, root))
    with pytest.raises(openai.APIStatusError) as caught:
        stream = await router.openai().chat.completions.create(
            model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
    assert caught.value.status_code == (429 if throttled else 502)
    assert caught.value.response.headers["Content-Type"].startswith("application/json")
    assert total(await metric_samples(router.url), TTFT_COUNT) == 0
    # An Anthropic client (passed through to an Anthropic upstream) gets the same status,
    # in Anthropic's error shape, not a 200 stream that only ends in the error. (A router
    # of its own: the first one's key may be cooling now.)
    router = await router_for(start_router, native(kind, root))
    client = router.anthropic()
    with pytest.raises(anthropic.APIStatusError) as refused:
        async with client.messages.stream(model="g", max_tokens=50,
                                          messages=ASK) as stream:  # type: ignore[arg-type]
            await stream.get_final_message()
    assert refused.value.status_code == (429 if throttled else 502)
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    samples = await metric_samples(router.url)
    assert total(samples, TTFT_COUNT) == 0
    assert total(samples, "llm_router_tokens_total") == 0


async def test_a_first_event_blaming_the_request_is_not_retried_elsewhere(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer) -> None:
    async def invalid(request: web.Request) -> web.StreamResponse:
        return await stream_of(request, [sse({"error": {
            "code": 400, "message": "Request contains an invalid argument.",
            "status": "INVALID_ARGUMENT"}})])

    router = await router_for(start_router, native("gemini", await serve(aiohttp_server, invalid)),
                              upstream)
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "odd"
    with pytest.raises(openai.APIError, match="invalid argument"):
        async for _ in raw.parse():
            pass
    assert upstream.fake.requests == []
    # An error event is no first token, even when it is the answer.
    assert total(await metric_samples(router.url), TTFT_COUNT) == 0


async def test_an_error_blaming_the_request_after_message_start_is_passed_on(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # Held message_start or not, an error that blames the request goes to the client as
    # the upstream sent it (in-band, after the held events): another member would refuse
    # the request too.
    async def invalid(request: web.Request) -> web.StreamResponse:
        return await stream_of(request, [ANTHROPIC_START, anthropic_error(
            "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum")])

    router = await router_for(start_router, native("anthropic", await serve(aiohttp_server,
                                                                             invalid)), upstream)
    async with http.post(router.url + "/v1/messages", headers=AUTH,
                         json={"model": "g", "max_tokens": 50, "messages": ASK,
                               "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Router-Provider"] == "odd"
        body = await resp.read()
    assert body == ANTHROPIC_START + anthropic_error(
        "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum")
    assert upstream.fake.requests == []


async def test_an_azure_stream_of_filter_results_alone_fails_over(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # The prompt-filter chunk and then the end of the body: no answer was given, and the
    # held chunk was never sent, so the next member answers the whole request.
    async def filter_then_end(request: web.Request) -> web.StreamResponse:
        return await stream_of(request, [AZURE_PROMPT_FILTER])

    router = await router_for(start_router,
                              native("azure", await serve(aiohttp_server, filter_then_end)),
                              upstream)
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": ASK, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Router-Provider"] == "good"
        body = await resp.read()
    assert b"prompt_filter_results" not in body and body.endswith(b"data: [DONE]\n\n")
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd",
                 reason="closed") == 1


async def _first_event_then_rest(http: aiohttp.ClientSession, url: str,
                                 body: dict[str, Any], go_on: asyncio.Event
                                 ) -> tuple[bytes, bytes]:
    """A 200 stream's first event, read while the upstream waits on ``go_on``; then (set)
    the rest of it."""
    async with http.post(url, headers=AUTH, json=body) as resp:
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        go_on.set()
        return first, await resp.read()


async def test_an_azure_stream_held_at_its_filter_results_gets_keepalives(
        start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # A reasoning model: the prompt-filter chunk at once, the answer much later. While the
    # held chunk waits for it, the client gets keepalive comments as while waiting for a
    # first event, then the filter results and the answer.
    answer = asyncio.Event()

    async def thinks(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(AZURE_PROMPT_FILTER)
        await answer.wait()
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                              "finish_reason": "stop"}]}
        await resp.write(sse(chunk) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    router = await start_router({
        "keepalive_s": 0.1, "providers": [native("azure", await serve(aiohttp_server, thinks))],
        "groups": [{"name": "g", "models": [{"provider": "odd", "name": "m"}]}]})
    first, rest = await _first_event_then_rest(
        http, router.url + "/v1/chat/completions",
        {"model": "g", "messages": ASK, "stream": True}, answer)
    assert first == b": keepalive\n\n"
    events = [e for e in rest.split(b"\n\n") if e and e != b": keepalive"]
    assert b"prompt_filter_results" in events[0]
    assert b'"content":"Hi"' in events[1] and events[-1] == b"data: [DONE]"


async def test_an_anthropic_stream_of_message_start_alone_fails_over(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # message_start, a ping and the end of the body: no answer was given, and the held
    # events were never sent, so the next member answers the whole request, uncharged.
    async def start_then_end(request: web.Request) -> web.StreamResponse:
        return await stream_of(request, [ANTHROPIC_START, ANTHROPIC_PING])

    router = await router_for(start_router,
                              native("anthropic", await serve(aiohttp_server, start_then_end)),
                              upstream)
    async with http.post(router.url + "/v1/messages", headers=AUTH,
                         json={"model": "g", "max_tokens": 50, "messages": ASK,
                               "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Router-Provider"] == "good"
        body = await resp.read()
    assert b"msg_odd" not in body and body.count(b"event: message_start") == 1
    assert body.rstrip().endswith(b'{"type":"message_stop"}')
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd",
                 reason="closed") == 1
    assert total(samples, "llm_router_tokens_total", provider="odd") == 0


@pytest.mark.parametrize("route", ["/v1/messages", "/v1/chat/completions"])
async def test_an_anthropic_stream_held_at_its_message_start_gets_keepalives(
        route: str, start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # message_start at once, the answer much later (a long prompt to read). While the
    # held message_start waits for it, the client gets keepalive comments as while
    # waiting for a first event, then the whole answer, its input usage counted.
    answer = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(ANTHROPIC_START + ANTHROPIC_PING)
        await answer.wait()
        for name, data in [
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "Hi"}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {
                    "stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 2}}),
                ("message_stop", {"type": "message_stop"})]:
            await resp.write(sse(data, name))
        await resp.write_eof()
        return resp

    router = await start_router({
        "keepalive_s": 0.1,
        "providers": [native("anthropic", await serve(aiohttp_server, slow))],
        "groups": [{"name": "g", "models": [{"provider": "odd", "name": "m"}]}]})
    body = {"model": "g", "max_tokens": 50, "messages": ASK, "stream": True}
    first, rest = await _first_event_then_rest(http, router.url + route, body, answer)
    assert first == b": keepalive\n\n"
    events = [e for e in rest.split(b"\n\n") if e and e != b": keepalive"]
    if route == "/v1/messages":
        assert events[0].startswith(b"event: message_start") and b"msg_odd" in events[0]
        assert events[-1].startswith(b"event: message_stop")
    else:
        assert b'"role":"assistant"' in events[0] and events[-1] == b"data: [DONE]"
    assert b'"Hi"' in rest
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", provider="odd", kind="prompt") == 1234
    assert total(samples, "llm_router_tokens_total", provider="odd", kind="completion") == 2

async def test_an_azure_stream_of_endless_filter_results_is_held_only_so_far(
        start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # An upstream that sends filter-only chunks without end had them all held (and all
    # read again at each read: 20 MB of them stalled every client of the router for 3 s).
    # Past 64 KiB of them they go out, as any stream's events, without waiting for more.
    release = asyncio.Event()

    async def filters_without_end(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(100):  # 20-30 KB a write, about 2.5 MB in all
            await resp.write(AZURE_PROMPT_FILTER * 100)
        await release.wait()
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                              "finish_reason": "stop"}]}
        await resp.write(sse(chunk) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    router = await router_for(start_router,
                              native("azure", await serve(aiohttp_server, filters_without_end)))
    first, rest = await _first_event_then_rest(
        http, router.url + "/v1/chat/completions",
        {"model": "g", "messages": ASK, "stream": True}, release)
    assert b"prompt_filter_results" in first
    assert b'"content":"Hi"' in rest and rest.endswith(b"data: [DONE]\n\n")


async def test_an_anthropic_stream_of_endless_pings_is_held_only_so_far(
        start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # message_start and pings are held as Azure's filter chunks are, with the same bound.
    release = asyncio.Event()

    async def pings_without_end(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(ANTHROPIC_START)
        for _ in range(100):  # about 4 KB a write, 400 KB in all
            await resp.write(ANTHROPIC_PING * 100)
        await release.wait()
        await resp.write(sse({"type": "error", "error": {"type": "overloaded_error",
                                                         "message": "Overloaded"}}, "error"))
        await resp.write_eof()
        return resp

    router = await router_for(start_router,
                              native("anthropic", await serve(aiohttp_server, pings_without_end)))
    first, rest = await _first_event_then_rest(
        http, router.url + "/v1/messages",
        {"model": "g", "max_tokens": 50, "messages": ASK, "stream": True}, release)
    assert first.startswith(b"event: message_start")
    assert b"event: ping" in rest and b"overloaded_error" in rest  # in-band, as once begun


# ------------------------------------------------------ Claude on Vertex AI

VERTEX_CLAUDE = "claude-sonnet-4-5@20250929"
VERTEX_STREAM_PATH = ("/v1/projects/test-project/locations/europe-west4/publishers/anthropic/"
                      f"models/{VERTEX_CLAUDE}:streamRawPredict")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def vertex_claude(aiohttp_server: AiohttpServer, tmp_path: Path, upstream: Upstream,
                        events: list[bytes]) -> dict[str, Any]:
    """A provider ``odd`` of type vertex serving one Claude model, whose upstream speaks
    Vertex's wire: ``POST /token`` takes the service account's signed JWT (the RS256
    signature checked with the test key, as Google does) for an access token, and
    ``:streamRawPredict`` takes only that token, a Messages body without ``model`` and
    with Vertex's ``anthropic_version``, and answers 200 with ``events`` (Anthropic's SSE
    wire), one write each."""
    issued: set[str] = set()
    account: dict[str, Any] = {}  # the key and token URL, once the server has its port

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        head, claims, signature = str(form["assertion"]).split(".")
        account["key"].public_key().verify(_unb64(signature), f"{head}.{claims}".encode(),
                                           padding.PKCS1v15(), hashes.SHA256())
        assert orjson.loads(_unb64(claims))["aud"] == account["uri"]
        issued.add(f"ya29.odd-{len(issued)}")
        return web.json_response({"access_token": f"ya29.odd-{len(issued) - 1}",
                                  "expires_in": 3600, "token_type": "Bearer"})

    async def stream_raw_predict(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in issued:
            return web.json_response({"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                "message": "Request had invalid credentials."}},
                                     status=401)
        body = orjson.loads(await request.read())
        assert request.path == VERTEX_STREAM_PATH
        assert "model" not in body and body["stream"] is True
        assert body["anthropic_version"] == "vertex-2023-10-16"
        return await stream_of(request, events)

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/{tail:.*}", stream_raw_predict)
    root = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    account["uri"] = root + "/token"
    path, account["key"] = service_account(tmp_path, upstream.fake, account["uri"], "odd")
    return {"name": "odd", "type": "vertex", "project": "test-project",
            "location": "europe-west4", "base_url": root, "credentials": str(path),
            "timeouts": {"idle": 5, "total": 20}}


async def vertex_router(start_router: StartRouter, provider: dict[str, Any],
                        fallback: Upstream | None = None) -> Router:
    """Group ``g``: the Vertex Claude member first, then (if given) an OpenAI fake."""
    members = [{"provider": "odd", "name": VERTEX_CLAUDE}]
    providers = [provider]
    if fallback is not None:
        providers.append(openai_provider("good", fallback))
        members.append({"provider": "good", "name": "m"})
    return await start_router({"providers": providers, "groups": [
        {"name": "g", "strategy": "priority", "models": members}]})


# Claude on Vertex speaks Anthropic's stream as it is, so it opens as Anthropic's does
# and reports an overload the same way: inside the 200, after message_start and a ping.
VERTEX_OVERLOADED = [ANTHROPIC_START, ANTHROPIC_PING,
                     anthropic_error("overloaded_error", "Overloaded")]


async def test_a_vertex_claude_stream_overloaded_after_message_start_fails_over(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        tmp_path: Path) -> None:
    provider = await vertex_claude(aiohttp_server, tmp_path, upstream, VERTEX_OVERLOADED)
    router = await vertex_router(start_router, provider, upstream)
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "good"
    assert raw.headers["X-Router-Attempts"] == "2"
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text
    async with router.anthropic().messages.stream(model="g", max_tokens=50,
                                                  messages=ASK) as stream:  # type: ignore[arg-type]
        message = await stream.get_final_message()
    assert message.stop_reason is not None and message.content
    assert b"msg_odd" not in orjson.dumps(message.model_dump())
    assert len(upstream.fake.requests) == 2  # the good member answered both
    # The overload cooled the key as a 429 would: the second request went straight on.
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd",
                 reason="stream_error") == 1
    assert total(samples, TTFT_COUNT, provider="odd") == 0
    assert total(samples, "llm_router_tokens_total", provider="odd") == 0


async def test_a_vertex_claude_stream_overloaded_after_message_start_alone_is_a_429(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer,
        tmp_path: Path) -> None:
    provider = await vertex_claude(aiohttp_server, tmp_path, upstream, VERTEX_OVERLOADED)
    router = await vertex_router(start_router, provider)
    with pytest.raises(openai.RateLimitError) as caught:
        chunks = await router.openai().chat.completions.create(
            model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
        async for _ in chunks:
            pass
    assert caught.value.response.headers["Content-Type"].startswith("application/json")
    # An Anthropic client, passed through to Vertex: the same status in Anthropic's shape.
    # (A router of its own: the first one's key is cooling now.)
    router = await vertex_router(start_router, provider)
    with pytest.raises(anthropic.RateLimitError) as refused:
        async with router.anthropic().messages.stream(
                model="g", max_tokens=50, messages=ASK) as stream:  # type: ignore[arg-type]
            await stream.get_final_message()
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    samples = await metric_samples(router.url)
    assert total(samples, TTFT_COUNT) == 0
    assert total(samples, "llm_router_tokens_total") == 0


# ------------------------------------------------------ a stream broken after its start

GEMINI_USAGE = {"promptTokenCount": 1234, "candidatesTokenCount": 2, "totalTokenCount": 1236}


def gemini_text(text: str, finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]},
                                 "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": GEMINI_USAGE,
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"}


async def _gemini_cut_mid_event(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [sse(gemini_text("Hel")), sse(gemini_text("lo"))[:25]],
                           cut=True)


async def _gemini_error_after_text(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [sse(gemini_text("Hel")), sse({"error": {
        "code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}})])


async def _gemini_ends_without_finish(request: web.Request) -> web.StreamResponse:
    return await stream_of(request, [sse(gemini_text("Hel")), sse(gemini_text("lo"))])


async def _broken_twice(router: Router, stream: Any, match: str | None) -> str:
    """Read ``stream`` (an openai SDK stream) to its in-band error (matching ``match``, if
    given), then ask the same through the anthropic SDK, whose stream breaks too: the text
    the openai client got."""
    text = ""
    with pytest.raises(openai.APIError, match=match):
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    async with router.anthropic().messages.stream(model="g", max_tokens=50,
                                                  messages=ASK) as events:  # type: ignore[arg-type]
        with pytest.raises(anthropic.APIStatusError):
            await events.get_final_message()
    return text


async def _counts_what_gemini_reported(router: Router, http: aiohttp.ClientSession) -> None:
    """Two broken streams, each with 1,234 prompt tokens in Gemini's running usage: the
    metrics and the user's usage report count what Gemini said, not an estimate."""
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", provider="odd", kind="prompt") == 2 * 1234
    # Two completion tokens reported, but never fewer than one per event relayed.
    completion = total(samples, "llm_router_tokens_total", provider="odd", kind="completion")
    assert 4 <= completion <= 6
    async with http.get(router.url + "/admin/usage", headers=AUTH) as resp:
        report = await resp.json()
    (user,) = [u for u in report["users"] if u["name"] == "default"]
    assert user["usage"]["total"]["prompt_tokens"] == 2 * 1234
    assert user["usage"]["total"]["completion_tokens"] == completion


@pytest.mark.parametrize("handler", [
    pytest.param(_gemini_cut_mid_event, id="cut-mid-event"),
    pytest.param(_gemini_error_after_text, id="error-event"),
    pytest.param(_gemini_ends_without_finish, id="no-finish-reason")])
async def test_a_broken_gemini_stream_counts_the_usage_it_reported(
        handler: Handler, start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # Gemini repeats its running usage on every event: what it said before the break is
    # what the router counts ("Streams cut short" in docs/anthropic.md), not its estimate.
    router = await router_for(start_router, native("gemini", await serve(aiohttp_server, handler)))
    stream = await router.openai().chat.completions.create(
        model="g", messages=ASK, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    assert (await _broken_twice(router, stream, None)).startswith("Hel")
    await _counts_what_gemini_reported(router, http)


async def test_a_gemini_stream_that_stalls_counts_the_usage_it_reported(
        start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # Two events, each with Gemini's running usage, then silence past the idle timeout:
    # the stream ends in-band as timed out, and what Gemini reported is what the router
    # counts, as for a stream cut or ended by an error event (above), not its estimate.
    async def stalls(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for text in ("Hel", "lo"):
            await resp.write(sse(gemini_text(text)))
            await asyncio.sleep(0.01)
        await asyncio.Event().wait()  # until the router hangs up (the handler is cancelled)
        return resp

    provider = {**native("gemini", await serve(aiohttp_server, stalls)),
                "timeouts": {"idle": 0.3, "total": 20}}
    router = await router_for(start_router, provider)
    stream = await router.openai().chat.completions.create(
        model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
    assert await _broken_twice(router, stream, r"interrupted \(timeout\)") == "Hello"
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd",
                 reason="timeout") == 2
    await _counts_what_gemini_reported(router, http)


async def test_a_gemini_stream_the_client_leaves_counts_the_usage_it_reported(
        start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # The client reads the first text and hangs up while Gemini is still answering: the
    # tokens counted are Gemini's running usage, not the router's estimate.
    async def answering(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(gemini_text("Hel")))
        await asyncio.Event().wait()  # until the router hangs up (the handler is cancelled)
        return resp

    router = await router_for(start_router,
                              native("gemini", await serve(aiohttp_server, answering)))
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": "g", "messages": ASK, "stream": True}) as resp:
        assert resp.status == 200
        await resp.content.readuntil(b"Hel")
    # Leaving the block closed the connection: the router stops and counts.

    async def counted() -> bool:
        samples = await metric_samples(router.url)
        return total(samples, "llm_router_tokens_total", provider="odd", kind="prompt") > 0

    await eventually(counted)
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", provider="odd", kind="prompt") == 1234
    assert 2 <= total(samples, "llm_router_tokens_total", provider="odd",
                      kind="completion") <= 3


BEDROCK_TEXT = [frame("messageStart", {"role": "assistant"}),
                frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
                frame("contentBlockStop", {"contentBlockIndex": 0}),
                frame("messageStop", {"stopReason": "end_turn"})]
BEDROCK_METADATA = frame("metadata", {"usage": {"inputTokens": 1234, "outputTokens": 2,
                                                "totalTokens": 1236},
                                      "metrics": {"latencyMs": 90}})


async def test_a_bedrock_stream_ending_inside_a_frame_is_cut_not_complete(
        start_router: StartRouter, aiohttp_server: AiohttpServer) -> None:
    # The body ends cleanly, but in the middle of the metadata frame (its usage): the
    # stream broke, so the client's stream ends with an error and the router counts its
    # estimate, not the zero usage of a complete answer that reported none.
    async def truncated(request: web.Request) -> web.StreamResponse:
        return await stream_of(request, [*BEDROCK_TEXT, BEDROCK_METADATA[:30]], EVENT_STREAM)

    router = await router_for(start_router,
                              native("bedrock", await serve(aiohttp_server, truncated)))
    stream = await router.openai().chat.completions.create(
        model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError, match="interrupted"):
        async for _ in stream:
            pass
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd",
                 reason="closed") == 1
    assert total(samples, "llm_router_tokens_total", provider="odd", kind="prompt") > 0
    assert total(samples, "llm_router_tokens_total", provider="odd", kind="completion") >= 3


async def test_a_gemini_stream_of_usage_alone_fails_over(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer) -> None:
    # No candidate, no finishReason, no blockReason: nothing to answer with, so nothing
    # was sent, and the next member answers.
    async def usage_only(request: web.Request) -> web.StreamResponse:
        return await stream_of(request, [sse({"candidates": [], "usageMetadata": GEMINI_USAGE})])

    router = await router_for(start_router,
                              native("gemini", await serve(aiohttp_server, usage_only)), upstream)
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "good"
    assert "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])


# ------------------------------------------------------ a 200 without an answer

BEDROCK_USAGE = {"inputTokens": 1234, "outputTokens": 0, "totalTokens": 1234}
BEDROCK_START = frame("messageStart", {"role": "assistant"})
BEDROCK_USAGE_FRAME = frame("metadata", {"usage": BEDROCK_USAGE, "metrics": {"latencyMs": 9}})


def bedrock_answers(answer: dict[str, Any], frames: list[bytes]) -> Handler:
    """Converse answers ``answer``, ConverseStream ``frames``."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/converse-stream"):
            return await stream_of(request, frames, EVENT_STREAM)
        return web.json_response(answer)
    return handler


NO_OUTPUT = [
    pytest.param({"usage": BEDROCK_USAGE, "metrics": {"latencyMs": 9}},
                 [BEDROCK_START, BEDROCK_USAGE_FRAME], id="no-message"),
    pytest.param({"output": {"message": {"role": "assistant", "content": []}},
                  "usage": BEDROCK_USAGE}, [BEDROCK_USAGE_FRAME], id="no-content-no-stop"),
    pytest.param({"output": {}, "stopReason": "end_turn", "usage": BEDROCK_USAGE},
                 [BEDROCK_START], id="no-message-then-end"),
]


@pytest.mark.parametrize(("answer", "frames"), NO_OUTPUT)
async def test_a_bedrock_200_without_output_fails_over(
        answer: dict[str, Any], frames: list[bytes], start_router: StartRouter,
        upstream: Upstream, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # No message, or no content block and no stop reason: Bedrock gave no answer, so the
    # next member gives one (streamed too: nothing was sent before the answer began), and
    # only that answer is counted.
    router = await router_for(start_router, native("bedrock", await serve(
        aiohttp_server, bedrock_answers(answer, frames))), upstream)
    for stream in (False, True):
        async with http.post(router.url + "/v1/chat/completions", headers=AUTH, json={
                "model": "g", "messages": ASK, "stream": stream}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Router-Provider"] == "good"
            assert resp.headers["X-Router-Attempts"] == "2"
            body = await resp.read()
        assert b"lorem" in body and b'"error"' not in body
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd") == 2
    assert total(samples, "llm_router_tokens_total", provider="odd") == 0
    assert total(samples, "llm_router_tokens_total", provider="good", kind="prompt") > 0


async def test_a_bedrock_stream_repeating_message_start_has_one_role_chunk_held(
        start_router: StartRouter, aiohttp_server: AiohttpServer,
        http: aiohttp.ClientSession) -> None:
    # messageStart's role chunk is held until the answer begins. An upstream repeating
    # messageStart had each copy held (joined one at a time: 100,000 kept the router's
    # loop busy for 110 s) and sent: only one is held, and the client gets one.
    async def starts_again_and_again(request: web.Request) -> web.StreamResponse:
        return await stream_of(request, [frame("messageStart", {"role": "assistant"}) * 500] * 4 + [
            frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            frame("messageStop", {"stopReason": "end_turn"}),
            frame("metadata", {"usage": {"inputTokens": 3, "outputTokens": 1,
                                         "totalTokens": 4}})], EVENT_STREAM)

    router = await router_for(start_router, native("bedrock", await serve(
        aiohttp_server, starts_again_and_again)))
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH, json={
            "model": "g", "messages": ASK, "stream": True}) as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body.count(b'"role":"assistant"') == 1
    assert b'"content":"Hi"' in body and body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(("answer", "frames"), NO_OUTPUT)
async def test_a_bedrock_200_without_output_from_the_only_member_is_a_502(
        answer: dict[str, Any], frames: list[bytes], start_router: StartRouter,
        aiohttp_server: AiohttpServer) -> None:
    router = await router_for(start_router, native("bedrock", await serve(
        aiohttp_server, bedrock_answers(answer, frames))))
    client = router.openai()
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="g", messages=ASK)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "upstream_error"  # type: ignore[index]
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="g", messages=ASK,  # type: ignore[arg-type]
                                             stream=True)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["Content-Type"].startswith("application/json")
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", provider="odd") == 0


async def test_a_bedrock_answer_that_ends_with_nothing_to_say_is_an_answer(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer) -> None:
    # No content block, but a stop reason: the model did answer, with nothing (as Claude
    # may after a tool result). That is passed on, and counted, not retried elsewhere.
    answer = {"output": {"message": {"role": "assistant", "content": []}},
              "stopReason": "end_turn", "usage": BEDROCK_USAGE}
    frames = [BEDROCK_START, frame("messageStop", {"stopReason": "end_turn"}),
              BEDROCK_USAGE_FRAME]
    router = await router_for(start_router, native("bedrock", await serve(
        aiohttp_server, bedrock_answers(answer, frames))), upstream)
    client = router.openai()
    whole = await client.chat.completions.with_raw_response.create(
        model="g", messages=ASK)  # type: ignore[arg-type]
    assert whole.headers["X-Router-Provider"] == "odd"
    choice = whole.parse().choices[0]
    assert choice.finish_reason == "stop" and not choice.message.content
    chunks = [c async for c in await client.chat.completions.create(
        model="g", messages=ASK, stream=True)]  # type: ignore[arg-type]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_tokens_total", provider="odd", kind="prompt") == 2 * 1234
    assert upstream.fake.requests == []


async def test_a_gemini_answer_without_candidates_fails_over(
        start_router: StartRouter, upstream: Upstream, aiohttp_server: AiohttpServer) -> None:
    # Usage and no candidate, not blocked: no answer (as the stream of usage alone above),
    # not a completion with no choices, which clients index and fail on.
    async def usage_only(request: web.Request) -> web.StreamResponse:
        return web.json_response({"usageMetadata": GEMINI_USAGE, "responseId": "r1"})

    router = await router_for(start_router,
                              native("gemini", await serve(aiohttp_server, usage_only)), upstream)
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=ASK)  # type: ignore[arg-type]
    assert raw.headers["X-Router-Provider"] == "good"
    assert raw.parse().choices[0].message.content
    samples = await metric_samples(router.url)
    assert total(samples, "llm_router_upstream_errors_total", provider="odd",
                 reason="bad_response") == 1
    assert total(samples, "llm_router_tokens_total", provider="odd") == 0


# ------------------------------------------------------ bounded by the configured limits


async def _one_endless_gemini_event(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b'data: {"candidates": [{"content": {"parts": [{"text": "')
    sent = 0
    try:  # until the router hangs up (the handler is then cancelled, or its write fails)
        while sent < 80 * 1024 * 1024:  # past any bound a router could have
            await resp.write(b"x" * 65536)
            sent += 65536
    except ConnectionError:
        pass
    finally:
        request.app[WRITTEN].append(sent)
    return resp


async def _one_huge_bedrock_frame(request: web.Request) -> web.StreamResponse:
    huge = frame("contentBlockDelta", {"contentBlockIndex": 0,
                                       "delta": {"text": "x" * (6 * 1024 * 1024)}})
    resp = web.StreamResponse(headers={"Content-Type": EVENT_STREAM})
    await resp.prepare(request)
    sent = 0
    try:
        for at in range(0, len(huge), 65536):
            await resp.write(huge[at:at + 65536])
            sent += 65536
    except ConnectionError:
        pass
    finally:
        request.app[WRITTEN].append(sent)
    return resp


WRITTEN: web.AppKey[list[int]] = web.AppKey("written", list)


@pytest.mark.parametrize(("kind", "handler"), [
    pytest.param("gemini", _one_endless_gemini_event, id="gemini"),
    pytest.param("bedrock", _one_huge_bedrock_frame, id="bedrock")])
async def test_one_huge_upstream_event_is_refused_at_max_event_bytes(
        kind: str, handler: Handler, start_router: StartRouter,
        aiohttp_server: AiohttpServer) -> None:
    # The bound is the configured one, applied to the upstream's own event (a Gemini
    # SSE event, a Bedrock frame) as it arrives: not a fixed one of many megabytes
    # buffered first and refused only once translated. A Bedrock frame says its length
    # in its first bytes, so none of it needs reading.
    app = web.Application()
    app[WRITTEN] = []
    app.router.add_route("POST", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    router = await start_router({
        "providers": [native(kind, str(server.make_url("")).rstrip("/"))],
        "groups": [{"name": "g", "models": [{"provider": "odd", "name": "m"}]}],
        "upstream_limits": {"max_event_bytes": 65536}})
    with pytest.raises(openai.APIStatusError) as caught:
        stream = await router.openai().chat.completions.create(
            model="g", messages=ASK, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
    assert caught.value.status_code == 502
    assert "65536" in caught.value.message
    for _ in range(100):
        if app[WRITTEN]:
            break
        await asyncio.sleep(0.05)
    # Whatever the socket buffers held, far less than the event (80 MiB, 6 MiB).
    assert app[WRITTEN][0] < 4 * 1024 * 1024, app[WRITTEN]


# ------------------------------------------------------ tool calls


def _anthropic_no_argument_call(stream: bool) -> list[bytes] | dict[str, Any]:
    usage = {"input_tokens": 30, "output_tokens": 9}
    if not stream:
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}],
                "stop_reason": "tool_use", "stop_sequence": None, "usage": usage}
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": 30, "output_tokens": 1}}
    return [sse({"type": "message_start", "message": start}, "message_start"),
            sse({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}},
                "content_block_start"),
            sse({"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": ""}}, "content_block_delta"),
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                 "usage": {"output_tokens": 9}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop")]


async def _anthropic_tool(request: web.Request) -> web.StreamResponse:
    if (await request.json()).get("stream"):
        pieces = _anthropic_no_argument_call(True)
        assert isinstance(pieces, list)
        return await stream_of(request, pieces)
    return web.json_response(_anthropic_no_argument_call(False))


async def _bedrock_tool(request: web.Request) -> web.StreamResponse:
    if request.path.endswith("/converse-stream"):
        return await stream_of(request, [
            frame("messageStart", {"role": "assistant"}),
            frame("contentBlockStart", {"contentBlockIndex": 0, "start": {
                "toolUse": {"toolUseId": "tooluse_1", "name": "now"}}}),
            frame("contentBlockStop", {"contentBlockIndex": 0}),
            frame("messageStop", {"stopReason": "tool_use"}), BEDROCK_METADATA], EVENT_STREAM)
    return web.json_response({
        "output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tooluse_1", "name": "now", "input": {}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 30, "outputTokens": 9}})


NOW = {"type": "function", "function": {"name": "now", "description": "The time",
                                         "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(("kind", "handler"), [
    pytest.param("anthropic", _anthropic_tool, id="anthropic"),
    pytest.param("bedrock", _bedrock_tool, id="bedrock")])
async def test_a_streamed_call_without_arguments_has_the_arguments_of_the_whole_answer(
        kind: str, handler: Handler, start_router: StartRouter,
        aiohttp_server: AiohttpServer) -> None:
    # A tool that takes no arguments: the upstream streams no argument fragment at all
    # (or an empty one). OpenAI's arguments are JSON text, "{}" then, as the same call
    # reads when not streamed; "" would fail a client's json.loads.
    router = await router_for(start_router, native(kind, await serve(aiohttp_server, handler)))
    client = router.openai()
    whole = await client.chat.completions.create(model="g", messages=ASK,  # type: ignore[arg-type]
                                                 tools=[NOW])  # type: ignore[list-item]
    calls = whole.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.arguments == "{}"  # type: ignore[union-attr]
    stream = await client.chat.completions.create(
        model="g", messages=ASK, tools=[NOW], stream=True)  # type: ignore[arg-type, list-item]
    arguments = ""
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += call.function.arguments or "" if call.function else ""
    assert arguments == "{}"
    async with router.anthropic().messages.stream(
            model="g", max_tokens=50, messages=ASK,  # type: ignore[arg-type]
            tools=[{"name": "now", "input_schema": {"type": "object"}}]) as events:
        message = await events.get_final_message()
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [("tool_use", {})]
