"""Discovered upstream models: what each provider with ``discover`` says it serves.

A provider with ``discover: true`` (or ``{refresh_s: N}``) is listed at start and every
``refresh_s`` through its type's ``list_models`` (OpenAI-compatible ``/models``,
Anthropic's paginated ``/v1/models``, Gemini's paginated ``models``...), with its keys
in order until one answers. Then (docs/catalog.md):

- ``GET /v1/models`` shows ``provider/model`` for each listed model the caller may use;
- a direct ``provider/model`` the provider did not list, and the config does not name,
  gets 404 ``model_not_found`` without an upstream call, so client-chosen names cannot
  grow the router's counters and usage reports;
- until a listing has succeeded, requests pass through as without discovery; a failed
  refresh keeps the last good list, and ``/admin/status`` shows each provider's list,
  its age and its last error;
- the context window and capabilities a list reports for a model (:class:`ModelInfo`:
  Gemini's ``inputTokenLimit``, vLLM's ``max_model_len``, OpenRouter's
  ``context_length`` and modalities, Anthropic's ``max_input_tokens``) fill in those a
  group member does not declare (:meth:`Catalog.described`, gateway/capabilities.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from ..config import Config, Member, Provider
from ..providers.base import AttemptFailure, ModelInfo, failure_from_exception
from ..providers.registry import provider_type

__all__ = ["Catalog", "ProviderListing"]

log = logging.getLogger("llm_router")

# A listing longer than this is cut (the rest is refused like an unlisted name): the
# bound on what one upstream's answer can add to the router's state.
MAX_MODELS: Final = 5_000
# The refresh loop looks again at least this often, so a reload that adds a provider
# is listed within seconds even when every other listing is far from due.
_IDLE_S: Final = 5.0


@dataclass(slots=True)
class ProviderListing:
    """One provider's catalog: the last good list and how the last try went."""

    models: frozenset[str] | None = None  # None until a listing succeeds
    # The listed models whose entry reports a window or capabilities, by id.
    described: Mapping[str, ModelInfo] | None = None
    listed_at: float | None = None  # wall-clock time of the last good listing
    last_error: str | None = None  # the last failed listing, in words (no secret)
    last_error_at: float | None = None
    due: float = 0.0  # monotonic time of the next listing


