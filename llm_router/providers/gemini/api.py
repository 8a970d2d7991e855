"""``type: gemini``: the Gemini API's URLs and auth (``x-goog-api-key``)."""


from __future__ import annotations

from typing import Final

import aiohttp

from .. import UpstreamCall, UpstreamResponse
from ..http import fixed_headers
from .wire import exchange, model_path

__all__ = ["DEFAULT_BASE_URL", "send"]

DEFAULT_BASE_URL: Final = "https://generativelanguage.googleapis.com"


async def send(session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
    """One hub call to the Gemini API; the answer reads as the hub's (:mod:`.wire`)."""
    headers = fixed_headers(call, _headers)
    if call.headers:
        headers = {**headers, **call.headers}
    model = model_path(str(call.parsed.get("model") or ""))
    return await exchange(session, call, f"{call.provider.base_url}/v1beta/models/{model}",
                          headers)


def _headers(call: UpstreamCall) -> dict[str, str]:
    return {
        **call.provider.headers,
        "x-goog-api-key": call.key.secret,
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }
