"""``type: openai``: any OpenAI-compatible API (OpenAI, OpenRouter, vLLM, Ollama …).

Its wire is the hub, so its transforms are the identity; a Responses client reaches a
``responses: native`` member in the Responses dialect itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from ...config import Provider, ProviderKey
from ..base import ModelInfo, UpstreamCall
from ..http import HTTPProvider, fixed_headers, get_json
from ..listing import listed_models

__all__ = ["OpenAIProvider"]


class OpenAIProvider(HTTPProvider):
    """POST ``{base_url}/{path}`` with the key as a Bearer token plus configured headers
    (and the call's own, e.g. a trace's ``traceparent``)."""

    type = "openai"
    serves = frozenset({"chat", "completions", "embeddings", "messages", "responses"})
    sets_prompt_cache_key = True

    def wire(self, provider: Provider, client: str, model: str) -> str:
        if client == "responses" and provider.responses == "native":
            return "responses"
        return "openai"

    def url(self, call: UpstreamCall) -> str:
        return f"{call.provider.base_url}/{call.path}"

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        headers = fixed_headers(call, _headers)
        if call.headers:
            headers = {**headers, **call.headers}
        return headers

    async def list_models(self, session: aiohttp.ClientSession, provider: Provider,
                          key: ProviderKey) -> list[ModelInfo] | None:
        """``GET {base_url}/models``, with the window and capabilities that vLLM and
        OpenRouter add to OpenAI's entries (:mod:`..listing`)."""
        doc = await get_json(session, provider, f"{provider.base_url}/models",
                             {**provider.headers, "Authorization": f"Bearer {key.secret}"})
        return listed_models(doc)


def _headers(call: UpstreamCall) -> dict[str, str]:
    return {
        **call.provider.headers,
        "Authorization": f"Bearer {call.key.secret}",
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }

