"""``type: anthropic``: Anthropic's Messages API at ``{base_url}/v1/messages``."""

from __future__ import annotations

import aiohttp

from .. import UpstreamCall
from ..http import HTTPResponse, fixed_headers, post

__all__ = ["send"]


async def send(session: aiohttp.ClientSession, call: UpstreamCall) -> HTTPResponse:
    """POST ``{base_url}/v1/{path}`` with ``x-api-key`` and ``anthropic-version`` (the
    provider's, unless the call carries the client's own)."""
    if not call.headers:  # nothing from the client: the same headers every time
        return await post(session, call, f"{call.provider.base_url}/v1/{call.path}",
                          fixed_headers(call, _headers))
    return await post(session, call, f"{call.provider.base_url}/v1/{call.path}",
                      _headers(call))


def _headers(call: UpstreamCall) -> dict[str, str]:
    kept = {name.lower() for name in call.headers}
    return {
        **{k: v for k, v in call.provider.headers.items() if k.lower() not in kept},
        "anthropic-version": call.provider.anthropic_version,
        **call.headers,  # a passthrough client's own anthropic-version / anthropic-beta
        "x-api-key": call.key.secret,
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }
