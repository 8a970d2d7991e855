"""Bedrock's errors as the router's: statuses that steer failover, OpenAI-shaped bodies.

Bedrock names an error in the ``x-amzn-ErrorType`` header (``ThrottlingException:http://
internal.amazon.com/coral/...``) and in a stream's exception frame
(``:exception-type: throttlingException``); the body is ``{"message": ...}``. The
status the router acts on follows the name:

============================================  ======  ===================================
error                                         status  what the router does
============================================  ======  ===================================
ThrottlingException, ModelNotReadyException,  429     key cools down, next candidate
ServiceQuotaExceededException (AWS: 400)
AccessDeniedException, UnrecognizedClient...,  403     key marked bad (as a 401), next one
InvalidSignature..., ExpiredToken...
ValidationException, ConflictException        400     the client's error, passed on
ResourceNotFoundException                     404     passed on (the model id is wrong)
ModelTimeoutException                         408     next candidate
ModelErrorException (AWS: 424), Internal...,  502/5xx next candidate
ServiceUnavailableException
============================================  ======  ===================================

Messages are kept (they explain a ValidationException to the client), cut to 1,000
characters, with AWS access key ids and account numbers masked; the configured secrets
themselves are removed from everything relayed by the router's redactor.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

__all__ = [
    "ERROR_TYPE_HEADER",
    "error_body",
    "error_name",
    "error_status",
    "scrub",
    "stream_error",
]

ERROR_TYPE_HEADER: Final = "x-amzn-ErrorType"
_MAX_MESSAGE: Final = 1000
# Access key ids (long-term AKIA, temporary ASIA) and the account number in an ARN.
_ACCESS_KEY_ID: Final = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_ACCOUNT: Final = re.compile(r"(arn:aws[a-z-]*:[a-z0-9-]*:[a-z0-9-]*:)\d{12}")

# Error name (either case of its first letter, as headers and frames differ) → status.
_STATUS: Final[dict[str, int]] = {
    "throttlingexception": 429,
    "modelnotreadyexception": 429,
    "servicequotaexceededexception": 429,
    "accessdeniedexception": 403,
    "unrecognizedclientexception": 403,
    "invalidsignatureexception": 403,
    "incompletesignatureexception": 403,
    "missingauthenticationtokenexception": 403,
    "expiredtokenexception": 403,
    "validationexception": 400,
    "conflictexception": 400,
    "serializationexception": 400,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "modelerrorexception": 502,
    "modelstreamerrorexception": 502,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
}
_OPENAI_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
    408: "timeout_error", 429: "rate_limit_error", 503: "service_unavailable"}


def error_name(header: str | None) -> str:
    """``ThrottlingException`` from ``ThrottlingException:http://...`` (or "")."""
    return (header or "").split(":", 1)[0].strip()


def error_status(status: int, name: str) -> int:
    """The status the router acts on for an AWS answer of ``status`` naming ``name``."""
    return _STATUS.get(name.lower(), status)


def scrub(message: str) -> str:
    """An AWS error message fit for the client: no access key id or account number."""
    message = _ACCESS_KEY_ID.sub("[redacted]", message[:_MAX_MESSAGE])
    return _ACCOUNT.sub(r"\1[account]", message)


def _message(body: bytes, status: int) -> str:
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        text = doc.get("message") or doc.get("Message")
        if isinstance(text, str) and text:
            return text
    text = body.decode("utf-8", "replace").strip()
    return text if text and not text.startswith("<") else f"bedrock answered HTTP {status}"


def _openai_error(status: int, name: str, message: str) -> dict[str, Any]:
    default = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": scrub(message), "type": _OPENAI_TYPES.get(status, default),
                      "param": None, "code": name or None}}


def error_body(status: int, name: str, body: bytes) -> bytes:
    """An AWS error answer as an OpenAI-shaped body (``status`` as from :func:`error_status`)."""
    return orjson.dumps(_openai_error(status, name, _message(body, status)))


def stream_error(exception_type: str, payload: bytes) -> tuple[int, dict[str, Any]]:
    """The router status and OpenAI-shaped error for a stream's exception frame."""
    name = exception_type[:1].upper() + exception_type[1:]
    status = error_status(502, name)
    return status, _openai_error(status, name, _message(payload, status))
