"""The process-wide state: one object, one current config, everything else keyed by identity.

A reload builds and validates a new :class:`Config` elsewhere and calls
:meth:`RouterState.swap_config`; requests in flight keep the ``Config`` they captured
at their start. Counters, key health, latency averages and limit windows live here,
keyed by provider name, key label and model, so they carry over a swap untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..dialects.responses.store import MemoryResponseStore, ResponseStore, SharedResponseStore
from ..ledger.accounting import KeyIndex
from ..ledger.journal import Journal
from ..ledger.limits import Ledger
from ..ledger.usage import CounterKey, SnapshotStore, UsageCounters
from ..observe.labels import LabelNames
from ..observe.metrics import LIMIT_NAMES, Metrics, UserGauges
from ..observe.redact import Redactor
from ..observe.traffic import Traffic
from ..state.health import KeyHealth
from ..state.store import MemoryStore, StateStore
from ..webhooks import Webhooks
from .affinity import AffinityStore, MemoryAffinityStore, RecentLoad, SharedAffinityStore
from .capabilities import ContextBounds
from .catalog import Catalog
from .deadlines import Deadlines
from .response_cache import ResponseCache
from .routing import counter_keys, level_new_keys
from .upstream_usage import RejectedUsage

if TYPE_CHECKING:
    import aiohttp

    from ..observe.tracing import Tracing

__all__ = ["RouterState"]

log = logging.getLogger("llm_router")

_LATENCY_ALPHA = 0.3


def open_store(cfg: Config, ledger: Ledger, counters: UsageCounters, health: KeyHealth,
               metrics: Metrics) -> StateStore:
    """The store the config asks for: Redis with ``state.redis_url``, else memory."""
    if cfg.state.redis_url:
        from ..state.redis_store import RedisStore  # the optional extra: imported only when used

        return RedisStore(cfg.state, ledger, counters, health, metrics)
    return MemoryStore(ledger, counters, health, metrics)


class RouterState:
    """Everything that lives as long as the process."""

    def __init__(self, cfg: Config, metrics: Metrics | None = None, *,
                 insecure_no_auth: bool = False, config_path: str | None = None) -> None:
        self.config = cfg
        self.config_path = config_path
        self.insecure_no_auth = insecure_no_auth
        self.keys = KeyIndex(cfg, insecure_no_auth)
        self.metrics = metrics if metrics is not None else Metrics()
        self.labels = LabelNames(cfg)  # what metric labels may say (labels.py)
        self.redactor = Redactor(cfg)  # secrets kept out of relayed bodies and logs
        self.counters = UsageCounters()
        self.rejected_usage = RejectedUsage(self.metrics)  # upstream counts out of range
        self.ledger = Ledger()  # per-user / per-key limits and spend
        self.health = KeyHealth()
        # The one state seam, chosen once from the config: limits, spend, counters and
        # cooldowns reach as far as it shares them (store.py).
        self.store: StateStore = open_store(cfg, self.ledger, self.counters, self.health,
                                            self.metrics)
        # Signed event notifications (docs/webhooks.md); inert without a webhooks block.
        self.webhooks = Webhooks(cfg, self.store, self.metrics)
        self.deadlines = Deadlines()  # bounds attempts' waits for headers and whole bodies
        self.latency: dict[CounterKey, float] = {}  # EWMA of time to first byte, seconds
        self.round_robin: dict[str, int] = {}
        # Context windows learnt from upstream context-length errors (capabilities.py).
        self.context_bounds = ContextBounds()
        self.traffic = Traffic()  # the last minute, for GET /admin/status
        self.catalog = Catalog(cfg)  # discovered upstream models (catalog.py)
        # Prompt-cache pins (affinity.py): in Redis when the state is shared, so replicas
        # agree on a conversation's key; else an LRU in this process.
        self.affinity: AffinityStore = (MemoryAffinityStore() if self.store.backend == "memory"
                                        else SharedAffinityStore(self.store))
        # Each key's recent tokens, which bound how far a pin may run ahead (affinity.py);
        # read from the counters, so with shared state it follows the fleet's traffic.
        self.recent_load = RecentLoad()
        # The response cache (response_cache.py): in Redis when the state is shared, so
        # replicas serve each other's answers; else an LRU in this process.
        self.cache = ResponseCache(cfg, self.metrics,
                                   None if self.store.backend == "memory" else self.store)
        self.session: aiohttp.ClientSession | None = None
        # The loop serving requests, set with the session: the request path reads its
        # clock from it rather than asking asyncio (a getpid() system call each time).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tracing: Tracing | None = None  # set at start-up when otel is configured
        self.snapshot: SnapshotStore | None = None
        self.journal: Journal | None = None  # changes since the snapshot (snapshots.py)
        self.snapshot_failing = False  # persistence failed repeatedly: not ready
        self.final_snapshot_failed = False  # the process exits 1
        self.draining = False
        self.inflight = 0
        self.request_tasks: set[asyncio.Task[None]] = set()  # API requests being served
        # Called as listener(old, new) after every swap, on the loop thread (snapshots
        # follow a changed usage.snapshot_path this way).
        self.swap_listeners: list[Callable[[Config, Config], None]] = []
        self.started = time.time()
        r = cfg.responses
        # previous_response_id and GET/DELETE /v1/responses/{id} (responses_store.py): in
        # the shared map when replicas share state, so any of them continues a conversation.
        self.responses: ResponseStore = (
            MemoryResponseStore(r.store_max_entries, r.store_max_bytes, r.store_ttl_s)
            if self.store.backend == "memory"
            else SharedResponseStore(self.store, r.store_max_bytes, r.store_ttl_s))
        self.metrics.config_last_reload.set(time.time())
        self.metrics.watch_state(self._scrape_state)
        self._user_gauges: list[UserGauges] = []  # refresh_user_gauges, before a scrape
        self.metrics.watch_users(self._scrape_users)

    def swap_config(self, cfg: Config) -> None:
        """Make ``cfg`` current; state keyed by identity carries over, and keys new to
        a group join it level with their peers (:meth:`level_new_keys`)."""
        old = self.config
        self.keys = KeyIndex(cfg, self.insecure_no_auth)
        self.labels = LabelNames(cfg)
        self.redactor = Redactor(cfg, self.redactor)
        self.config = cfg
        self.catalog.configure(cfg)
        # Windows learnt from context-length errors start afresh: the reload may declare
        # them, and a bound learnt from a misread error lasts no longer than this.
        self.context_bounds.clear()
        self.level_new_keys(counter_keys(cfg) - counter_keys(old))
        self.health.generation += 1  # keys marked bad get another chance
        self.webhooks.configure(cfg)  # after the bad marks are cleared: providers up again
        for provider, key in _changed_keys(old, cfg):
            # A new secret (or none) makes what the old one earned meaningless.
            if self.health.forget(provider, key):
                log.info("key '%s' of provider '%s' changed or was removed: its cooldown and "
                         "circuit state are cleared", key, provider)
        r = cfg.responses
        self.responses.configure(r.store_max_entries, r.store_max_bytes, r.store_ttl_s)
        self.metrics.config_last_reload.set(time.time())
        if old.state != cfg.state:
            log.warning("state settings changed (now %s, prefix '%s'): the state store is chosen "
                        "at start, so this takes effect at the next restart; counters, limits "
                        "and spend stay where they are until then (docs/scaling.md)",
                        cfg.state.redis_display or "this process only", cfg.state.prefix)
        for listener in self.swap_listeners:
            listener(old, cfg)

    def level_new_keys(self, new: set[CounterKey]) -> None:
        """Start these counters level with their group (routing.level_new_keys)."""
        if not new:
            return
        for group, (provider, key, model), tokens in level_new_keys(self.config,
                                                                    self.counters, new):
            if self.journal is not None:
                self.journal.append(("s", provider, key, model, tokens))
            log.info("key '%s' of provider '%s' (model '%s') joins group '%s' level with its "
                     "least-loaded peer: its selection counter starts at %d tokens", key,
                     provider, model, group, tokens)

    def observe_latency(self, key: CounterKey, seconds: float) -> None:
        prev = self.latency.get(key)
        self.latency[key] = seconds if prev is None else prev + _LATENCY_ALPHA * (seconds - prev)

    @property
    def ready(self) -> bool:
        """Config loaded, not draining, and at least one provider key not cooling or bad."""
        if self.draining or self.snapshot_failing:
            return False
        now = time.monotonic()
        return any(
            self.health.available_at(p.name, k.label, now) <= now
            for p in self.config.providers.values() for k in p.keys
        )

    def _scrape_state(self) -> tuple[list[tuple[CounterKey, int]],
                                     list[tuple[tuple[str, str], str]]]:
        cfg = self.config
        states = self.health.snapshot()
        keys = [((p.name, k.label), states.get((p.name, k.label), "ok"))
                for p in cfg.providers.values() for k in p.keys]
        # Counters of models the config does not name (direct provider/model requests)
        # are summed under "other", like every other label.
        labels = self.labels
        tokens: dict[CounterKey, int] = {}
        for (provider, key, model), n in self.counters.tokens.items():
            bounded = (provider, key, labels.model(provider, model))
            tokens[bounded] = tokens.get(bounded, 0) + n
        return list(tokens.items()), keys

    async def refresh_user_gauges(self) -> None:
        """Read budget and limits left for each configured user from the store's report
        (what ``GET /admin/usage`` shows: fleet-wide with a shared store), for the scrape
        that follows; the collector cannot await."""
        report = await self.store.admin_usage(self.config)
        # Only names from the config become labels.
        self._user_gauges = [_user_gauges(row) for row in report["users"]
                             if row.get("configured")]

    def _scrape_users(self) -> list[UserGauges]:
        return self._user_gauges


def _user_gauges(row: dict[str, Any]) -> UserGauges:
    budget = row.get("budget")
    limits = row.get("limits") or {}
    left = tuple((name, float(limits[name]["remaining"])) for name in LIMIT_NAMES
                 if name in limits)
    if not budget:
        return UserGauges(row["name"], limits_remaining=left)
    resets = budget.get("resets_at")
    reset_ts = (datetime.fromisoformat(resets.replace("Z", "+00:00")).timestamp()
                if resets else None)
    return UserGauges(row["name"], float(budget["usd"]), float(budget["remaining_usd"]),
                      reset_ts, left)


def _changed_keys(old: Config, new: Config) -> set[tuple[str, str]]:
    """(provider, key label) of keys whose secret a swap changed or removed."""
    after = {(p.name, k.label): k.secret for p in new.providers.values() for k in p.keys}
    return {(p.name, k.label) for p in old.providers.values() for k in p.keys
            if after.get((p.name, k.label)) != k.secret}
