"""``type: vertex``: Google Cloud Vertex AI, for Gemini and Claude models.

Each key of a vertex provider is a service-account key file; :mod:`.token` turns it into
an access token (cached, refreshed before expiry, one refresh per file at a time). A
refresh that fails answers the attempt 503, so the key cools down and the request fails
over like any 5xx; a token the upstream refuses (401) is dropped and the attempt tried
once more with a new one.

- Gemini models: ``{base_url}/v1/projects/{project}/locations/{location}/publishers/
  google/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse``), with
  the Gemini API's bodies (:mod:`llm_router.providers.gemini.wire`).
- Claude models (``claude-*``): ``publishers/anthropic/models/{model}:rawPredict``
  (``:streamRawPredict``), the Anthropic Messages body with ``model`` removed and
  ``anthropic_version: vertex-2023-10-16`` added, and nothing else changed; the answer
  and its stream are Anthropic's, passed on as they come.
"""

from __future__ import annotations

from typing import Final

import aiohttp

from ..base import ProviderType, UpstreamCall, UpstreamResponse
from . import api

__all__ = ["PROVIDER"]


class VertexProvider(ProviderType):
    """Speaks the hub at its boundary: :func:`.api.send` translates the call and reads
    the answer back as the hub's, so the default (hub) transforms apply."""

    type = "vertex"
    serves = frozenset({"chat", "messages", "responses"})

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
        return await api.send(session, call)


PROVIDER: Final = VertexProvider()
