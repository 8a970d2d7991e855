"""``type: vertex``: Vertex AI's URLs, auth (a service account's access token) and
``send``, for Gemini models (translated) and Claude models (passed through)."""


from __future__ import annotations

import dataclasses
import logging
from typing import Any, Final

import aiohttp
import orjson

from .. import UpstreamCall, UpstreamResponse
from ..gemini.wire import ReadyResponse, exchange, model_path
from ..http import post
from .token import TokenCache, TokenError

__all__ = ["ANTHROPIC_VERSION", "TOKENS", "claude_body", "is_claude", "send"]

log = logging.getLogger("llm_router.vertex")

ANTHROPIC_VERSION: Final = "vertex-2023-10-16"
# A key whose token could not be had cools this long (capped by circuit.cooldown_max_s):
# long enough not to ask the token endpoint on every request, short enough to recover
# soon after a blip.
_TOKEN_RETRY_S: Final = 10.0
# One cache for the process: a token belongs to a credentials file, whichever provider
# or config names it, so it survives reloads.
TOKENS: Final = TokenCache()


def is_claude(model: str) -> bool:
    """Whether Vertex serves ``model`` through Anthropic's publisher (Messages API)."""
    return model.startswith("claude-")


def claude_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages body as Vertex's rawPredict takes it: no ``model``, its
    ``anthropic_version``; every other field as the client sent it."""
    out = {k: v for k, v in body.items() if k != "model"}
    out["anthropic_version"] = ANTHROPIC_VERSION
    return out


async def send(session: aiohttp.ClientSession, call: UpstreamCall) -> UpstreamResponse:
    """One call to Vertex AI, with a token for the call's credentials file; retried once
    with a fresh token if the upstream says the token is no longer valid."""
    path = call.key.secret
    for _ in range(2):
        try:
            token = await TOKENS.token(session, path)
        except TokenError as exc:
            return _token_failure(call, str(exc))
        resp = await _send(session, call, token)
        if resp.status != 401:
            return resp
        TOKENS.forget(path, token)  # expired or revoked early: fetch another, once
        resp.close()
    return resp


def _model_url(call: UpstreamCall, publisher: str, model: str) -> str:
    p = call.provider
    return (f"{p.base_url}/v1/projects/{p.project}/locations/{p.location}/publishers/"
            f"{publisher}/models/{model_path(model)}")


async def _send(session: aiohttp.ClientSession, call: UpstreamCall, token: str
                ) -> UpstreamResponse:
    headers = {**call.provider.headers, **call.headers,
               "Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "text/event-stream" if call.stream else "application/json"}
    model = str(call.parsed.get("model") or "")
    if is_claude(model) and call.path == "messages":
        method = "streamRawPredict" if call.stream else "rawPredict"
        wire = dataclasses.replace(call, body=orjson.dumps(claude_body(call.parsed)))
        return await post(session, wire, f"{_model_url(call, 'anthropic', model)}:{method}",
                          headers)
    return await exchange(session, call, _model_url(call, "google", model), headers)


def _token_failure(call: UpstreamCall, message: str) -> ReadyResponse:
    text = (f"no access token for key '{call.key.label}' of provider "
            f"'{call.provider.name}': {message}")
    log.warning("vertex: %s", text)
    body = {"error": {"message": text, "type": "upstream_error", "param": None,
                      "code": "upstream_auth_unavailable"}}
    return ReadyResponse(503, orjson.dumps(body), {"Content-Type": "application/json",
                                                   "Retry-After": f"{_TOKEN_RETRY_S:g}"})
