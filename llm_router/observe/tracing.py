"""Optional OpenTelemetry traces: one span per request, a child span per upstream attempt.

Enabled by ``otel: {endpoint: ...}`` in the config and the ``otel`` extra (``pip install
'.[otel]'`` in the checkout); spans go to an OTLP/HTTP collector (protobuf) from the SDK's
batch processor, on its own thread. Off, nothing here is imported and the request path
pays one ``is None``.

Attributes follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``) where one
exists, plus the router's own (``llm_router.*``: group, user, key label, attempt,
failover reason). A client's W3C ``traceparent`` continues its trace, and each attempt
sends its own ``traceparent`` upstream. Prompts and answers are never recorded unless
``otel.capture_content`` is true; keys never are (their labels are).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import __version__
from ..config import OtelSettings, Provider
from .exchange import Exchange

__all__ = ["Tracing"]

log = logging.getLogger("llm_router.tracing")

# gen_ai.operation.name per route kind (the GenAI conventions' well-known values).
_OPERATIONS: Final = {"chat": "chat", "messages": "chat", "responses": "chat",
                      "completions": "text_completion", "embeddings": "embeddings",
                      "count_tokens": "count_tokens"}
# gen_ai.provider.name: the conventions name the API, which our provider type says.
_PROVIDER_NAMES: Final = {"openai": "openai", "anthropic": "anthropic", "mock": "llm_router.mock"}
# Request parameters copied to gen_ai.request.* when the client sent them.
_REQUEST_PARAMS: Final = (("max_tokens", "gen_ai.request.max_tokens"),
                          ("max_completion_tokens", "gen_ai.request.max_tokens"),
                          ("temperature", "gen_ai.request.temperature"),
                          ("top_p", "gen_ai.request.top_p"),
                          ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                          ("presence_penalty", "gen_ai.request.presence_penalty"),
                          ("seed", "gen_ai.request.seed"))
_CONTENT_FIELDS: Final = ("messages", "system", "instructions", "prompt", "input")


class Tracing:
    """The tracer of one router process; see the module docstring."""

    def __init__(self, settings: OtelSettings) -> None:
        self.capture_content = settings.capture_content
        endpoint = settings.endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"  # the base URL, as OTEL_EXPORTER_OTLP_ENDPOINT takes it
        self._provider = TracerProvider(resource=Resource.create({
            "service.name": settings.service_name, "service.version": __version__}))
        self._provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, headers=dict(settings.headers),
                             timeout=settings.timeout_s),
            schedule_delay_millis=settings.export_interval_ms))
        self._tracer = self._provider.get_tracer("llm_router", __version__)
        self._propagator = TraceContextTextMapPropagator()

    # -- the request span
    def start_request(self, headers: Mapping[str, str], ex: Exchange) -> Span:
        """A server span for one request, a child of the client's ``traceparent`` if any."""
        parent = self._propagator.extract(headers) if "traceparent" in headers else None
        return self._tracer.start_span(ex.route, context=parent, kind=SpanKind.SERVER,
                                       attributes={"http.route": ex.route,
                                                   "llm_router.request_id": ex.request_id})

    def end_request(self, span: Span, ex: Exchange, rejected: str | None = None) -> None:
        """Name the span ``{operation} {model}`` and record what the request did, and why
        the router refused it if it did (``llm_router.rejection``: rejections_total's
        reason). A refusal is the client's error (4xx), not the span's."""
        operation = _OPERATIONS.get(ex.kind)
        if operation is not None:
            span.update_name(f"{operation} {ex.group}" if ex.group else operation)
            span.set_attribute("gen_ai.operation.name", operation)
        attrs: dict[str, Any] = {"http.response.status_code": ex.status,
                                 "llm_router.user": ex.caller.user,
                                 "llm_router.attempts": ex.attempts,
                                 "llm_router.stream": ex.stream}
        if ex.group:
            attrs["gen_ai.request.model"] = ex.group
            attrs["llm_router.group"] = ex.group
        if ex.provider:
            attrs["llm_router.provider"] = ex.provider
            attrs["llm_router.key"] = ex.key
            attrs["gen_ai.response.model"] = ex.model
        if ex.prompt_tokens or ex.completion_tokens:
            attrs["gen_ai.usage.input_tokens"] = ex.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = ex.completion_tokens
        if ex.cost is not None:
            attrs["llm_router.cost_usd"] = ex.cost
        if ex.ttft is not None:
            attrs["llm_router.time_to_first_token_s"] = ex.ttft
        if rejected is not None:
            attrs["llm_router.rejection"] = rejected
        span.set_attributes(attrs)
        if ex.status >= 500 or ex.error:
            span.set_attribute("error.type", ex.error or str(ex.status))
            span.set_status(Status(StatusCode.ERROR, ex.error or str(ex.status)))
        span.end()

    # -- attempt spans
    def start_attempt(self, parent: Span, ex: Exchange, provider: Provider, key: str,
                      model: str, body: Mapping[str, Any],
                      upstream_headers: MutableMapping[str, str]) -> Span:
        """A client span for one upstream attempt; writes its ``traceparent`` into
        ``upstream_headers``. The first attempt also records the request's parameters
        (and, when opted in, its content) on the request span."""
        operation = _OPERATIONS.get(ex.kind, ex.kind)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": _PROVIDER_NAMES.get(provider.type, provider.type),
            "gen_ai.request.model": model,
            "llm_router.group": ex.group,
            "llm_router.provider": provider.name,
            "llm_router.key": key,
            "llm_router.attempt": ex.attempts,
        }
        url = urlsplit(provider.base_url)
        if url.hostname:
            attrs["server.address"] = url.hostname
            attrs["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        params = _request_params(body)
        attrs.update(params)
        if ex.attempts == 1:
            parent.set_attributes(params)
            if self.capture_content:
                content = {k: body[k] for k in _CONTENT_FIELDS if k in body}
                parent.set_attribute("gen_ai.input.messages",
                                     orjson.dumps(content, default=str).decode())
        span = self._tracer.start_span(f"{operation} {model}", kind=SpanKind.CLIENT,
                                       context=set_span_in_context(parent), attributes=attrs)
        self._propagator.inject(upstream_headers, context=set_span_in_context(span))
        return span

    def end_attempt(self, span: Span, ex: Exchange, status: int | None,
                    failure: str | None) -> None:
        """Record the attempt's outcome: the upstream's status, usage, or why it failed
        (``llm_router.failover_reason``: the router tried another candidate after it, or
        gave up)."""
        attrs: dict[str, Any] = {}
        if status is not None:
            attrs["http.response.status_code"] = status
        if failure is not None:
            attrs["error.type"] = failure
            attrs["llm_router.failover_reason"] = failure
            span.set_status(Status(StatusCode.ERROR, failure))
        else:
            attrs["gen_ai.response.model"] = ex.model
            if ex.prompt_tokens or ex.completion_tokens:
                attrs["gen_ai.usage.input_tokens"] = ex.prompt_tokens
                attrs["gen_ai.usage.output_tokens"] = ex.completion_tokens
        span.set_attributes(attrs)
        span.end()

    def record_output(self, span: Span, answer: bytes) -> None:
        """With ``capture_content``, a non-streamed answer as ``gen_ai.output.messages``."""
        if self.capture_content:
            span.set_attribute("gen_ai.output.messages", answer.decode("utf-8", "replace"))

    async def shutdown(self) -> None:
        """Export what is still queued, then stop (off the event loop: it blocks)."""
        await asyncio.to_thread(self._provider.shutdown)


def _request_params(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, attr in _REQUEST_PARAMS:
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[attr] = value
    return out
