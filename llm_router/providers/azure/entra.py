"""Microsoft Entra ID client-credentials tokens for ``type: azure`` providers.

A provider with an ``entra`` block authenticates with ``Authorization: Bearer <token>``
instead of ``api-key``. :class:`EntraTokens` gets the token from the block's token URL
(form ``grant_type=client_credentials``, scope ``https://cognitiveservices.azure.com/
.default``) and keeps it until shortly before its ``expires_in`` runs out. However many
requests need a token at once, one request goes to the token endpoint at a time; the
others wait for its answer. A failed fetch fails the attempt (:class:`AttemptFailure`,
reason ``token``, retryable), so the key fails over and cools like one whose upstream
answered 5xx; for a few seconds after, attempts fail at once instead of asking again.
While a still-valid token is being replaced, a failed refresh keeps serving the old one.

Tokens are kept per :class:`~llm_router.config.Entra` value (the same credentials after
a reload keep their token) and per ``ClientSession`` (:func:`tokens_for`), so they live
as long as the router's upstream session and no longer. The client secret appears in the
form sent to the token endpoint and nowhere else: not in errors, logs or reprs.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import orjson

from ...config import Entra
from .. import AttemptFailure, failure_from_exception

__all__ = ["SCOPE", "EntraTokens", "tokens_for"]

SCOPE: Final = "https://cognitiveservices.azure.com/.default"
# A token is replaced this long before it expires (azure-identity refreshes 5 minutes
# early too), or halfway through its life if that is shorter.
_REFRESH_MARGIN_S: Final = 300.0
# After a failed fetch, attempts fail at once for this long rather than asking again;
# the failure carries it as retry_after, so the key cools for as long.
_FAILURE_BACKOFF_S: Final = 5.0
# The token endpoint answers in well under a second; a fetch is shared by every waiting
# request, so it gets its own bound rather than the first request's.
_FETCH_TIMEOUT_S: Final = 30.0
_MAX_TOKEN_ANSWER_BYTES: Final = 64 * 1024


@dataclass(slots=True)
class _Token:
    """What is known about one identity's token."""

    value: str = ""
    refresh_at: float = 0.0  # clock time: past it, a request fetches a new one
    expires_at: float = 0.0  # clock time: past it, the token is not sent any more
    fetching: asyncio.Task[str] | None = None
    failure: AttemptFailure | None = None  # the last fetch's, while failed_until
    failed_until: float = 0.0


class EntraTokens:
    """Client-credentials tokens, one per Entra identity; ``clock`` is monotonic seconds
    (injectable, so tests move time instead of waiting)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: dict[Entra, _Token] = {}

    async def token(self, session: aiohttp.ClientSession, entra: Entra, provider: str) -> str:
        """A valid access token for ``entra``; :class:`AttemptFailure` if none can be had."""
        known = self._tokens.get(entra)
        if known is None:
            known = self._tokens[entra] = _Token()
        now = self.clock()
        if known.value and now < known.refresh_at:
            return known.value
        if known.failure is not None and now < known.failed_until:
            if known.value and now < known.expires_at:
                return known.value  # a refresh failed lately: the old token still works
            raise _copy(known.failure)
        if known.fetching is None:
            known.fetching = asyncio.get_running_loop().create_task(
                self._fetch(session, entra, known, provider))
        try:
            # Shielded: a waiter that gives up (client gone, timeout) leaves the fetch to
            # the others rather than cancelling it under them.
            return await asyncio.shield(known.fetching)
        except AttemptFailure as failure:
            raise _copy(failure) from None  # one exception object per waiting attempt

    def forget(self, entra: Entra, value: str) -> None:
        """Drop ``value`` if it is still the cached token of ``entra``: the upstream
        refused it (revoked, or rotated early), so the next request fetches another. A
        token another request has already replaced is left alone."""
        known = self._tokens.get(entra)
        if known is not None and known.value == value:
            known.value, known.refresh_at, known.expires_at = "", 0.0, 0.0

    async def _fetch(self, session: aiohttp.ClientSession, entra: Entra, known: _Token,
                     provider: str) -> str:
        try:
            value, lifetime = await _request_token(session, entra, provider)
        except AttemptFailure as failure:
            failure.retry_after = f"{_FAILURE_BACKOFF_S:g}"
            known.failure, known.failed_until = failure, self.clock() + _FAILURE_BACKOFF_S
            if known.value and self.clock() < known.expires_at:
                return known.value
            raise
        finally:
            known.fetching = None
        now = self.clock()
        known.value, known.failure = value, None
        known.expires_at = now + lifetime
        known.refresh_at = now + lifetime - min(_REFRESH_MARGIN_S, lifetime / 2)
        return value


def _copy(failure: AttemptFailure) -> AttemptFailure:
    # Each attempt raises its own exception object (tracebacks are per raise).
    return AttemptFailure(failure.reason, failure.message, failure.status,
                          failure.retry_after, failure.body)


async def _request_token(session: aiohttp.ClientSession, entra: Entra,
                         provider: str) -> tuple[str, float]:
    """(access token, lifetime in seconds) from the token endpoint."""
    form = {"grant_type": "client_credentials", "client_id": entra.client_id,
            "client_secret": entra.client_secret, "scope": SCOPE}
    try:
        async with asyncio.timeout(_FETCH_TIMEOUT_S):
            async with session.post(entra.token_url, data=form, allow_redirects=False,
                                    headers={"Accept": "application/json"}) as resp:
                raw = await resp.content.read(_MAX_TOKEN_ANSWER_BYTES)
                status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = failure_from_exception(exc, provider)
        failure.reason = "token"
        failure.message = f"{failure.message} (its Entra token endpoint)"
        raise failure from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    if status != 200:
        # Entra's error code (invalid_client, unauthorized_client ...) names the problem;
        # its description may quote request details, so it is left out.
        code = doc.get("error")
        detail = f" ({code})" if isinstance(code, str) and code.isidentifier() else ""
        raise AttemptFailure("token", f"upstream '{provider}': its Entra token endpoint "
                             f"answered {status}{detail}")
    value = doc.get("access_token")
    lifetime = doc.get("expires_in")
    try:  # Entra's older endpoints send expires_in as a string
        seconds = float(lifetime) if isinstance(lifetime, int | float | str) else -1.0
    except ValueError:
        seconds = -1.0
    if not isinstance(value, str) or not value or not seconds > 0:
        raise AttemptFailure("token", f"upstream '{provider}': its Entra token endpoint "
                             "sent no access_token with an expires_in")
    return value, seconds


_BY_SESSION: weakref.WeakKeyDictionary[aiohttp.ClientSession, EntraTokens] = \
    weakref.WeakKeyDictionary()


def tokens_for(session: aiohttp.ClientSession) -> EntraTokens:
    """The token cache of the router's upstream ``session`` (made on first use); it goes
    with the session."""
    tokens = _BY_SESSION.get(session)
    if tokens is None:
        tokens = _BY_SESSION[session] = EntraTokens()
    return tokens
