"""``type: vertex``: Vertex AI's URLs, auth (a service account's access token) and
``send``, for Gemini models (translated) and Claude models (passed through)."""


from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import orjson

from ...errors import anthropic_error_type
from ...hub.sse import json_object
from ..base import ResponseTooLarge, UpstreamCall, UpstreamResponse
from ..gemini.errors import google_error
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
_MAX_ERROR_BYTES: Final = 64 * 1024  # Anthropic's and Google's error bodies are small
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
    model = call.model or str(call.parsed.get("model") or "")
    claude = is_claude(model) and call.path == "messages"
    # An Anthropic client's anthropic-beta goes to Claude models only.
    kept = call.headers if claude else {k: v for k, v in call.headers.items()
                                        if not k.lower().startswith("anthropic-")}
    headers = {**call.provider.headers, **kept,
               "Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "text/event-stream" if call.stream else "application/json"}
    if not claude:
        return await exchange(session, call, _model_url(call, "google", model), headers)
    method = "streamRawPredict" if call.stream else "rawPredict"
    wire = dataclasses.replace(call, body=orjson.dumps(claude_body(call.parsed)))
    resp = await post(session, wire, f"{_model_url(call, 'anthropic', model)}:{method}",
                      headers)
    if resp.status < 400:
        return resp
    try:
        raw = await resp.read(_MAX_ERROR_BYTES)
    except ResponseTooLarge:
        raw = b""
    finally:
        resp.close()
    return _claude_error(resp.status, raw, resp.headers)


def _claude_error(status: int, raw: bytes, headers: Mapping[str, str]) -> ReadyResponse:
    """A Claude model's error in Anthropic's shape, as its clients read it: the model's
    own errors come so; Vertex's (auth, quota: Google's shape, with ``retryDelay``) are
    rewritten, their retry hint kept as Retry-After."""
    out = {"Content-Type": "application/json"}
    doc = json_object(raw)
    if doc is not None and doc.get("type") == "error":
        if "Retry-After" in headers:
            out["Retry-After"] = headers["Retry-After"]
        return ReadyResponse(status, raw, out)
    err = google_error(status, raw)
    if err.retry_after_s is not None:
        out["Retry-After"] = f"{err.retry_after_s:g}"
    elif "Retry-After" in headers:
        out["Retry-After"] = headers["Retry-After"]
    body = {"type": "error", "error": {"type": anthropic_error_type(err.status),
                                       "message": err.body["error"]["message"]}}
    return ReadyResponse(err.status, orjson.dumps(body), out)


def _token_failure(call: UpstreamCall, message: str) -> ReadyResponse:
    text = (f"no access token for key '{call.key.label}' of provider "
            f"'{call.provider.name}': {message}")
    log.warning("vertex: %s", text)
    body = {"error": {"message": text, "type": "upstream_error", "param": None,
                      "code": "upstream_auth_unavailable"}}
    return ReadyResponse(503, orjson.dumps(body), {"Content-Type": "application/json",
                                                   "Retry-After": f"{_TOKEN_RETRY_S:g}"})
