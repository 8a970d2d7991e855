"""OpenTelemetry traces (``otel``): spans arrive at a real OTLP/HTTP receiver.

The receiver is a small aiohttp server that decodes each export with the
``opentelemetry-proto`` messages, as a collector would; the router exports to it over
loopback from the SDK's batch processor.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from pytest_aiohttp import AiohttpServer

from llm_router.testing.upstream import Fault

from .conftest import StartRouter, Upstream
from .helpers import AUTH, openai_provider

SECRET_PROMPT = "the password is swordfish"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@dataclass
class SpanRecord:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attrs: dict[str, Any]
    error: bool
    service: str


@dataclass
class Receiver:
    url: str
    spans: list[SpanRecord] = field(default_factory=list)
    exports: int = 0

    async def wait_for(self, n: int, timeout: float = 15.0) -> list[SpanRecord]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.spans) < n:
            assert asyncio.get_running_loop().time() < deadline, self.spans
            await asyncio.sleep(0.05)
        return self.spans


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which is not None else None


@pytest.fixture
async def receiver(aiohttp_server: AiohttpServer) -> Receiver:
    rec = Receiver("")

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        export = ExportTraceServiceRequest()
        export.ParseFromString(raw)
        rec.exports += 1
        for rs in export.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    rec.spans.append(SpanRecord(
                        s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                        s.parent_span_id.hex(), {a.key: _value(a.value) for a in s.attributes},
                        s.status.code == 2, str(resource.get("service.name"))))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    server = await aiohttp_server(app)
    rec.url = str(server.make_url("")).rstrip("/")
    return rec


def _config(up: Upstream, receiver: Receiver | None, **otel: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "providers": [openai_provider("flaky", up, [{"key": "sk-flaky", "name": "fl"}]),
                      openai_provider("steady", up, [{"key": "sk-steady", "name": "st"}])],
        "groups": [{"name": "g", "strategy": "priority",
                    "models": [{"provider": "flaky", "name": "model-a"},
                               {"provider": "steady", "name": "model-b"}]}],
        "pricing": {"model-b": {"input": 1.0, "output": 2.0}},
    }
    if receiver is not None:
        cfg["otel"] = {"endpoint": receiver.url, "service_name": "router-under-test",
                       "export_interval_ms": 50, **otel}
    return cfg


async def _chat(http: aiohttp.ClientSession, url: str, **extra: Any) -> dict[str, Any]:
    body = {"model": "g", "messages": [{"role": "user", "content": SECRET_PROMPT}],
            "max_tokens": 7, "temperature": 0.5}
    async with http.post(url + "/v1/chat/completions", json=body,
                         headers={**AUTH, "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
                         **extra) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_a_request_and_its_attempts_become_genai_spans_in_the_client_trace(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    router = await start_router(_config(upstream, receiver))
    upstream.fake.add_fault(Fault(status=500, key="sk-flaky"))  # attempt 1 fails over
    async with aiohttp.ClientSession() as http:
        answer = await _chat(http, router.url)
    spans = await receiver.wait_for(3)
    assert len(spans) == 3
    (server,) = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_SERVER]
    attempts = sorted((s for s in spans if s.kind == ProtoSpan.SPAN_KIND_CLIENT),
                      key=lambda s: s.attrs["llm_router.attempt"])
    # The client's trace continues: same trace id, the client's span as parent.
    assert server.trace_id == CLIENT_TRACE and server.parent_id == CLIENT_SPAN
    assert server.service == "router-under-test"
    assert server.name == "chat g"
    a = server.attrs
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "g"
    assert a["gen_ai.response.model"] == "model-b"
    assert a["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert a["gen_ai.request.max_tokens"] == 7 and a["gen_ai.request.temperature"] == 0.5
    assert a["llm_router.attempts"] == 2 and a["llm_router.group"] == "g"
    assert a["http.response.status_code"] == 200 and not server.error
    assert a["llm_router.cost_usd"] > 0
    first, second = attempts
    for att in attempts:
        assert att.trace_id == CLIENT_TRACE and att.parent_id == server.span_id
        assert att.attrs["gen_ai.provider.name"] == "openai"
        assert att.attrs["server.address"] == "127.0.0.1"
    assert first.name == "chat model-a" and first.error
    assert first.attrs["llm_router.provider"] == "flaky" and first.attrs["llm_router.key"] == "fl"
    assert first.attrs["llm_router.failover_reason"] == "status_5xx"
    assert first.attrs["error.type"] == "status_5xx"
    assert second.name == "chat model-b" and not second.error
    assert second.attrs["gen_ai.request.model"] == "model-b"
    assert second.attrs["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert "llm_router.failover_reason" not in second.attrs
    # Each attempt told its upstream which span it is.
    sent = [r.headers.get("traceparent") for r in upstream.fake.requests]
    assert sent == [f"00-{CLIENT_TRACE}-{first.span_id}-01",
                    f"00-{CLIENT_TRACE}-{second.span_id}-01"]
    # No prompt, answer or key anywhere unless the operator opts in.
    flat = repr([s.attrs for s in spans])
    assert SECRET_PROMPT not in flat and "sk-" not in flat
    assert answer["choices"][0]["message"]["content"] not in flat


async def test_streams_get_spans_and_a_new_trace_without_traceparent(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    router = await start_router(_config(upstream, receiver))
    async with aiohttp.ClientSession() as http, http.post(
            router.url + "/v1/chat/completions", headers=AUTH,
            json={"model": "g", "messages": [{"role": "user", "content": "hi"}],
                  "stream": True}) as resp:
        assert resp.status == 200
        await resp.read()
    server, attempt = sorted(await receiver.wait_for(2), key=lambda s: s.kind)
    assert server.kind == ProtoSpan.SPAN_KIND_SERVER and server.parent_id == ""
    assert attempt.parent_id == server.span_id and attempt.trace_id == server.trace_id
    assert server.attrs["llm_router.stream"] is True
    assert server.attrs["gen_ai.usage.output_tokens"] > 0
    assert attempt.attrs["gen_ai.usage.output_tokens"] == server.attrs[
        "gen_ai.usage.output_tokens"]


async def test_content_is_recorded_only_when_opted_in(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    router = await start_router(_config(upstream, receiver, capture_content=True))
    async with aiohttp.ClientSession() as http:
        answer = await _chat(http, router.url)
    spans = await receiver.wait_for(2)
    (server,) = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_SERVER]
    (attempt,) = [s for s in spans if s.kind == ProtoSpan.SPAN_KIND_CLIENT]
    assert SECRET_PROMPT in server.attrs["gen_ai.input.messages"]
    assert answer["choices"][0]["message"]["content"] in attempt.attrs["gen_ai.output.messages"]


async def test_without_otel_nothing_is_traced_or_forwarded(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream, None))
    assert router.state.tracing is None
    async with aiohttp.ClientSession() as http:
        await _chat(http, router.url)
    assert all("traceparent" not in r.headers for r in upstream.fake.requests)


async def test_a_refusal_is_a_span_with_its_reason(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    router = await start_router({**_config(upstream, receiver),
                                 "users": [{"name": "eve", "keys": [{"key": "sk-eve"}],
                                            "models": ["flaky/*"]}]})
    async with aiohttp.ClientSession() as http, http.post(
            router.url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-eve"},
            json={"model": "g", "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status == 403
    (span,) = await receiver.wait_for(1)
    assert span.attrs["llm_router.rejection"] == "model_not_allowed"
    assert span.attrs["http.response.status_code"] == 403 and span.attrs["llm_router.user"] == "eve"
    assert not span.error  # the client's error, not the router's


async def test_the_status_pages_own_polls_are_not_traced(
        start_router: StartRouter, upstream: Upstream, receiver: Receiver) -> None:
    router = await start_router(_config(upstream, receiver))
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for rid in ("poll-1", "poll-2", "plain"):
            poll = {"X-Router-Status-Poll": "1"} if rid.startswith("poll") else {}
            async with http.get(router.url + "/admin/status",
                                headers={"X-Request-Id": rid, **poll}) as resp:
                assert resp.status == 200
    # Spans end in request order: once the last request's span is exported, the polls'
    # would have been too.
    await receiver.wait_for(1)
    assert [s.attrs["llm_router.request_id"] for s in receiver.spans] == ["plain"]
