"""``type: openai``: any OpenAI-compatible API (OpenAI, OpenRouter, vLLM, Ollama …)."""

from __future__ import annotations

import aiohttp

from .. import UpstreamCall
from ..http import HTTPResponse, fixed_headers, post

__all__ = ["send"]


async def send(session: aiohttp.ClientSession, call: UpstreamCall) -> HTTPResponse:
    """POST ``{base_url}/{path}`` with the key as a Bearer token plus configured headers
    (and the call's own, e.g. a trace's ``traceparent``)."""
    headers = fixed_headers(call, _headers)
    if call.headers:
        headers = {**headers, **call.headers}
    return await post(session, call, f"{call.provider.base_url}/{call.path}", headers)


def _headers(call: UpstreamCall) -> dict[str, str]:
    return {
        **call.provider.headers,
        "Authorization": f"Bearer {call.key.secret}",
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }
