"""The OpenAI surface end to end: the real openai SDK → router → fake upstream."""

from __future__ import annotations

import gzip
import logging
import time
import zlib
from typing import Any

import aiohttp
import brotli
import openai
import orjson
import pytest

from .conftest import StartRouter, Upstream
from .helpers import AUTH, HELLO, ROUTER_KEY, eventually, openai_provider


def one_group(up: Upstream, **provider: Any) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up, **provider)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "real-model"}]}],
    }


async def test_openai_sdk_chat_not_streamed(start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(one_group(upstream))
    raw = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    resp = raw.parse()
    assert resp.choices[0].message.content
    assert resp.usage is not None and resp.usage.completion_tokens == 16
    assert raw.headers["X-Router-Group"] == "g"
    assert raw.headers["X-Router-Provider"] == "up"
    assert raw.headers["X-Router-Model"] == "real-model"
    assert raw.headers["X-Router-Key"] != "sk-up" and len(raw.headers["X-Router-Key"]) == 8
    assert raw.headers["X-Router-Attempts"] == "1"
    assert float(raw.headers["X-Router-Latency-Ms"]) > 0
    assert "X-Router-Cost-USD" in raw.headers
    (seen,) = upstream.fake.requests
    assert seen.api_key == "sk-up" and seen.model == "real-model"


async def test_body_is_forwarded_untouched_except_model(start_router: StartRouter,
                                                        upstream: Upstream) -> None:
    router = await start_router(one_group(upstream))
    body = {"model": "g", "messages": HELLO, "temperature": 0.3, "seed": 7, "max_tokens": 4}
    vendor = {"x_vendor_field": {"nested": [1, 2]}}
    await router.openai().chat.completions.create(**body, extra_body=vendor)  # type: ignore[call-overload]
    (seen,) = upstream.fake.requests
    # prompt_cache_key is the router's too when the client sent none (docs/affinity.md).
    assert seen.body is not None and seen.body.pop("prompt_cache_key").startswith("llmr-")
    assert seen.body == {**body, **vendor, "model": "real-model"}


async def test_openai_sdk_stream_hides_usage_chunk_unless_asked(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(one_group(upstream))
    client = router.openai()
    chunks = [c async for c in await client.chat.completions.create(
        model="g", messages=HELLO, stream=True, max_tokens=5)]  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "lorem ipsum dolor sit amet"
    assert all(c.usage is None for c in chunks)
    # …but the upstream was asked for usage, and the router counted it.
    assert upstream.fake.requests[0].body["stream_options"] == {"include_usage": True}
    assert sum(router.state.counters.tokens.values()) == 5 + upstream_prompt(upstream)

    asked = [c async for c in await client.chat.completions.create(
        model="g", messages=HELLO, stream=True, max_tokens=3,  # type: ignore[arg-type]
        stream_options={"include_usage": True})]
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 3


def upstream_prompt(up: Upstream) -> int:
    from llm_router.testing.upstream import count_prompt_tokens
    body = up.fake.requests[0].body
    assert body is not None
    return count_prompt_tokens(body)


async def test_completions_embeddings_and_models(start_router: StartRouter,
                                                 upstream: Upstream) -> None:
    router = await start_router(one_group(upstream))
    client = router.openai()
    comp = await client.completions.create(model="g", prompt="say hi", max_tokens=2)
    assert comp.choices[0].text == "lorem ipsum"
    stream = await client.completions.create(model="g", prompt="say hi", max_tokens=2,
                                             stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "lorem ipsum"
    emb = await client.embeddings.create(model="g", input=["a", "b", "c"])
    assert len(emb.data) == 3 and len(emb.data[0].embedding) == 8
    models = [m.id async for m in client.models.list()]
    assert models == ["g", "up/real-model"]


async def test_provider_slash_model_addresses_one_provider(start_router: StartRouter,
                                                           upstream: Upstream) -> None:
    router = await start_router(one_group(upstream))
    resp = await router.openai().chat.completions.create(model="up/other-model", messages=HELLO)  # type: ignore[arg-type]
    assert resp.choices[0].message.content
    assert upstream.fake.requests[-1].model == "other-model"


async def test_mock_provider_answers_without_network(start_router: StartRouter) -> None:
    router = await start_router({
        "providers": [{"name": "local", "type": "mock"}],
        "groups": [{"name": "fast", "models": [{"provider": "local", "name": "llama"}]}],
    })
    client = router.openai()
    resp = await client.chat.completions.create(model="fast", messages=HELLO)  # type: ignore[arg-type]
    assert resp.usage is not None and resp.usage.total_tokens > 0
    chunks = [c async for c in await client.chat.completions.create(
        model="fast", messages=HELLO, stream=True, max_tokens=2)]  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "lorem ipsum"


# ---------------------------------------------------------------- bad input


async def test_bad_requests_get_openai_shaped_errors_and_router_keeps_serving(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router({**one_group(upstream), "max_body_bytes": 2048})
    url = router.url + "/v1/chat/completions"
    cases: list[tuple[dict[str, str], bytes, int, str | None]] = [
        (AUTH, b"{not json", 400, "invalid_json"),
        (AUTH, b"[1, 2]", 400, "invalid_json"),
        (AUTH, b"", 400, None),
        (AUTH, orjson.dumps({"messages": HELLO}), 400, "missing_required_parameter"),
        (AUTH, orjson.dumps({"model": "g"}), 400, "missing_required_parameter"),
        (AUTH, orjson.dumps({"model": "g", "messages": HELLO, "stream": "yes"}), 400, None),
        ({}, orjson.dumps({"model": "g", "messages": HELLO}), 401, "missing_api_key"),
        ({"Authorization": "Bearer wrong"}, orjson.dumps({"model": "g", "messages": HELLO}),
         401, "invalid_api_key"),
        (AUTH, orjson.dumps({"model": "nope", "messages": HELLO}), 404, "model_not_found"),
        (AUTH, orjson.dumps({"model": "g", "messages": [{"role": "user", "content": "x" * 4096}]}),
         413, "request_too_large"),
    ]
    for headers, body, status, code in cases:
        async with http.post(url, data=body, headers=headers) as resp:
            assert resp.status == status, body
            doc = await resp.json()
            assert set(doc["error"]) == {"message", "type", "param", "code"}
            assert doc["error"]["code"] == code
            assert "Traceback" not in doc["error"]["message"]
    assert upstream.fake.requests == []
    ok = await router.openai().chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert ok.choices


async def test_an_unknown_model_access_line_keeps_the_name_sent_cut_short(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(one_group(upstream))
    caplog.set_level(logging.INFO, logger="llm_router.access")
    for model, status in (("gpt-typo", 404), ("nope/" + "x" * 250, 404),
                          ("up/" + "y" * 253, 200),  # a direct model, served
                          ("up/" + "z" * 5000, 400)):  # longer than a model name may be
        async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                             json={"model": model, "messages": HELLO}) as resp:
            assert resp.status == status
    short, long, served, refused = [orjson.loads(r.getMessage()) for r in caplog.records
                                    if r.name == "llm_router.access"]
    assert short["group"] == "gpt-typo"
    assert long["group"].startswith("nope/xxx")
    assert long["group"].endswith("... (255 characters)") and len(long["group"]) < 300
    assert served["group"].endswith("... (256 characters)")
    assert served["model"].endswith("... (253 characters)")
    assert refused["group"] == "" and refused["error"] == "invalid_model"


async def test_x_api_key_header_authenticates(start_router: StartRouter, upstream: Upstream,
                                              http: aiohttp.ClientSession) -> None:
    router = await start_router(one_group(upstream))
    async with http.get(router.url + "/v1/models", headers={"x-api-key": ROUTER_KEY}) as resp:
        assert resp.status == 200


async def test_unreachable_upstream_is_502_without_traceback(start_router: StartRouter,
                                                             upstream: Upstream) -> None:
    cfg = one_group(upstream)
    cfg["providers"][0]["base_url"] = "http://127.0.0.1:9/v1"  # discard port: refused
    router = await start_router(cfg)
    with pytest.raises(openai.APIStatusError) as exc:
        await router.openai().chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.status_code == 502
    assert "cannot connect to upstream 'up'" in exc.value.message
    assert "sk-up" not in exc.value.message


async def test_upstream_client_error_is_passed_on(start_router: StartRouter,
                                                  upstream: Upstream) -> None:
    from llm_router.testing.upstream import Fault
    router = await start_router(one_group(upstream))
    upstream.fake.add_fault(Fault(status=400))
    with pytest.raises(openai.BadRequestError):
        await router.openai().chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert len(upstream.fake.requests) == 1  # a client error is never retried


# ---------------------------------------------------------------- compression and streaming


async def _raw_stream(http: aiohttp.ClientSession, router_url: str, encoding: str | None
                      ) -> tuple[bytes, str | None]:
    headers = {**AUTH, "Accept-Encoding": encoding or "identity"}
    body = {"model": "g", "messages": HELLO, "stream": True, "max_tokens": 6}
    async with http.post(router_url + "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200
        return await r.read(), r.headers.get("Content-Encoding")


def _ids_removed(sse: bytes) -> list[Any]:
    events = []
    for block in sse.split(b"\n\n"):
        if not block:
            continue
        data = block.removeprefix(b"data: ")
        if data == b"[DONE]":
            events.append("[DONE]")
            continue
        doc = orjson.loads(data)
        doc.pop("id"), doc.pop("created")
        events.append(doc)
    return events


async def test_brotli_and_gzip_streams_decode_to_the_plain_stream(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(one_group(upstream))
    plain, enc = await _raw_stream(http, router.url, None)
    assert enc is None
    br, enc = await _raw_stream(http, router.url, "br")
    assert enc == "br"
    gz, enc = await _raw_stream(http, router.url, "gzip, deflate")
    assert enc == "gzip"
    df, enc = await _raw_stream(http, router.url, "deflate")
    assert enc == "deflate"
    expected = _ids_removed(plain)
    assert expected[-1] == "[DONE]" and len(expected) == 9
    assert _ids_removed(brotli.decompress(br)) == expected
    assert _ids_removed(gzip.decompress(gz)) == expected
    assert _ids_removed(zlib.decompress(df)) == expected


async def test_compressed_stream_events_arrive_incrementally(
        start_router: StartRouter, make_upstream: Any, http: aiohttp.ClientSession) -> None:
    slow = await make_upstream(tokens_per_second=20)  # 16 tokens ≈ 0.8 s
    router = await start_router(one_group(slow))
    arrivals: list[tuple[float, bytes]] = []
    decoder = brotli.Decompressor()
    start = time.monotonic()
    body = {"model": "g", "messages": HELLO, "stream": True}
    async with http.post(router.url + "/v1/chat/completions", json=body,
                         headers={**AUTH, "Accept-Encoding": "br"}) as resp:
        async for chunk in resp.content.iter_any():
            arrivals.append((time.monotonic() - start, decoder.process(chunk)))
    decoded = [(t, d) for t, d in arrivals if d]
    assert b"lorem" in decoded[0][1] or b"assistant" in decoded[0][1]
    # Each event was decodable as it came, so the first arrived long before the last.
    # A loaded box may coalesce a few reads into one, so the count only has to show
    # more than one flushed piece; a stream compressed as one block would decode once.
    assert decoded[-1][0] - decoded[0][0] > 0.4
    assert len(decoded) >= 3


async def test_large_json_answer_is_compressed(start_router: StartRouter, upstream: Upstream,
                                               http: aiohttp.ClientSession) -> None:
    router = await start_router(one_group(upstream))
    body = {"model": "g", "messages": HELLO, "max_tokens": 400}
    async with http.post(router.url + "/v1/chat/completions", json=body,
                         headers={**AUTH, "Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        doc = orjson.loads(gzip.decompress(await resp.read()))
    assert doc["usage"]["completion_tokens"] == 400


async def test_client_disconnect_mid_stream_frees_inflight(
        start_router: StartRouter, make_upstream: Any) -> None:
    slow = await make_upstream(tokens_per_second=10)
    router = await start_router(one_group(slow))
    async with aiohttp.ClientSession() as s:
        resp = await s.post(router.url + "/v1/chat/completions", headers=AUTH,
                            json={"model": "g", "messages": HELLO, "stream": True})
        await resp.content.readline()
        assert router.state.inflight == 1
        assert router.state.counters.inflight
        resp.close()
    await eventually(lambda: router.state.inflight == 0)
    assert router.state.counters.inflight == {}
    assert sum(router.state.counters.tokens.values()) > 0  # counted for what it used
