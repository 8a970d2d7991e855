"""Upstreams: one folder per provider ``type``, one registered object per folder.

The router's inside speaks one dialect, the *hub*: OpenAI chat completions. Every
inbound dialect (:mod:`llm_router.dialects`) translates to and from it, and every
provider type translates between it and its own wire. When the client's dialect is the
wire's, nothing is translated: the body goes up with only ``model`` (and
``stream_options``) changed, and the answer's bytes come back untouched.

A provider type is a :class:`~.base.ProviderType` subclass in ``providers/<type>/``
(its ``__init__`` exports ``PROVIDER``, one instance), registered by one line in
:mod:`.registry`. Nothing else changes for a new type: the attempt loop, the relay,
the handlers and routing ask the registry. Its parts, with their defaults (those of an
upstream speaking the hub over SSE):

``type``, ``serves``
    The config's ``type``; the route kinds it can serve (``chat``, ``completions``,
    ``embeddings``, ``messages``, ``count_tokens``, ``responses``). Routing skips the
    members whose type does not serve the request's kind.
``wire(provider, client, model) -> str``
    The dialect it speaks to a client of dialect ``client`` (``openai``, ``anthropic``,
    ``responses``, or its own name) for the upstream ``model`` (Vertex speaks Anthropic's
    Messages for Claude models). Equal to ``client`` means passthrough.
``send(session, call) -> UpstreamResponse`` (async)
    URL and auth. :class:`~.http.HTTPProvider` does it for HTTP upstreams in four
    overridable steps: ``url(call)`` (from ``call.path``, ``call.model`` and
    ``call.stream``: Gemini's ``models/{model}:streamGenerateContent?alt=sse``,
    Bedrock's ``/model/{id}/converse-stream``); ``headers(call)`` (fixed per provider and
    key, cached); ``await authorize(session, call, headers)`` (add a token fetched and
    cached with :class:`~.base.CachedToken`: Vertex, Azure Entra ID); ``sign(call, url,
    headers)`` (over ``call.body``, the final bytes: SigV4). Returns once the status and
    headers arrived; the body is read by the caller.
``passthrough_headers(client, provider, request_headers)``
    Client headers the upstream keeps (Anthropic's ``anthropic-version``/``-beta``).
``request(hub, provider, stream) -> (path, body)``
    Hub request → wire request (``hub["model"]`` is already the upstream model).
``answer(doc, requested_model) -> dict``, ``usage(doc) -> Usage``
    A whole wire answer → a hub ``chat.completion``; its token counts, read by the
    provider from its own wire.
``stream(requested_model, include_usage) -> Relay``
    The stream transform, beside the whole-answer one: fed raw wire events, it returns
    hub chunk events (SSE, ending ``[DONE]``), and keeps ``usage``, ``done`` and
    ``failure`` (:class:`llm_router.hub.stream.Relay`).
``events(max_event) -> EventParser``, ``is_stream(headers)``
    The stream's framing: SSE by default; a binary framing (Bedrock's event stream)
    returns a parser whose events its own ``stream`` transform decodes.
``error(status, body) -> bytes``
    A wire error body (a 4xx passed on to the client) → a hub (OpenAI) error body.
``failure(name, status, headers, body) -> AttemptFailure``
    An error status → the attempt's failure: the metric reason and the retry hint
    (``retry_after`` in seconds; capped by ``circuit.cooldown_max_s`` upstream of it).
    Exceptions are mapped once for all types by :func:`~.base.failure_from_exception`:
    those in :data:`~.base.UPSTREAM_ERRORS` (aiohttp's, timeouts, OS errors, an answer
    too large, :class:`~.base.UpstreamProtocolError` for a wire that breaks its own
    framing); anything else is a router bug and propagates, to be logged.
``list_models(session, provider, key) -> list[ModelInfo] | None`` (async)
    The models the upstream offers (the catalog), each with the context window and
    capabilities its list reports (None where it does not say); None if it cannot say.
``opens_with_filter_chunks``
    Whether its streams in the hub's dialect may open with content-filter chunks that
    hold no part of the answer (Azure's ``prompt_filter_results``): the relay then holds
    them unsent and judges the stream on the first event after them (docs/providers.md).
``sets_prompt_cache_key``
    Whether cache affinity adds OpenAI's ``prompt_cache_key`` to the body.

Folders do not import one another (an import-linter contract): what two wires share
lives in :mod:`llm_router.hub` or :mod:`llm_router.dialects`.
"""

from __future__ import annotations

from .base import (
    UPSTREAM_ERRORS,
    AttemptFailure,
    CachedToken,
    ModelInfo,
    ProviderType,
    ResponseTooLarge,
    UpstreamCall,
    UpstreamProtocolError,
    UpstreamResponse,
    failure_from_exception,
    status_failure,
)

__all__ = [
    "UPSTREAM_ERRORS",
    "AttemptFailure",
    "CachedToken",
    "ModelInfo",
    "ProviderType",
    "ResponseTooLarge",
    "UpstreamCall",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "failure_from_exception",
    "status_failure",
]
