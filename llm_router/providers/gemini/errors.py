"""Google API errors → the status the router acts on, an OpenAI error body and the
retry hint (pure, no I/O).

Google answers ``{"error": {"code", "message", "status", "details"}}``. The HTTP status
mostly says it all (429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE …, handled like any
upstream's: failover and cooldowns), with one exception: an invalid Gemini API key is
a 400 INVALID_ARGUMENT whose details give the reason ``API_KEY_INVALID``; it is
treated as the 401 it is, so the key is set aside rather than the client blamed. A
``google.rpc.RetryInfo`` detail's ``retryDelay`` ("35s", "1.5s") becomes the
Retry-After the router honours (capped by ``circuit.cooldown_max_s``, as any).
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

import orjson

__all__ = ["GoogleError", "google_error", "retry_delay_s"]

_OPENAI_TYPES: Final = {400: "invalid_request_error", 401: "authentication_error",
                        403: "permission_error", 404: "invalid_request_error",
                        429: "rate_limit_error"}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_BAD_KEY_REASONS: Final = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
_MAX_MESSAGE: Final = 2000


class GoogleError(NamedTuple):
    status: int  # what the router acts on (a bad key's 400 reads as 401)
    body: dict[str, Any]  # OpenAI-shaped
    retry_after_s: float | None


def retry_delay_s(details: Any) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail's ``retryDelay``, if any."""
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and (m := _DURATION.match(delay)):
            return float(m.group(1))
    return None


def _reasons(details: Any) -> set[str]:
    return {str(d["reason"]) for d in details if isinstance(d, dict) and d.get("reason")} \
        if isinstance(details, list) else set()


def google_error(status: int, raw: bytes) -> GoogleError:
    """The router's reading of a Google error answer of HTTP ``status``."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        doc = doc[0]  # a streamGenerateContent without alt=sse answers errors in an array
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        text = raw[:_MAX_MESSAGE].decode("utf-8", "replace").strip()
        message = f"upstream answered {status}" + (f": {text}" if text else "")
        return GoogleError(status, _openai_body(status, message, None), None)
    details = error.get("details")
    code = error.get("status") if isinstance(error.get("status"), str) else None
    if status == 400 and _reasons(details) & _BAD_KEY_REASONS:
        status = 401
    message = str(error.get("message") or f"upstream answered {status}")[:_MAX_MESSAGE]
    return GoogleError(status, _openai_body(status, message, code), retry_delay_s(details))


def _openai_body(status: int, message: str, code: str | None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else
                             "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
