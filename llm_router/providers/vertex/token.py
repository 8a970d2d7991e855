"""Vertex AI access tokens from service-account key files: signed, fetched, cached.

A token is got by the OAuth 2.0 JWT bearer grant: an assertion signed RS256 with the
file's ``private_key`` (header ``kid`` = ``private_key_id``; claims ``iss`` =
``client_email``, ``scope`` = cloud-platform, ``aud`` = the file's ``token_uri``,
``iat``, ``exp`` = ``iat`` + 1 h) is posted as a form to ``token_uri`` and answered
with ``access_token`` and ``expires_in``.

:class:`TokenCache` keeps one token per credentials file and refreshes it before it
expires (:data:`REFRESH_MARGIN_S`, or half its life for short-lived ones), one refresh
in flight per file: concurrent requests wait for that one. :meth:`TokenCache.forget`
drops a token the upstream refused, so the next use fetches a new one.

Signing uses ``cryptography`` alone (the ``google`` extra): RS256 is PKCS#1 v1.5 with
SHA-256, and a JWT is three base64url segments, so neither PyJWT nor google-auth (whose
refresh is synchronous, made for ``requests``) would add anything but weight. Errors
never carry the key or the assertion: :class:`TokenError` names the file and what failed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson

__all__ = [
    "REFRESH_MARGIN_S",
    "SCOPE",
    "TOKEN_URI",
    "ServiceAccount",
    "TokenCache",
    "TokenError",
    "assertion",
    "load_account",
]

SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_URI: Final = "https://oauth2.googleapis.com/token"  # when the file names none
REFRESH_MARGIN_S: Final = 300.0  # refresh this long before expiry (Google's tokens last 1 h)
_ASSERTION_LIFE_S: Final = 3600  # the longest Google accepts
_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_MAX_ANSWER_BYTES: Final = 64 * 1024
_FETCH_TIMEOUT_S: Final = 30.0

log = logging.getLogger("llm_router.vertex")


class TokenError(Exception):
    """No token could be had for a credentials file. The message says why without the
    file's path (a key's secret, for the router's redaction) or anything in it."""


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What a token needs of a service-account key file (the key parsed, never logged)."""

    email: str
    key_id: str
    token_uri: str
    private_key: Any  # cryptography's RSAPrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def load_account(path: str) -> ServiceAccount:
    """The service account of the key file at ``path``; raises :class:`TokenError`."""
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:  # reported at config load; this is a second line of defence
        raise TokenError("vertex providers need the google extra: pip install '.[google]' "
                         "in the llm-router checkout") from None
    try:
        with open(path, "rb") as f:
            doc = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise TokenError(f"cannot read its credentials file ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise TokenError("its credentials file is not a JSON object")
    try:
        key = load_pem_private_key(str(doc.get("private_key") or "").encode(), password=None)
    except (ValueError, TypeError):
        raise TokenError("the private_key of its credentials file is not a PEM private "
                         "key") from None
    return ServiceAccount(str(doc.get("client_email") or ""), str(doc.get("private_key_id") or ""),
                    str(doc.get("token_uri") or TOKEN_URI), key)


def assertion(account: ServiceAccount, now: int) -> str:
    """The signed JWT for the bearer grant, issued at ``now`` (Unix seconds)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    header = {"alg": "RS256", "typ": "JWT", **({"kid": account.key_id} if account.key_id
                                                else {})}
    claims = {"iss": account.email, "scope": SCOPE, "aud": account.token_uri, "iat": now,
              "exp": now + _ASSERTION_LIFE_S}
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = account.private_key.sign(signing_input.encode(), padding.PKCS1v15(),
                                         hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


@dataclass(slots=True)
class _Entry:
    token: str = ""
    refresh_at: float = 0.0  # on the cache's clock
    expires_at: float = 0.0
    refreshing: asyncio.Task[str] | None = None


class TokenCache:
    """Access tokens per credentials file (see the module docstring).

    ``clock`` is monotonic seconds for expiry; ``wall`` gives the assertion's ``iat``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self._entries: dict[str, _Entry] = {}

    async def token(self, session: aiohttp.ClientSession, path: str) -> str:
        """A valid access token for the credentials file at ``path``; raises
        :class:`TokenError`."""
        entry = self._entries.get(path)
        if entry is None:
            entry = self._entries[path] = _Entry()
        now = self.clock()
        if entry.token and now < entry.refresh_at:
            return entry.token
        task = entry.refreshing
        if task is None or task.done():
            task = entry.refreshing = asyncio.get_running_loop().create_task(
                self._refresh(session, path, entry))
            task.add_done_callback(functools.partial(_retrieve, entry))
        if entry.token and now < entry.expires_at:
            return entry.token  # still valid: the refresh runs in the background meanwhile
        # shield: one waiter giving up (its client left) must not cancel the others'.
        return await asyncio.shield(task)

    def forget(self, path: str, token: str) -> None:
        """The upstream refused ``token``: the next :meth:`token` fetches a new one."""
        entry = self._entries.get(path)
        if entry is not None and entry.token == token:
            entry.token = ""

    async def _refresh(self, session: aiohttp.ClientSession, path: str, entry: _Entry) -> str:
        account = load_account(path)
        form = {"grant_type": _GRANT, "assertion": assertion(account, int(self.wall()))}
        started = self.clock()
        try:
            async with session.post(account.token_uri, data=form,
                                    timeout=aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_S),
                                    allow_redirects=False) as resp:
                raw = await resp.content.read(_MAX_ANSWER_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenError(f"its token endpoint failed ({type(exc).__name__})") from None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if status != 200 or not isinstance(doc, dict) or not isinstance(
                doc.get("access_token"), str):
            said = doc.get("error_description") or doc.get("error") if isinstance(
                doc, dict) else None
            raise TokenError(f"its token endpoint answered {status}"
                             + (f": {str(said)[:200]}" if said else ""))
        life = doc.get("expires_in")
        life = float(life) if isinstance(life, int | float) and life > 0 else 3600.0
        entry.token = doc["access_token"]
        entry.expires_at = started + life
        entry.refresh_at = started + life - min(REFRESH_MARGIN_S, life / 2)
        return entry.token


def _retrieve(entry: _Entry, task: asyncio.Task[str]) -> None:
    # A refresh's failure is always retrieved here (never "never retrieved"). A waiting
    # request reports it (an answer of 503); one made in the background, while the old
    # token still served, is logged, as no request will.
    if not task.cancelled() and (exc := task.exception()) is not None and entry.token:
        log.warning("vertex token refresh failed in the background: %s", exc)
