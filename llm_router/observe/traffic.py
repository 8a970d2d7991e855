"""Recent traffic in memory, for the status page: the router's last minute, each key's last
five minutes.

Prometheus keeps the long history; this answers "what is happening right now" without
one. Recording is on the request path, so it is O(1) per request and allocates nothing
in the steady state: each ring is a fixed number of time slots indexed by
``int(now // width) % slots``; a slot whose stamp is stale is zeroed when it is reused.
Reading (a status request) sums the slots still inside the window.

What the figures mean, and how far they can be off (README, ``GET /admin/status``):

* Router: requests, errors (status >= 400) and latency over the 60 *complete* seconds
  before the read, so a figure never includes a partial second. Latency is the time to
  the end of the response, streams included, kept as a histogram with buckets 20 %
  apart; a percentile is reported as its bucket's geometric midpoint, within 10 % of
  the true value (and exact in rank).
* Provider keys: attempts and failed attempts in ten 30-second slots, the current one
  included, so "the last five minutes" spans between 4.5 and 5 minutes.

Only API routes (``/v1/...``) are recorded: the status page's own polling is not traffic.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = ["Finished", "KeyActivity", "RouterActivity", "Traffic", "merge_activity"]

_SECOND_SLOTS: Final = 61  # the 60 complete seconds shown, plus the one being filled
_WINDOW_S: Final = 60
_KEY_SLOTS: Final = 10
_KEY_SLOT_S: Final = 30.0
# Latency histogram: bucket 0 holds everything up to _LAT_MIN, bucket b >= 1 holds
# (_LAT_MIN x G^(b-1), _LAT_MIN x G^b]; the last one is open-ended (about 11 min and up).
_LAT_MIN: Final = 1e-4  # 0.1 ms
_LAT_GROWTH: Final = 1.2
_LAT_BUCKETS: Final = 90
# Upper bounds of buckets 0 .. N-2: a bisect in C beats a log per request.
_LAT_BOUNDS: Final = tuple(_LAT_MIN * _LAT_GROWTH ** i for i in range(_LAT_BUCKETS - 1))

Clock = Callable[[], float]


class Finished(Protocol):
    """What a finished request tells the ring (``proxy.Exchange`` has these)."""

    route: str
    status: int
    attempts: int
    provider: str
    key: str
    failures: list[str]  # "provider/key:reason" per failed attempt


def _bucket_midpoint(b: int) -> float:
    """The geometric middle of bucket ``b``, in seconds."""
    if b == 0:
        return _LAT_MIN
    return float(_LAT_MIN * _LAT_GROWTH ** (b - 0.5))


@dataclass(frozen=True, slots=True)
class RouterActivity:
    """The router's last minute, as read."""

    window_s: int  # seconds covered: 60, or less while the process is younger
    requests: int
    errors: int
    p50_s: float | None
    p95_s: float | None
    per_second: tuple[tuple[int, int], ...]  # (requests, errors), oldest first, 60 entries

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.window_s if self.window_s else 0.0


@dataclass(frozen=True, slots=True)
class KeyActivity:
    """One provider key's last five minutes, as read."""

    attempts: int
    failures: int
    last_failure: str | None  # reason of the most recent failed attempt, e.g. status_429
    last_failure_at: float | None  # Unix time


class _Second:
    """One second of the router's ring."""

    __slots__ = ("errors", "latency", "requests", "stamp")

    def __init__(self) -> None:
        self.stamp = -1
        self.requests = 0
        self.errors = 0
        self.latency: dict[int, int] = {}  # histogram bucket -> requests


class _KeyRing:
    __slots__ = ("attempts", "failures", "last_failure", "last_failure_at", "stamp")

    def __init__(self) -> None:
        self.stamp = [-1] * _KEY_SLOTS
        self.attempts = [0] * _KEY_SLOTS
        self.failures = [0] * _KEY_SLOTS
        self.last_failure: str | None = None
        self.last_failure_at: float | None = None

    def add(self, slot: int, failed: bool) -> None:
        i = slot % _KEY_SLOTS
        if self.stamp[i] != slot:
            self.stamp[i], self.attempts[i], self.failures[i] = slot, 0, 0
        self.attempts[i] += 1
        if failed:
            self.failures[i] += 1