class Catalog:
    """Every discovering provider's listing, refreshed by :meth:`run`."""

    __slots__ = ("_configured", "_described", "_listings", "_wake")

    def __init__(self, cfg: Config) -> None:
        self._listings: dict[str, ProviderListing] = {}
        # (provider, model) -> what its provider's list says of it, for every listing:
        # empty (one test on the request path) when no list describes anything.
        self._described: dict[tuple[str, str], ModelInfo] = {}
        self._configured: Mapping[str, frozenset[str]] = {}
        self._wake = asyncio.Event()
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Follow a (re)loaded config: providers that no longer discover are forgotten,
        new ones are listed at once."""
        named: dict[str, set[str]] = {}
        for group in cfg.groups.values():
            for m in group.members:
                named.setdefault(m.provider, set()).add(m.model)
        for table in (cfg.alias_table, *(u.alias_table for u in cfg.users)):
            for alias in table:
                provider, sep, model = alias.target.partition("/")
                if sep:
                    named.setdefault(provider, set()).add(model)
        self._configured = {p: frozenset(ms) for p, ms in named.items()}
        wanted = {p.name for p in cfg.providers.values() if _discovers(p)}
        for name in list(self._listings):
            if name not in wanted:
                del self._listings[name]
        for name in wanted:
            self._listings.setdefault(name, ProviderListing())
        self._index()
        self._wake.set()

    def _index(self) -> None:
        self._described = {(name, model): info for name, listing in self._listings.items()
                           for model, info in (listing.described or {}).items()}

    def described(self, provider: str, model: str) -> ModelInfo | None:
        """What ``provider``'s last good list says of ``model`` (its window,
        capabilities); None when it says nothing or does not list it."""
        return self._described.get((provider, model)) if self._described else None

    def describes(self, members: Iterable[Member]) -> bool:
        """Whether a list reports a window or capabilities for one of ``members``."""
        return bool(self._described) and any((m.provider, m.model) in self._described
                                             for m in members)

    def models(self, provider: str) -> frozenset[str] | None:
        """The models ``provider`` listed last; None when it does not discover or no
        listing has succeeded yet."""
        listing = self._listings.get(provider)
        return listing.models if listing is not None else None

    def refuses(self, provider: str, model: str) -> bool:
        """Whether a direct ``provider/model`` is to be refused: the provider's last good
        list lacks it and the config does not name it."""
        listed = self.models(provider)
        return (listed is not None and model not in listed
                and model not in self._configured.get(provider, ()))

    def listed(self) -> list[tuple[str, str]]:
        """Every listed ``(provider, model)``, providers in config order, models sorted."""
        return [(name, model) for name, listing in self._listings.items()
                for model in sorted(listing.models or ())]

    def status(self, cfg: Config) -> dict[str, dict[str, Any]]:
        """Per discovering provider, for ``/admin/status``."""
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for name, listing in self._listings.items():
            provider = cfg.providers.get(name)
            out[name] = {
                "models": len(listing.models) if listing.models is not None else None,
                # How many of them the list gave a window or capabilities for.
                "described": len(listing.described)
                if listing.described is not None else None,
                "listed_at": listing.listed_at,
                "age_s": round(now - listing.listed_at, 1) if listing.listed_at else None,
                "refresh_s": provider.discover.refresh_s
                if provider is not None and provider.discover is not None else None,
                "last_error": listing.last_error,
                "last_error_at": listing.last_error_at,
            }
        return out

    async def run(self, config: Any, session: aiohttp.ClientSession) -> None:
        """List each provider when due, forever. ``config()`` gives the current config
        (a reload swaps it)."""
        while True:
            self._wake.clear()
            cfg: Config = config()
            now = time.monotonic()
            due = [(name, listing) for name, listing in self._listings.items()
                   if listing.due <= now and name in cfg.providers]
            if due:
                await asyncio.gather(*(self._refresh(cfg.providers[name], listing, session)
                                       for name, listing in due))
            upcoming = min((listing.due for listing in self._listings.values()),
                           default=now + _IDLE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.05, min(_IDLE_S, upcoming - time.monotonic())))

    async def _refresh(self, provider: Provider, listing: ProviderListing,
                       session: aiohttp.ClientSession) -> None:
        assert provider.discover is not None
        listing.due = time.monotonic() + provider.discover.refresh_s
        ptype = provider_type(provider.type)
        error = "the provider has no key to list its models with"
        for key in provider.keys:
            try:
                models = await ptype.list_models(session, provider, key)
            except (aiohttp.ClientError, TimeoutError, ValueError, AttemptFailure) as exc:
                failure = failure_from_exception(exc, provider.name)
                status = failure.status or getattr(exc, "status", None)
                error = f"{failure.message}" + (f" (HTTP {status})" if status else "")
                continue
            if models is None:
                error = (f"provider type '{provider.type}' cannot list its models, or "
                         "answered something that is not a model list")
                continue
            if len(models) > MAX_MODELS:
                log.warning("provider '%s' lists %d models; the first %d are kept",
                            provider.name, len(models), MAX_MODELS)
            kept = models[:MAX_MODELS]
            listing.models = frozenset(m.id for m in kept)
            listing.described = {m.id: m for m in kept
                                 if m.context_window is not None or m.capabilities is not None}
            listing.listed_at = time.time()
            self._index()
            return
        if listing.last_error != error:  # one line per new reason, not one per refresh
            log.warning("listing the models of provider '%s' failed: %s%s", provider.name,
                        error, "; keeping the last good list" if listing.models else "")
        listing.last_error, listing.last_error_at = error, time.time()


def _discovers(provider: Provider) -> bool:
    return provider.discover is not None and provider.discover.enabled
