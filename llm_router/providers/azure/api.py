"""``type: azure``: Azure OpenAI, on its dated or its v1 path, with an API key or Entra ID.

The wire is OpenAI's (the hub's own dialect), so bodies and answers pass through as for
``type: openai``; what differs is where a request goes and how it authenticates:

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
from .. import UpstreamCall
from ..http import HTTPResponse, fixed_headers, post
from .entra import tokens_for

__all__ = ["send", "upstream_url"]


def upstream_url(provider: Provider, route: str, deployment: str) -> str:
    """Where a request for ``route`` (a path below the API root, e.g. chat/completions)
    to ``deployment`` goes."""
    if provider.api_version == "v1":
        return f"{provider.base_url}/openai/v1/{route}"
    return (f"{provider.base_url}/openai/deployments/{quote(deployment, safe='')}/{route}"
            f"?api-version={provider.api_version}")


async def send(session: aiohttp.ClientSession, call: UpstreamCall) -> HTTPResponse:
    """POST the call to its deployment, authenticated with its key or an Entra token."""
    provider = call.provider
    model = call.parsed.get("model")
    url = upstream_url(provider, call.path, model if isinstance(model, str) else "")
    headers: Mapping[str, str] = fixed_headers(call, _headers)
    if provider.entra is not None:
        token = await tokens_for(session).token(session, provider.entra, provider.name)
        headers = {**headers, "Authorization": f"Bearer {token}", **call.headers}
    elif call.headers:
        headers = {**headers, **call.headers}
    return await post(session, call, url, headers)


def _headers(call: UpstreamCall) -> dict[str, str]:
    out = {
        **call.provider.headers,
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }
    if call.provider.entra is None:
        out["api-key"] = call.key.secret
    return out
