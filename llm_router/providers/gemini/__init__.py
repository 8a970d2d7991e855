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

from ...config import Provider, ProviderKey
from ..base import ModelInfo, ProviderType, UpstreamCall, UpstreamResponse
from ..http import get_json
from . import api
from .models import models_page, models_url

__all__ = ["PROVIDER"]

_MAX_PAGES: Final = 50  # 50,000 models: past that a list is not followed further


class GeminiProvider(ProviderType):
    """Speaks the hub at its boundary: :func:`.api.send` translates the call and reads
    the answer back as the hub's, so the default (hub) transforms apply."""

    type = "gemini"
    serves = frozenset({"chat", "embeddings", "messages", "responses"})

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
        return await api.send(session, call)

    async def list_models(self, session: aiohttp.ClientSession, provider: Provider,
                          key: ProviderKey) -> list[ModelInfo] | None:
        """Every page of ``GET /v1beta/models`` (:mod:`.models`), each model's
        ``inputTokenLimit`` as its context window."""
        ids: list[ModelInfo] = []
        token: str | None = None
        for _ in range(_MAX_PAGES):
            doc = await get_json(session, provider, models_url(provider.base_url, token),
                                 {**provider.headers, "x-goog-api-key": key.secret})
            page, token = models_page(doc)
            ids += [ModelInfo(m.id, m.input_tokens) for m in page]
            if token is None:
                return ids
        return ids  # a list this long is cut rather than followed without end


PROVIDER: Final = GeminiProvider()
