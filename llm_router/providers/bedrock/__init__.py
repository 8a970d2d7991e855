"""``type: bedrock``: AWS Bedrock's Converse API (SigV4 or API keys, event-stream framing),
spoken as the hub at its boundary; docs/providers.md says what maps to what."""

from __future__ import annotations

from typing import Final

import aiohttp

from ...config import Provider, ProviderKey
from ..base import ModelInfo, ProviderType, UpstreamCall, UpstreamResponse
from ..http import get_json
from . import api
from .models import models_headers, models_url, text_model_ids

__all__ = ["PROVIDER"]


class BedrockProvider(ProviderType):
    """Speaks the hub at its boundary: :func:`.api.send` translates the call and reads
    the answer back as the hub's, so the default (hub) transforms apply."""

    type = "bedrock"
    serves = frozenset({"chat", "messages", "responses"})

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
        return await api.send(session, call)

    async def list_models(self, session: aiohttp.ClientSession, provider: Provider,
                          key: ProviderKey) -> list[ModelInfo] | None:
        """ListFoundationModels' text models (:mod:`.models`)."""
        url = models_url(provider)
        ids = text_model_ids(await get_json(session, provider, url,
                                            models_headers(provider, key, url)))
        return [ModelInfo(m) for m in ids] if ids is not None else None


PROVIDER: Final = BedrockProvider()
