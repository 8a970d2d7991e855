"""Typed errors and their one mapping to OpenAI- or Anthropic-shaped JSON.

    RouterError                      status, type, code, param, headers
    ├── BadRequest                   400 invalid_request_error
    ├── Unauthorized                 401 authentication_error
    ├── BudgetExhausted              402 insufficient_quota
    ├── Forbidden                    403 permission_error
    ├── ModelNotFound                404 model_not_found
    ├── RequestTimeout               408 request_timeout (a body sent too slowly)
    ├── PayloadTooLarge              413 request_too_large
    ├── HeadersTooLarge              431 headers_too_large
    ├── RateLimited                  429 rate_limit_exceeded (Retry-After)
    ├── UpstreamError                502 upstream_error (the upstream failed or answered nonsense)
    ├── UpstreamTimeout              504 upstream_timeout
    └── Unavailable                  503 no_candidate_available (Retry-After)

Handlers raise these; the error middleware in ``app.py`` renders them with
:func:`error_body` in the caller's dialect. Messages are written for the client and
never carry a secret or a traceback. What they echo of the request is bounded: a value
the client sent is quoted through :func:`echoed` (its first 200 characters), and no
message is longer than 4,096 characters, so a 100 KB field cannot come back whole.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final

import orjson

__all__ = [
    "BadRequest",
    "BudgetExhausted",
    "Forbidden",
    "HeadersTooLarge",
    "ModelNotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "RouterError",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UpstreamTimeout",
    "anthropic_error_type",
    "echoed",
    "error_body",
]

# A value the client sent, quoted in an error, is cut here: enough to recognise it.
_ECHO_CHARS: Final = 200
# No error message is longer: the bound on what any error echoes (an upstream's too).
_MESSAGE_CHARS: Final = 4096


def echoed(value: object) -> str:
    """``value`` as text to quote in an error message, cut to :data:`_ECHO_CHARS`."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= _ECHO_CHARS:
        return text
    return f"{text[:_ECHO_CHARS]}... ({len(text):,} characters)"


class RouterError(Exception):
    """A failure with an HTTP status that the client is told about."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # Why the router refused, for rejections_total{reason}; never shown to the client.
        self.reason = reason
        self.code = code if code is not None else self.default_code
        self.param = param
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Retry-After takes whole seconds; round up so a client never retries early.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(RouterError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class BudgetExhausted(RouterError):
    status = 402
    type = "insufficient_quota"
    default_code = "budget_exhausted"


class Forbidden(RouterError):
    status = 403
    type = "permission_error"
    default_code = "model_not_allowed"


class ModelNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class RequestTimeout(RouterError):
    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class HeadersTooLarge(RouterError):
    status = 431
    type = "invalid_request_error"
    default_code = "headers_too_large"


class RateLimited(RouterError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(RouterError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class UpstreamTimeout(RouterError):
    status = 504
    type = "upstream_error"
    default_code = "upstream_timeout"


class Unavailable(RouterError):
    status = 503
    type = "service_unavailable"
    default_code = "no_candidate_available"


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    431: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return _ANTHROPIC_TYPES.get(status, "api_error")


def error_body(err: RouterError, *, anthropic: bool = False) -> bytes:
    """The JSON body for ``err``: OpenAI's shape, or Anthropic's on ``/v1/messages``."""
    message = err.message
    if len(message) > _MESSAGE_CHARS:
        message = message[:_MESSAGE_CHARS] + "..."
    payload: dict[str, Any]
    if anthropic:
        payload = {
            "type": "error",
            "error": {"type": anthropic_error_type(err.status), "message": message},
        }
    else:
        payload = {
            "error": {
                "message": message,
                "type": err.type,
                "param": err.param,
                "code": err.code,
            }
        }
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        # A message quoting a header whose bytes were not UTF-8 (lone surrogates): show
        # them escaped rather than fail the error itself into a plain-text 500.
        inner = payload["error"]
        inner["message"] = message.encode("utf-8", "backslashreplace").decode()
        return orjson.dumps(payload)
