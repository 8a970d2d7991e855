"""AWS Signature Version 4 for one JSON POST (pure: no clock, no I/O of its own).

What Bedrock needs, and nothing more: the signed headers are ``content-type`` (when
sent), ``host``, ``x-amz-date`` and, with temporary credentials, ``x-amz-security-token``; the
payload hash is the hex SHA-256 of the exact body bytes sent; the service name is
``bedrock`` (not the ``bedrock-runtime`` of the host name).

The canonical URI is the request path URI-encoded once more. The path on the wire
already carries the model id percent-encoded as one segment (``...%3A0``); SigV4 for
every service but S3 encodes it again (``...%253A0``), and a signer that skips that step
earns ``403 SignatureDoesNotMatch`` for any model id with a ``:`` or ``/`` (an inference
profile's version suffix, an ARN). AWS documents the algorithm in "Create a signed AWS
API request" (IAM user guide); ``tests/test_bedrock_sigv4.py`` checks this module
byte for byte against botocore's ``SigV4Auth``, which is a test dependency only.

The signing key (four HMACs) depends only on the secret, the date, the region and the
service, so it is kept per (secret, date, region, service) in a small cache.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import quote

__all__ = ["ALGORITHM", "Credentials", "sign_headers"]

ALGORITHM: Final = "AWS4-HMAC-SHA256"
_KEYS: dict[tuple[str, str, str, str], bytes] = {}
_MAX_KEYS: Final = 256  # signing keys cached; one per (key, day, region) in practice


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair, plus the session token of temporary (STS) credentials."""

    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def __repr__(self) -> str:  # never the secret in a traceback or a log line
        return f"Credentials(access_key_id={self.access_key_id!r}, ...)"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    cache_key = (secret, day, region, service)
    key = _KEYS.get(cache_key)
    if key is None:
        if len(_KEYS) >= _MAX_KEYS:
            _KEYS.clear()
        key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), service),
                    "aws4_request")
        _KEYS[cache_key] = key
    return key


def canonical_uri(path: str) -> str:
    """The path as SigV4 canonicalises it for non-S3 services: encoded again, ``/`` and
    ``~`` kept (so ``%3A`` becomes ``%253A``)."""
    return quote(path or "/", safe="/~")


def sign_headers(*, method: str, host: str, path: str, body: bytes,
                 content_type: str, credentials: Credentials, region: str, service: str,
                 now: datetime) -> dict[str, str]:
    """The headers to add to a request so AWS accepts it: ``Authorization``,
    ``X-Amz-Date`` and, with a session token, ``X-Amz-Security-Token``.

    ``path`` is the path exactly as sent (already percent-encoded; Bedrock's runtime
    takes no query string), ``host`` the ``Host`` header as sent (with a port unless it
    is the scheme's default), ``content_type`` the header sent ("" for none), ``now`` a
    UTC time.
    """
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {"host": host, "x-amz-date": amz_date}
    if content_type:  # a GET sends none, so signs none
        headers["content-type"] = content_type
    if credentials.session_token:
        headers["x-amz-security-token"] = credentials.session_token
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join((
        method.upper(),
        canonical_uri(path),
        "",  # the canonical query string: Bedrock's runtime routes have none
        "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
        signed,
        hashlib.sha256(body).hexdigest(),
    ))
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join((ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()))
    key = _signing_key(credentials.secret_access_key, day, region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "Authorization": (f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
                          f"SignedHeaders={signed}, Signature={signature}"),
        "X-Amz-Date": amz_date,
    }
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    return out

