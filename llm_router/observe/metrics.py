"""Every Prometheus metric, defined once (README, "Observability"), on a registry passed in.

Label children are cached per label tuple, so the hot path does one dict lookup per
metric instead of prometheus-client's locked ``labels()`` resolution. The selection
counters (``key_tokens``) and key health (``key_state``), and the budgets and limits
left per user, are read at scrape time by collectors, costing the request path nothing.
Labels never carry a secret: keys appear as their label (name or sha256 prefix). User
names (from the config) do appear as labels: ``/metrics`` can be closed (docs/observability.md).

Under ``serve --workers N`` (docs/scaling.md) every worker's ``/metrics`` is the whole
fleet's: the supervisor gives the workers one ``PROMETHEUS_MULTIPROC_DIR``, so
prometheus-client keeps each worker's values in memory-mapped files there, and a scrape,
whichever worker it reaches, adds up every worker's files (:attr:`Metrics.exposition`).
Counters and histograms are summed over every worker that ever ran, a restarted one
included, so they never go backwards. Gauges are combined per :data:`GAUGE_MODES`. The
collectors read at scrape time (key_tokens, key_state, budgets, limits left) come from
the worker that answers: with the shared Redis state those are the fleet's figures,
except key_state's circuit part, which each worker keeps. ``process_*`` and
``python_gc_*`` describe one process and are left out in that mode.
"""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import isfinite, nan
from typing import Any, Final, Literal

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .. import __version__
from .labels import LabelNames

__all__ = ["GAUGE_MODES", "LIMIT_NAMES", "MULTIPROC_DIR_ENV", "REJECTION_REASONS", "Answered",
           "Headroom", "Metrics", "Series", "Spend", "UserGauges", "multiprocess_dir",
           "status_class"]

_P: Final = "llm_router_"

# *_created series double the exposition for no use here (process start is known).
disable_created_metrics()  # type: ignore[no-untyped-call]

# LLM calls range from ~50 ms (cached embeddings) to minutes (long reasoning streams).
_DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
# The router's own cost is sub-millisecond when healthy.
_OVERHEAD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                            0.1, 0.5)
# Decoding speed: 1 ms per token (fast small models) to 0.5 s (overloaded or huge ones).
_TPOT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2,
                        0.5)
# Why the router refused a client (rejections_total{reason}); bounded by this list.
REJECTION_REASONS: Final = ("rpm", "tpm", "daily_requests", "max_concurrent", "budget", "quota",
                            "cooling_down", "model_not_allowed", "auth", "no_capable_member")
LIMIT_NAMES: Final = ("rpm", "tpm", "daily_requests")  # limit_remaining{limit}
_STATUS_CLASSES: Final = {c: f"{c}xx" for c in range(1, 6)}
# prometheus-client's switch for multiprocess mode, read when it is first imported.
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# How each gauge's per-worker values become one under --workers ("live": workers that are
# still running; the supervisor clears a dead worker's files).
_Mode = Literal["livesum", "livemostrecent", "livemax", "livemin"]
GAUGE_MODES: Final[dict[str, _Mode]] = {
    "inflight_requests": "livesum",  # the fleet's requests in flight
    "upstream_ratelimit_remaining": "livemostrecent",  # the last any worker saw
    "config_last_reload_timestamp_seconds": "livemax",
    # The oldest snapshot (each worker writes its own file): the one an alert should see.
    "snapshot_last_success_timestamp_seconds": "livemin",
    "state_backend_up": "livemin",  # 0 while any worker has lost Redis
    "build_info": "livemax",
    "cache_bytes": "livesum",  # each worker holds its own in-memory cache
    "webhook_queue_depth": "livesum",  # events every worker still has to deliver
}


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode when this process runs in it
    (a worker of ``serve --workers N``), else None."""
    if values.ValueClass is values.MutexValue:
        return None  # the variable was set after prometheus-client chose its value class
    return os.environ.get(MULTIPROC_DIR_ENV) or os.environ.get(MULTIPROC_DIR_ENV.lower())


def _mode(gauge: str) -> _Mode:
    return GAUGE_MODES[gauge]


def status_class(status: int) -> str:
    """``2xx`` | ``4xx`` | ``5xx`` (request_duration_seconds{status})."""
    return _STATUS_CLASSES.get(status // 100, "5xx")


@dataclass(frozen=True, slots=True)
class UserGauges:
    """One configured user's budget and limits left, as read at scrape time."""

    user: str
    budget_usd: float | None = None
    budget_remaining_usd: float | None = None
    budget_reset_timestamp: float | None = None  # None: a ``total`` budget never resets
    limits_remaining: tuple[tuple[str, float], ...] = ()  # (rpm | tpm | daily_requests, n)


