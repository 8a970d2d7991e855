"""Who is calling, what they may use, and what it costs.

Keys are looked up by their sha256 (the config stores hashes, never needs secrets) and
confirmed with a constant-time comparison. The legacy top-level ``api_key`` acts as one
more user, named ``default``, allowed every model.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from multidict import istr

from ..config import DEFAULT_PRICE, Budget, Config, Limits, Member, Price, UserKey, sha256_hex
from ..config.aliases import AliasTable
from ..errors import Forbidden, Unauthorized

__all__ = [
    "ANONYMOUS",
    "DEFAULT_PRICE",
    "Caller",
    "KeyIndex",
    "cost_usd",
    "estimate_cost",
    "extract_key",
    "price_for",
    "priced_usd",
]



class Named(Protocol):
    """What an allowlist matches: the model name a client sent (a routing ``Target``)."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated client of one request."""

    user: str
    key: str  # the client key's name (never the secret)
    role: str = "user"
    models: tuple[str, ...] | None = None  # user allowlist
    key_models: tuple[str, ...] | None = None  # narrower per-key allowlist
    limits: Limits | None = None
    key_limits: Limits | None = None
    budget: Budget | None = None
    key_budget: Budget | None = None
    aliases: AliasTable | None = None  # the user's own, tried before the top-level ones

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def has_budget(self) -> bool:
        return self.budget is not None or self.key_budget is not None

    def may_use(self, target: Named) -> bool:
        """Whether both allowlists admit the target (a group name or provider/model)."""
        return _allowed(self.models, target) and _allowed(self.key_models, target)

    def check(self, target: Named) -> None:
        if not self.may_use(target):
            raise Forbidden(f"Your key may not use the model '{target.name}'.", param="model")


_MAX_SEEN: Final = 4096  # KeyIndex.caller's remembered header values
# As istr: a request's headers find them without folding their case first.
_AUTHORIZATION: Final = istr("Authorization")
_X_API_KEY: Final = istr("x-api-key")

ANONYMOUS: Final = Caller(user="anonymous", key="none", role="admin")
_LEGACY: Final = Caller(user="default", key="api_key", role="admin")


def _allowed(patterns: tuple[str, ...] | None, target: Named) -> bool:
    # Patterns match the name the client sent: a group name, or provider/model.
    return patterns is None or any(fnmatch.fnmatchcase(target.name, p) for p in patterns)


def extract_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a client presented: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


class KeyIndex:
    """Client keys of one config, indexed by sha256; built once per config load."""

    def __init__(self, cfg: Config, insecure_no_auth: bool = False) -> None:
        # The Caller of each key, built once: it is frozen, and the config it reads is
        # replaced, not changed, by a reload (which builds a new index).
        self._by_hash: dict[str, tuple[UserKey, Caller]] = {}
        for user in cfg.users:
            for key in user.keys:
                self._by_hash[key.sha256] = (key, Caller(
                    user=user.name, key=key.name, role=user.role, models=user.models,
                    key_models=key.models, limits=user.limits, key_limits=key.limits,
                    budget=user.budget, key_budget=key.budget,
                    aliases=user.alias_table or None))
        self._legacy = sha256_hex(cfg.api_key) if cfg.api_key else None
        self.open = not self._by_hash and self._legacy is None and insecure_no_auth
        # Authorization header values already authenticated -> their caller. A client
        # sends the same header on every request: the key's hash and comparison are paid
        # once per value, not per request. Only values that named a valid key go in (a
        # wrong key is hashed every time, as before), bounded in number; a reload brings
        # a new index, so a key removed from the config is no longer found.
        self._seen: dict[str, Caller] = {}

    def names_a_key(self, model: str) -> bool:
        """Whether ``model``, or its part after ``provider/``, is a client key of this
        config: a user who put their key in the model field. Keys are kept as hashes, so
        the log redaction cannot find one in a line; the name must be refused before it
        is logged or sent upstream. As pasted too: with whitespace around it (a copied
        line's newline) or as the header's value, ``Bearer KEY``."""
        if not self._by_hash and self._legacy is None:
            return False
        _, sep, tail = model.partition("/")
        names = [model, tail] if sep else [model]
        # As a header's value: extract_key drops the scheme and the whitespace.
        names += [key for text in names
                  if (key := extract_key(text.strip(), text)) is not None and key != text]
        return any((digest := sha256_hex(name)) in self._by_hash or digest == self._legacy
                   for name in names)

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """:meth:`authenticate` of :func:`extract_key` of a request's headers."""
        authorization = headers.get(_AUTHORIZATION)
        if authorization is not None:
            found = self._seen.get(authorization)
            if found is not None:
                return found
        caller = self.authenticate(extract_key(authorization, headers.get(_X_API_KEY)))
        if authorization and not self.open and len(self._seen) < _MAX_SEEN:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():  # the header named the key
                self._seen[authorization] = caller
        return caller

    def authenticate(self, presented: str | None) -> Caller:
        """The caller behind a presented key; :class:`Unauthorized` if there is none."""
        if self.open:
            return ANONYMOUS
        if presented is None:
            raise Unauthorized("Missing API key: send 'Authorization: Bearer KEY' or "
                               "'x-api-key: KEY'.", code="missing_api_key")
        # Header values arrive decoded with surrogateescape: hash the bytes as sent, so a
        # key that is not UTF-8 is just a wrong key (401), not a UnicodeEncodeError (500).
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
        found = self._by_hash.get(digest)
        if found is not None and hmac.compare_digest(found[0].sha256, digest):
            return found[1]
        if self._legacy is not None and hmac.compare_digest(self._legacy, digest):
            return _LEGACY
        raise Unauthorized("Invalid API key.")


def price_for(pricing: Mapping[str, Price], model: str) -> Price | None:
    """The model's price, else ``pricing.default``; None when neither exists."""
    price = pricing.get(model)
    return price if price is not None else pricing.get(DEFAULT_PRICE)


def cost_usd(pricing: Mapping[str, Price], model: str, prompt_tokens: int,
             completion_tokens: int, cached_tokens: int = 0) -> float | None:
    """USD for one response by the pricing table; None when the model has no price."""
    price = pricing.get(model)  # price_for, inline
    if price is None:
        price = pricing.get(DEFAULT_PRICE)
        if price is None:
            return None
    return priced_usd(price, prompt_tokens, completion_tokens, cached_tokens)


def priced_usd(price: Price, prompt_tokens: int, completion_tokens: int,
               cached_tokens: int = 0) -> float:
    """USD for one response at ``price`` (:func:`cost_usd` once the price is found)."""
    cached = min(max(cached_tokens, 0), prompt_tokens) if price.cached_input is not None else 0
    uncached = prompt_tokens - cached
    total = uncached * price.input + completion_tokens * price.output
    if cached:
        total += cached * (price.cached_input or 0.0)
    return total / 1_000_000


def estimate_cost(pricing: Mapping[str, Price], members: Sequence[Member], prompt_tokens: int,
                  completion_tokens: int) -> float:
    """What a request is reserved at before the pick: its estimated tokens priced at the
    dearest member it could land on (unpriced members count 0; budgeted callers never
    reach them, see :func:`llm_router.gateway.routing.priced_target`)."""
    worst = 0.0
    for m in members:
        cost = cost_usd(pricing, m.model, prompt_tokens, completion_tokens)
        if cost is not None and cost > worst:
            worst = cost
    return worst
