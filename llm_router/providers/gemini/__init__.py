"""``type: gemini``: Google's Gemini API, natively (``generateContent``), not through its
beta OpenAI-compatible endpoint.

The router posts to ``{base_url}/v1beta/models/{model}:generateContent`` (streams:
``:streamGenerateContent?alt=sse``; embeddings: ``:batchEmbedContents``) with the key as
``x-goog-api-key``. The modules of this folder, data in and data out:
:mod:`.request` (hub → Gemini request), :mod:`.answer` (answers and streams → hub),
:mod:`.errors` (Google errors → status and retry hint), :mod:`.embed`, :mod:`.models`
(the paginated model list), :mod:`.wire`, which runs one exchange with them, and
:mod:`.api` (URLs, auth, ``send``). Vertex
AI's Gemini models take the same bodies (``providers/vertex``).
"""

from __future__ import annotations

from typing import Final

import aiohttp

from ..base import ProviderType, UpstreamCall, UpstreamResponse
from . import api

__all__ = ["PROVIDER"]


class GeminiProvider(ProviderType):
    """Speaks the hub at its boundary: :func:`.api.send` translates the call and reads
    the answer back as the hub's, so the default (hub) transforms apply."""

    type = "gemini"
    serves = frozenset({"chat", "embeddings", "messages", "responses"})

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
        return await api.send(session, call)


PROVIDER: Final = GeminiProvider()