class Traffic:
    """The rings; one per process, on the event loop thread (plain lists suffice).

    ``clock`` places requests in slots, ``wall`` stamps the last failure; both Unix
    seconds, so the processes of a fleet agree on which second is which (a clock step
    moves a request by a slot at most). Tests may replace both.
    """

    __slots__ = ("_clock", "_keys", "_seconds", "_started", "_wall")

    def __init__(self, clock: Clock = time.time, wall: Clock = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._started = clock()
        self._seconds = [_Second() for _ in range(_SECOND_SLOTS)]
        self._keys: dict[tuple[str, str], _KeyRing] = {}

    # -- the request path
    def record(self, ex: Finished, seconds: float) -> None:
        """Count one finished request: O(1), plus one step per failed attempt."""
        if not ex.route.startswith("/v1/"):
            return
        now = self._clock()
        sec = int(now)
        second = self._seconds[sec % _SECOND_SLOTS]
        if second.stamp != sec:
            second.stamp, second.requests, second.errors = sec, 0, 0
            second.latency.clear()
        second.requests += 1
        if ex.status >= 400:
            second.errors += 1
        hist = second.latency
        b = bisect_left(_LAT_BOUNDS, seconds)  # the bucket whose (lower, upper] holds it
        hist[b] = hist.get(b, 0) + 1
        if not ex.attempts:
            return
        slot = int(now // _KEY_SLOT_S)
        for failure in ex.failures:
            head, _, reason = failure.rpartition(":")  # reasons never contain ':'
            provider, _, key = head.partition("/")  # provider names never contain '/'
            ring = self._ring(provider, key)
            ring.add(slot, True)
            ring.last_failure, ring.last_failure_at = reason, self._wall()
        if ex.attempts > len(ex.failures):  # the last attempt answered
            last = self._keys.get((ex.provider, ex.key)) or self._ring(ex.provider, ex.key)
            i = slot % _KEY_SLOTS  # as _KeyRing.add(slot, False), inline: every request
            if last.stamp[i] != slot:
                last.stamp[i], last.attempts[i], last.failures[i] = slot, 0, 0
            last.attempts[i] += 1

    def _ring(self, provider: str, key: str) -> _KeyRing:
        ring = self._keys.get((provider, key))
        if ring is None:
            # Bounded: provider names and key labels come from the config, never a client.
            ring = self._keys[(provider, key)] = _KeyRing()
        return ring

    # -- reads
    def router(self) -> RouterActivity:
        """The 60 complete seconds before now (fewer while the process is younger)."""
        return merge_activity([self.export()], int(self._clock()))

    def export(self) -> dict[str, Any]:
        """The last minute, the current second included, as JSON-able data keyed by Unix
        second: what :func:`merge_activity` adds up, for this process or a fleet."""
        sec = int(self._clock())
        seconds = []
        for s in range(sec - _WINDOW_S, sec + 1):
            second = self._seconds[s % _SECOND_SLOTS]
            if second.stamp == s and second.requests:
                seconds.append([s, second.requests, second.errors,
                                sorted(second.latency.items())])
        return {"started": self._started, "seconds": seconds}

    def key(self, provider: str, key: str) -> KeyActivity:
        """Attempts and failures of one provider key over the last 4.5 to 5 minutes."""
        ring = self._keys.get((provider, key))
        if ring is None:
            return KeyActivity(0, 0, None, None)
        slot = int(self._clock() // _KEY_SLOT_S)
        live = [i for i in range(_KEY_SLOTS) if slot - _KEY_SLOTS < ring.stamp[i] <= slot]
        return KeyActivity(sum(ring.attempts[i] for i in live),
                           sum(ring.failures[i] for i in live), ring.last_failure,
                           ring.last_failure_at)


def merge_activity(exports: Iterable[dict[str, Any]], now: int) -> RouterActivity:
    """Add up :meth:`Traffic.export` documents (one per process) over the 60 complete
    seconds before ``now`` (a Unix second)."""
    requests = [0] * _WINDOW_S
    errors = [0] * _WINDOW_S
    hist: dict[int, int] = {}
    started = float(now)
    first = now - _WINDOW_S
    for doc in exports:
        started = min(started, float(doc["started"]))
        for s, n, e, latency in doc["seconds"]:
            if first <= s < now:
                requests[s - first] += n
                errors[s - first] += e
                for b, count in latency:
                    hist[b] = hist.get(b, 0) + count
    total = sum(requests)
    window = max(1, min(_WINDOW_S, now - int(started)))
    return RouterActivity(window, total, sum(errors), _percentile(hist, total, 0.50),
                          _percentile(hist, total, 0.95), tuple(zip(requests, errors,
                                                                    strict=True)))


def _percentile(hist: dict[int, int], total: int, q: float) -> float | None:
    """The bucket midpoint holding the ``q`` quantile (nearest rank) of ``hist``."""
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return _bucket_midpoint(b)
    return None  # unreachable while total matches hist