class _StateCollector(Collector):
    """Reads selection counters and key health at scrape time."""

    def __init__(self, read: Callable[[], tuple[Iterable[tuple[tuple[str, str, str], int]],
                                                Iterable[tuple[tuple[str, str], str]]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        tokens, states = self._read()
        kt = GaugeMetricFamily(_P + "key_tokens",
                               "Tokens counted per provider key and model: the selection counters",
                               labels=["provider", "key", "model"])
        for (provider, key, model), n in tokens:
            kt.add_metric([provider, key, model], float(n))
        yield kt
        ks = GaugeMetricFamily(_P + "key_state",
                               "Provider key health: 1 for the state the key is in",
                               labels=["provider", "key", "state"])
        for (provider, key), state in states:
            ks.add_metric([provider, key, state], 1.0)
        yield ks


class _UserCollector(Collector):
    """Budgets and limits left per configured user, computed when Prometheus scrapes."""

    def __init__(self, read: Callable[[], Iterable[UserGauges]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        budget = GaugeMetricFamily(_P + "budget_usd", "The user's budget for its period, USD",
                                   labels=["user"])
        remaining = GaugeMetricFamily(_P + "budget_remaining_usd",
                                      "Budget left in the current period, USD", labels=["user"])
        reset = GaugeMetricFamily(_P + "budget_reset_timestamp_seconds",
                                  "Unix time the user's budget period ends", labels=["user"])
        limits = GaugeMetricFamily(_P + "limit_remaining",
                                   "Requests or tokens the user may still send in the limit's "
                                   "window", labels=["user", "limit"])
        for g in self._read():
            if g.budget_usd is not None:
                budget.add_metric([g.user], g.budget_usd)
            if g.budget_remaining_usd is not None:
                remaining.add_metric([g.user], g.budget_remaining_usd)
            if g.budget_reset_timestamp is not None:
                reset.add_metric([g.user], g.budget_reset_timestamp)
            for name, value in g.limits_remaining:
                limits.add_metric([g.user, name], value)
        yield from (budget, remaining, reset, limits)


class _WorkerFiles(MultiProcessCollector):
    """prometheus-client's merge of every worker's metric files, minus files a worker has
    created but not yet sized.

    A worker creates a ``*.db`` file empty and then grows it; a scrape that reads it in
    between fails to unpack its header (``struct.error``), and the whole ``/metrics``
    answer would be a 500. Such a file holds no sample yet, so leaving it out loses
    nothing.
    """

    def collect(self) -> Any:
        files = []
        for name in glob.glob(os.path.join(self._path, "*.db")):
            with contextlib.suppress(OSError):  # a dead worker's file, just removed
                if os.path.getsize(name) >= _HEADER_BYTES:
                    files.append(name)
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


# A metric file's header: the 4-byte count of bytes used, padded to 8.
_HEADER_BYTES: Final = 8


# The per-request series (requests, durations, overhead, tokens, cost, rate-limit headroom)
# are written only by the request path, on the event loop's thread. Their in-process
# values (prometheus-client's MutexValue) are updated there without taking the value's
# lock: one writer cannot race itself, and a scrape reads each float whole (a float
# attribute is read atomically), so what it sees is exactly a value the counter held.


class Metrics:
    """The router's metrics on one registry (a fresh one per app, so tests stay isolated)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(_P + "requests_total", "Requests answered",
                                ["route", "group", "provider", "model", "status", "user"],
                                registry=r)
        self.duration = Histogram(_P + "request_duration_seconds",
                                  "Time from request to the end of the response; status is "
                                  "the class (2xx, 4xx, 5xx)",
                                  ["route", "group", "provider", "model", "status"],
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.rejections = Counter(_P + "rejections_total",
                                  "Requests the router refused itself, by reason",
                                  ["route", "group", "user", "reason"], registry=r)
        self.tpot = Histogram(_P + "time_per_output_token_seconds",
                              "Streams: time between output tokens after the first",
                              ["group", "provider", "model"], buckets=_TPOT_BUCKETS, registry=r)
        self.ttft = Histogram(_P + "time_to_first_token_seconds",
                              "Time from request to the first streamed token",
                              ["group", "provider", "model"], buckets=_TTFT_BUCKETS, registry=r)
        # kind = prompt | completion | cached (the part of prompt read from the upstream's
        # prompt cache, also counted in prompt)
        self.tokens = Counter(_P + "tokens_total", "Tokens used, as reported by the upstream",
                              ["provider", "model", "key", "user", "kind"], registry=r)
        self.cost = Counter(_P + "cost_usd_total", "Cost in USD by the pricing table",
                            ["user", "provider", "model"], registry=r)
        self.upstream_errors = Counter(_P + "upstream_errors_total",
                                       "Failed upstream attempts by reason",
                                       ["provider", "key", "reason"], registry=r)
        self.usage_rejected = Counter(_P + "upstream_usage_rejected_total",
                                      "Upstream answers whose token counts were out of range "
                                      "(counted at the router's estimate instead)",
                                      ["provider"], registry=r)
        self.overhead = Histogram(_P + "overhead_seconds",
                                  "Time spent in the router itself, upstream time excluded",
                                  ["route"], buckets=_OVERHEAD_BUCKETS, registry=r)
        self.ratelimit_remaining = Gauge(_P + "upstream_ratelimit_remaining",
                                         "Upstream x-ratelimit-remaining-* as last seen",
                                         ["provider", "key", "kind"], registry=r,
                                         multiprocess_mode=_mode("upstream_ratelimit_remaining"))
        self.fallbacks = Counter(_P + "fallbacks_total",
                                 "Requests that needed more than one attempt", ["group"],
                                 registry=r)
        self.affinity = Counter(_P + "affinity_total",
                                "Group requests by prompt-cache affinity result: hit (sent "
                                "to its pinned key), new, moved, off", ["group", "result"],
                                registry=r)
        self.alias_requests = Counter(_P + "alias_requests_total",
                                      "Requests whose model name an alias mapped, by the "
                                      "alias pattern (from the config) and its target",
                                      ["alias", "target"], registry=r)
        self.cache_requests = Counter(_P + "cache_requests_total",
                                      "Requests to groups with the response cache on, by "
                                      "result: hit, miss (looked up, not found), skip (not "
                                      "looked up)", ["group", "result"], registry=r)
        self.cache_savings = Counter(_P + "cache_savings_usd_total",
                                     "USD the cache's hits would have cost if served "
                                     "upstream, by the pricing table", ["group"], registry=r)
        self.cache_bytes = Gauge(_P + "cache_bytes",
                                 "Bytes of answers in this process's response cache (0 when "
                                 "they live in Redis)", registry=r,
                                 multiprocess_mode=_mode("cache_bytes"))
        self.inflight = Gauge(_P + "inflight_requests", "Requests being served now", registry=r,
                              multiprocess_mode=_mode("inflight_requests"))
        self.config_reloads = Counter(_P + "config_reloads_total", "Config reloads by result",
                                      ["result"], registry=r)
        self.config_last_reload = Gauge(_P + "config_last_reload_timestamp_seconds",
                                        "Unix time of the last successful config load",
                                        registry=r,
                                        multiprocess_mode=_mode(
                                            "config_last_reload_timestamp_seconds"))
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.snapshot_last_success = Gauge(
            _P + "snapshot_last_success_timestamp_seconds",
            "Unix time the usage snapshot was last written (0: never, or no snapshot_path)",
            registry=r, multiprocess_mode=_mode("snapshot_last_success_timestamp_seconds"))
        self.snapshot_errors = Counter(_P + "snapshot_errors_total",
                                       "Failed writes of the usage snapshot or its journal",
                                       registry=r)
        self.build_info = Gauge(_P + "build_info", "Always 1: the running version",
                                ["version", "python"], registry=r,
                                multiprocess_mode=_mode("build_info"))
        self.build_info.labels(__version__, platform.python_version()).set(1)
        # The standard process_* and python_* series, on this registry too.
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(standard)
        # What GET /metrics serves: this registry, or under --workers every worker's files.
        self.multiprocess_dir = multiprocess_dir()
        self.exposition = r
        if self.multiprocess_dir is not None:
            self.exposition = CollectorRegistry()
            _WorkerFiles(self.exposition,  # type: ignore[no-untyped-call]
                         path=self.multiprocess_dir)
            self.exposition.register(PLATFORM_COLLECTOR)  # python_info: the same in each
        self.state_backend_up = Gauge(_P + "state_backend_up",
                                      "1 while the shared state backend (Redis) answers, 0 "
                                      "while limits fall back to this replica alone; always 1 "
                                      "for the in-process store", registry=r,
                                      multiprocess_mode=_mode("state_backend_up"))
        # Webhooks (docs/webhooks.md): each attempt counts once; each event ends in one of
        # delivered, rejected (a 4xx), expired (attempts or age used up), dropped (queue full).
        self.webhook_deliveries = Counter(_P + "webhook_deliveries_total",
                                          "Webhook delivery attempts and outcomes: delivered, "
                                          "retry, rejected, expired, dropped",
                                          ["webhook", "event", "result"], registry=r)
        self.webhook_queue = Gauge(_P + "webhook_queue_depth",
                                   "Webhook events waiting for delivery", ["webhook"],
                                   registry=r, multiprocess_mode=_mode("webhook_queue_depth"))
        # Per metric object, its series by label values.
        self._children: dict[Any, dict[tuple[str, ...], Series]] = {}
        # answered(): per finished request's values, as long as the label names are those
        # of one config (a reload brings new ones).
        self._answered: dict[tuple[str, str, str, str, int, str], Answered] = {}
        self._answered_names: LabelNames | None = None
        # spend(): per (provider, model, key, user) as answered, for the same config.
        self._spend: dict[tuple[str, str, str, str], Spend] = {}
        self._spend_names: LabelNames | None = None
        self._headroom: dict[tuple[str, str], Headroom] = {}  # headroom(): per key

    def watch_state(self, read: Callable[[], tuple[Iterable[tuple[tuple[str, str, str], int]],
                                                   Iterable[tuple[tuple[str, str], str]]]]
                    ) -> None:
        """Expose selection counters and key health, read by ``read`` at scrape time."""
        self._register(_StateCollector(read))

    def watch_users(self, read: Callable[[], Iterable[UserGauges]]) -> None:
        """Expose budgets and limits left per user, read by ``read`` at scrape time."""
        self._register(_UserCollector(read))

    def _register(self, collector: Collector) -> None:
        self.registry.register(collector)
        if self.exposition is not self.registry:
            self.exposition.register(collector)

    def child(self, metric: Any, *labels: str) -> Series:
        """The series ``metric.labels(*labels)``, cached, as a :class:`Series`."""
        children = self._children.get(metric)
        if children is None:
            children = self._children[metric] = {}
        c = children.get(labels)
        if c is None:
            c = children[labels] = Series.of(metric.labels(*labels))
        return c

    def answered(self, names: LabelNames, route: str, group: str, provider: str, model: str,
                 status: int, user: str) -> Answered:
        """The series a finished request updates (``requests_total``,
        ``request_duration_seconds``, ``overhead_seconds``), from its values as recorded:
        one dict lookup per request. Kept only for values that are their own labels
        (names the config knows), so the cache stays as bounded as the series."""
        key = (route, group, provider, model, status, user)
        if self._answered_names is names:
            found = self._answered.get(key)
            if found is not None:
                return found
        else:
            self._answered.clear()  # another config: names may now be labelled otherwise
            self._answered_names = names
        g, m = names.group(group), names.model(provider, model)
        found = Answered(self.child(self.requests, route, g, provider, m, str(status), user),
                         self.child(self.duration, route, g, provider, m, status_class(status)),
                         self, route)
        if g == group and m == model:
            self._answered[key] = found
        return found

    def finished(self, names: LabelNames, route: str, group: str, provider: str, model: str,
                 status: int, user: str, elapsed: float, overhead: float | None) -> None:
        """Count one finished request in its :meth:`answered` series: counted, its
        duration observed, and the router's own time (``overhead``, below 0 read as 0)
        when it reached an upstream (None: it did not). One call per request: the
        in-process values are updated here, without their lock (see above the class)."""
        found = self._answered.get((route, group, provider, model, status, user)) \
            if self._answered_names is names else None
        if found is None:
            found = self.answered(names, route, group, provider, model, status, user)
        if not found.in_memory:
            found.count(elapsed, overhead)
            return
        found.requests._value._value += 1.0
        d = found.duration
        d._sum._value += elapsed
        d._buckets[bisect_left(d._bounds, elapsed)]._value += 1.0
        if overhead is not None:
            if overhead < 0.0:
                overhead = 0.0
            o = found._overhead
            if o is None:
                o = found.overhead
            o._sum._value += overhead
            o._buckets[bisect_left(o._bounds, overhead)]._value += 1.0

    def spent(self, names: LabelNames, provider: str, model: str, key: str, user: str,
              prompt: int, completion: int, cached: int, cost: float) -> None:
        """Count one answer's usage in its :meth:`spend` series: its tokens by kind
        (those above 0) and its cost. One call per answer: the in-process values are
        updated here, without their lock (see above the class)."""
        found = self._spend.get((provider, model, key, user)) \
            if self._spend_names is names else None
        if found is None:
            found = self.spend(names, provider, model, key, user)
        found.count(prompt, completion, cached, cost)

    def spend(self, names: LabelNames, provider: str, model: str, key: str, user: str) -> Spend:
        """The series one answer's usage adds to (``tokens_total`` by kind,
        ``cost_usd_total``) for the model as the answer names it: one dict lookup per
        answer. Kept, like :meth:`answered`'s, only for a model the config names."""
        found = self._spend.get((provider, model, key, user))
        if found is not None and self._spend_names is names:
            return found
        if self._spend_names is not names:
            self._spend.clear()  # another config: names may now be labelled otherwise
            self._spend_names = names
        label = names.model(provider, model)
        found = Spend(self, provider, label, key, user)
        if label == model:
            self._spend[(provider, model, key, user)] = found
        return found

    def ratelimits(self, provider: str, key: str, requests: str | None,
                   tokens: str | None) -> None:
        """Set one provider key's ``upstream_ratelimit_remaining{kind}`` from an answer's
        ``x-ratelimit-remaining-*`` header values (None: the answer had none; a value
        that is not a finite number is ignored: ``-inf``, ``1e999`` and ``nan`` parse as
        floats, and the gauge showed -Inf). Its series are kept per key (provider names
        and key labels come from the config: as bounded as the series), each made when
        its header is first seen."""
        found = self._headroom.get((provider, key))
        if found is None:
            found = self._headroom[(provider, key)] = Headroom(self, provider, key)
        if requests is not None:
            try:
                value = float(requests)
            except ValueError:
                value = nan
            if isfinite(value):
                s = found.kinds.get("requests") or found.make("requests")
                if type(s) is _InMemory:  # _InMemory.set, inline and without the lock
                    s._value._value = value
                else:
                    s.set(value)
        if tokens is not None:
            try:
                value = float(tokens)
            except ValueError:
                return
            if not isfinite(value):
                return
            s = found.kinds.get("tokens") or found.make("tokens")
            if type(s) is _InMemory:
                s._value._value = value
            else:
                s.set(value)


class Spend:
    """The series of one (provider, model label, key, user) that an answer's usage adds
    to (:meth:`Metrics.spend`). A ``tokens_total`` series is made on its first count
    above 0, as before: a kind never counted has no series."""

    __slots__ = ("_cached", "_completion", "_labels", "_metrics", "_prompt", "cost",
                 "in_memory")

    def __init__(self, metrics: Metrics, provider: str, model: str, key: str,
                 user: str) -> None:
        self._metrics = metrics
        self._labels = (provider, model, key, user)
        self._prompt: Series | None = None
        self._completion: Series | None = None
        self._cached: Series | None = None
        self.cost = metrics.child(metrics.cost, user, provider, model)
        # In-process floats (every series of a process is, or none): Metrics.spent
        # updates them itself.
        self.in_memory = type(self.cost) is _InMemory

    def count(self, prompt: int, completion: int, cached: int, cost: float) -> None:
        """One answer's tokens by kind (those above 0) and its cost. In-process values
        are updated here without their lock (see above :class:`Metrics`); others go
        through their own methods."""
        if not self.in_memory:
            self.add(prompt, completion, cached, cost)
            return
        if prompt > 0:
            (self._prompt or self._make("prompt"))._value._value += prompt
        if completion > 0:
            (self._completion or self._make("completion"))._value._value += completion
        if cached > 0:
            (self._cached or self._make("cached"))._value._value += cached
        self.cost._value._value += cost

    def add(self, prompt: int, completion: int, cached: int, cost: float) -> None:
        """:meth:`count` on these series, through their own methods."""
        if prompt > 0:
            (self._prompt or self._make("prompt")).inc(prompt)
        if completion > 0:
            (self._completion or self._make("completion")).inc(completion)
        if cached > 0:
            (self._cached or self._make("cached")).inc(cached)
        self.cost.inc(cost)

    def _make(self, kind: str) -> Series:
        m = self._metrics
        series = m.child(m.tokens, *self._labels, kind)
        setattr(self, f"_{kind}", series)
        return series


class Headroom:
    """The ``upstream_ratelimit_remaining`` series of one provider key, by kind
    (:meth:`Metrics.ratelimits`)."""

    __slots__ = ("_key", "_metrics", "_provider", "kinds")

    def __init__(self, metrics: Metrics, provider: str, key: str) -> None:
        self._metrics = metrics
        self._provider = provider
        self._key = key
        self.kinds: dict[str, Series] = {}

    def make(self, kind: str) -> Series:
        m = self._metrics
        s = self.kinds[kind] = m.child(m.ratelimit_remaining, self._provider, self._key, kind)
        return s


class Answered:
    """The series of one kind of finished request (:meth:`Metrics.answered`).
    ``overhead`` is made on first use: a route whose requests never reach an upstream
    has no ``overhead_seconds`` series, as before."""

    __slots__ = ("_metrics", "_overhead", "_route", "duration", "in_memory", "requests")

    def __init__(self, requests: Series, duration: Series, metrics: Metrics,
                 route: str) -> None:
        self.requests = requests
        self.duration = duration
        self._metrics = metrics
        self._route = route
        self._overhead: Series | None = None
        # In-process floats (every series of a process is, or none): Metrics.finished
        # updates them itself.
        self.in_memory = type(requests) is _InMemory and type(duration) is _InMemory

    @property
    def overhead(self) -> Series:
        if self._overhead is None:
            self._overhead = self._metrics.child(self._metrics.overhead, self._route)
        return self._overhead

    def count(self, elapsed: float, overhead: float | None) -> None:
        """:meth:`Metrics.finished` on these series, through their own methods."""
        self.requests.inc()
        self.duration.observe(elapsed)
        if overhead is not None:
            self.overhead.observe(overhead if overhead > 0.0 else 0.0)


class Series:
    """One labelled series, updated straight on prometheus-client's value objects.

    ``Counter.inc``, ``Gauge.set`` and ``Histogram.observe`` each check, per call, that
    the metric is a labelled child and that a counter's amount is not negative, and a
    histogram walks its buckets one by one: three or four Python calls per update, and a
    chat request makes about ten updates (bench/profiles-issue27.md). The values are the
    same objects prometheus-client exposes (in memory, or its memory-mapped files under
    ``--workers N``), so what a scrape reads is unchanged. The router never passes a
    negative amount to a counter: its callers count tokens, requests and costs."""

    __slots__ = ("_bounds", "_buckets", "_most_recent", "_sum", "_value")

    def __init__(self, child: Any) -> None:
        self._value: Any = getattr(child, "_value", None)  # Counter, Gauge
        # A gauge combined as livemostrecent under --workers: each value carries its time.
        self._most_recent = bool(getattr(child, "_is_most_recent", False))
        self._sum: Any = getattr(child, "_sum", None)  # Histogram
        self._bounds: tuple[float, ...] = tuple(getattr(child, "_upper_bounds", ()))
        self._buckets: tuple[Any, ...] = tuple(getattr(child, "_buckets", ()))

    @staticmethod
    def of(child: Any) -> Series:
        """The series of a prometheus-client child: :class:`_InMemory` when its values
        are in-process floats (one process), else this class."""
        value = getattr(child, "_value", None)
        if value is None:
            value = getattr(child, "_sum", None)
        return _InMemory(child) if type(value) is values.MutexValue else Series(child)

    def inc(self, amount: float = 1.0) -> None:
        self._value.inc(amount)

    def set(self, value: float) -> None:
        if self._most_recent:
            self._value.set(float(value), timestamp=time.time())
        else:
            self._value.set(float(value))

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        # The first bucket whose upper bound is >= amount (the last bound is +Inf).
        self._buckets[bisect_left(self._bounds, amount)].inc(1.0)


class _InMemory(Series):
    """A series whose values are prometheus-client's in-process ``MutexValue``: their
    ``inc`` and ``set`` done here, under the same lock on the same float, one Python call
    fewer per update. (A ``livemostrecent`` gauge's time only matters in files.)"""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        value = self._value
        with value._lock:
            value._value += amount

    def set(self, value: float) -> None:
        target = self._value
        with target._lock:
            target._value = float(value)

    def observe(self, amount: float) -> None:
        total = self._sum
        with total._lock:
            total._value += amount
        bucket = self._buckets[bisect_left(self._bounds, amount)]
        with bucket._lock:
            bucket._value += 1.0
