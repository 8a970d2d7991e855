"""``type: vertex``: Google Cloud Vertex AI, for Gemini and Claude models.

Each key of a vertex provider is a service-account key file; :mod:`.token` turns it into
an access token (cached, refreshed before expiry, one refresh per file at a time). A
refresh that fails answers the attempt 503, so the key cools down and the request fails
over like any 5xx; a token the upstream refuses (401) is dropped and the attempt tried
once more with a new one.

The wire depends on the model (:meth:`VertexProvider.wire`):

- Gemini models speak the hub at this boundary: ``{base_url}/v1/projects/{project}/
  locations/{location}/publishers/google/models/{model}:generateContent``
  (``:streamGenerateContent?alt=sse``) with the Gemini API's bodies, translated both
  ways inside ``send`` (:mod:`llm_router.providers.gemini.wire`).
- Claude models (``claude-*``) speak Anthropic's Messages:
  ``publishers/anthropic/models/{model}:rawPredict`` (``:streamRawPredict``), the body
  with ``model`` removed and ``anthropic_version: vertex-2023-10-16`` added. An
  Anthropic client's body and stream pass through with only those edits; other clients
  are translated by the anthropic provider's transforms.

So this folder uses the gemini and anthropic folders' translations: Vertex is where
Google serves both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from ...config import Provider
from ...hub.sse import json_object
from ...hub.stream import Relay, Usage
from ..anthropic import PROVIDER as ANTHROPIC
from ..base import ProviderType, UpstreamCall, UpstreamResponse
from . import api

__all__ = ["PROVIDER", "VertexProvider"]


def _anthropic_message(doc: dict[str, Any]) -> bool:
    return doc.get("type") == "message"


class VertexProvider(ProviderType):
    """Gemini models: the hub at this boundary (``send`` translates). Claude models: the
    Anthropic wire, with the anthropic provider's transforms."""

    type = "vertex"
    serves = frozenset({"chat", "messages", "responses"})

    def wire(self, provider: Provider, client: str, model: str) -> str:
        del provider, client
        return "anthropic" if api.is_claude(model) else "openai"

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
        return await api.send(session, call)

    def passthrough_headers(self, client: str, provider: Provider,
                            request_headers: Mapping[str, str]) -> dict[str, str]:
        # anthropic-beta changes what a Messages body may hold, so an Anthropic client's
        # goes on (send drops it for Gemini models); anthropic-version is in the body.
        kept = ANTHROPIC.passthrough_headers(client, provider, request_headers)
        kept.pop("anthropic-version", None)
        return kept

    # The transforms below run only between different dialects. A Gemini model's wire
    # is the hub, so for it they meet hub documents (an Anthropic client asking a Gemini
    # model), which pass as they are; a Claude model's are Anthropic's.

    def request(self, hub: dict[str, Any], provider: Provider,
                stream: bool) -> tuple[str, dict[str, Any]]:
        if api.is_claude(str(hub.get("model") or "")):
            return ANTHROPIC.request(hub, provider, stream)
        return super().request(hub, provider, stream)

    def answer(self, doc: dict[str, Any], requested_model: str) -> dict[str, Any]:
        if _anthropic_message(doc):
            return ANTHROPIC.answer(doc, requested_model)
        return super().answer(doc, requested_model)

    def usage(self, doc: dict[str, Any]) -> Usage:
        if _anthropic_message(doc):
            return ANTHROPIC.usage(doc)
        return super().usage(doc)

    def stream(self, requested_model: str, include_usage: bool) -> Relay:
        # Only asked for a wire other than the hub's: a Claude model's Messages stream.
        return ANTHROPIC.stream(requested_model, include_usage)

    def error(self, status: int, body: bytes) -> bytes:
        doc = json_object(body)
        if doc is not None and doc.get("type") == "error":
            # A Claude model's (send gives every Claude error Anthropic's shape).
            return ANTHROPIC.error(status, body)
        return body  # a Gemini model's: the hub's shape already (send)


PROVIDER: Final = VertexProvider()
