"""``type: azure``: Azure OpenAI, on its dated or its v1 path, with an API key or Entra ID.

The wire is OpenAI's (the hub's own dialect), so bodies and answers pass through as for
``type: openai``, Azure's content-filter additions included; what differs is where a
request goes and how it authenticates:

========================  ================================================================
``api_version``           request URL (``{route}``: chat/completions, completions, ...)
========================  ================================================================
a date (``2024-10-21``)   ``{base_url}/openai/deployments/{deployment}/{route}?api-version=``
``v1``                    ``{base_url}/openai/v1/{route}``, the deployment as body ``model``
========================  ================================================================

The deployment is the group member's name, which the router also puts in the body's
``model``; on the dated path it is percent-encoded as one path segment, so a
``provider/model`` a client names directly cannot reach another path. Keys go in the
``api-key`` header; with an ``entra`` block, an Entra token (:mod:`.entra`) goes in
``Authorization: Bearer`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import aiohttp

from ...config import Provider
from ..base import UpstreamCall
from ..http import HTTPProvider, HTTPResponse, fixed_headers, post
from .entra import tokens_for

__all__ = ["AzureProvider", "upstream_url"]


def upstream_url(provider: Provider, route: str, deployment: str) -> str:
    """Where a request for ``route`` (a path below the API root, e.g. chat/completions)
    to ``deployment`` goes."""
    if provider.api_version == "v1":
        return f"{provider.base_url}/openai/v1/{route}"
    return (f"{provider.base_url}/openai/deployments/{quote(deployment, safe='')}/{route}"
            f"?api-version={provider.api_version}")


class AzureProvider(HTTPProvider):
    """The OpenAI wire at Azure's URLs; ``responses: native`` (v1 only, the config
    checks) sends Responses clients to Azure's own Responses API."""

    type = "azure"
    serves = frozenset({"chat", "completions", "embeddings", "messages", "responses"})
    opens_with_filter_chunks = True  # choices: [] with only prompt_filter_results
    # Not sets_prompt_cache_key: Azure refuses body fields its API version does not know
    # ("Unrecognized request argument"), and caches prompts by prefix on its own.

    def wire(self, provider: Provider, client: str, model: str) -> str:
        if client == "responses" and provider.responses == "native":
            return "responses"
        return "openai"

    def url(self, call: UpstreamCall) -> str:
        return upstream_url(call.provider, call.path, call.model)

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        headers = fixed_headers(call, _headers)
        if call.headers:
            headers = {**headers, **call.headers}
        return headers

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> HTTPResponse:
        entra = call.provider.entra
        if entra is None:
            return await super().send(session, call)
        url = self.url(call)
        tokens = tokens_for(session)
        for _ in range(2):
            token = await tokens.token(session, entra, call.provider.name)
            resp = await post(session, call, url,
                              {**self.headers(call), "Authorization": f"Bearer {token}"})
            if resp.status != 401:
                return resp
            # Refused before its expiry (revoked, or the app's access changed): that token
            # is dropped and the call tried once more with a fresh one. A second 401 is
            # the answer, and the attempt fails as any 401 does.
            tokens.forget(entra, token)
            resp.close()
        return resp


def _headers(call: UpstreamCall) -> dict[str, str]:
    out = {
        **call.provider.headers,
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }
    if call.provider.entra is None:
        out["api-key"] = call.key.secret
    return out
