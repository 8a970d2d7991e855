"""Passive key health: cooldowns after 429s, a circuit breaker over recent failures.

State is keyed by (provider name, key label), outside the config, so it survives a
reload. Only upstream faults count — connect errors, timeouts, 5xx, 429 — never a
client's bad request. A key the upstream rejects with 401/403 is marked bad until the
config changes (its secret was probably rotated).

States of one key::

    closed ──(failure share ≥ rate over window)──► open ──(open_s)──► half-open
      ▲                                                                 │ one probe
      └──────────────── probe succeeds (window cleared) ◄───────────────┘
                        probe fails → open again

A probe that ends without a verdict (the client went away, a 4xx) is released so the
next request probes instead. A 429 (or a 503 with ``Retry-After``) additionally puts the
key in *cooldown* until the upstream's ``Retry-After``, or an escalating default (base,
tripled each time, capped; reset by a success). Either way the cooldown is capped at
``circuit.cooldown_max_s``: one answer cannot take a key out for longer. A reload that
changes a key's secret or removes it forgets its state (:meth:`KeyHealth.forget`).
docs/resilience.md is the operator's view.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Final

from ..config import CircuitSettings

__all__ = ["HealthListener", "KeyHealth", "KeyState", "parse_retry_after"]

# Told (change, provider, key label, upstream status) of each transition that matters to
# operators: "circuit_open" (closed -> open), "circuit_closed" (a probe succeeded),
# "key_bad" (a 401/403 marked it). Called on the loop thread; must not block.
HealthListener = Callable[[str, str, str, int], None]

log = logging.getLogger("llm_router.health")

_CLOSED: Final = "closed"
_OPEN: Final = "open"
_HALF_OPEN: Final = "half_open"
_DEFAULT_SETTINGS: Final = CircuitSettings()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (delta seconds or HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None  # "inf", "nan"
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@dataclass(slots=True)
class KeyState:
    circuit: str = _CLOSED
    opened_until: float = 0.0  # monotonic; while open
    cooldown_until: float = 0.0  # monotonic; after a 429
    cooldown_streak: int = 0  # escalates the default cooldown
    probing: bool = False  # half-open: one probe in flight
    bad_generation: int | None = None  # 401/403: bad while this config generation lasts
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, ok)

    def label(self, now: float, generation: int) -> str:
        """What ops see: ok | cooldown | open | half_open | bad."""
        if self.bad_generation == generation:
            return "bad"
        if self.circuit == _OPEN and now < self.opened_until:
            return "open"
        if self.circuit != _CLOSED:
            return "half_open"
        if now < self.cooldown_until:
            return "cooldown"
        return "ok"


class KeyHealth:
    """Per-key cooldown and circuit state, read by candidate selection."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        # Monotonic seconds; the tests pass a clock they move, rather than sleeping.
        self.clock = clock
        self._keys: dict[tuple[str, str], KeyState] = {}
        # (provider, key label) of the keys that have a state, read-only: a key not in it
        # never failed, so record_success has nothing to do for it (the answer path tests
        # this before calling).
        self.tracked: Mapping[tuple[str, str], KeyState] = self._keys
        self.generation = 0  # bumped on every config swap: clears 'bad' marks
        self.listener: HealthListener | None = None  # webhooks; None costs one test

    def state(self, provider: str, key: str) -> KeyState:
        st = self._keys.get((provider, key))
        if st is None:
            st = self._keys[(provider, key)] = KeyState()
        return st

    def snapshot(self) -> dict[tuple[str, str], str]:
        now = self.clock()
        return {k: st.label(now, self.generation) for k, st in self._keys.items()}

    def cooldowns(self) -> dict[tuple[str, str], float]:
        """(provider, key) -> monotonic end of its cooldown, for keys that have one."""
        return {k: st.cooldown_until for k, st in self._keys.items() if st.cooldown_until}

    def extend_cooldown(self, provider: str, key: str, until: float) -> None:
        """Cool the key until ``until`` (monotonic) unless it already cools longer: another
        replica saw it rate limited (shared state)."""
        st = self.state(provider, key)
        st.cooldown_until = max(st.cooldown_until, until)

    def available_at(self, provider: str, key: str, now: float) -> float:
        """0.0 when the key may take a request now, else the monotonic time it recovers.

        ``inf`` for a key marked bad: only a config change brings it back.
        """
        st = self._keys.get((provider, key))
        if st is None:
            return 0.0
        if st.bad_generation == self.generation:
            return float("inf")
        until = st.cooldown_until if now < st.cooldown_until else 0.0
        if st.circuit == _OPEN:
            if now < st.opened_until:
                until = max(until, st.opened_until)
            else:
                st.circuit = _HALF_OPEN
                st.probing = False
        if st.circuit == _HALF_OPEN and st.probing:
            # One probe at a time; others wait for its verdict.
            until = max(until, now + 1.0)
        return until

    def label(self, provider: str, key: str) -> str:
        """The key's state as ops see it (metrics, access log): ok | cooldown | open |
        half_open | bad."""
        st = self._keys.get((provider, key))
        return "ok" if st is None else st.label(self.clock(), self.generation)

    def begin(self, provider: str, key: str) -> bool:
        """An attempt is about to use this key; True if it is the half-open probe.

        The probe must end in :meth:`record_success`, :meth:`record_failure` or
        :meth:`release`, else the key would wait for a verdict forever.
        """
        st = self._keys.get((provider, key))
        if st is not None and st.circuit == _HALF_OPEN and not st.probing:
            st.probing = True
            return True
        return False

    def release(self, provider: str, key: str) -> None:
        """A probe ended without a verdict (client error, client gone): let another probe."""
        st = self._keys.get((provider, key))
        if st is not None and st.circuit == _HALF_OPEN:
            st.probing = False

    def record_success(self, provider: str, key: str,
                       settings: CircuitSettings | None = None) -> None:
        """The key served a request: a half-open circuit closes with its window cleared."""
        st = self._keys.get((provider, key))
        if st is None:
            return  # never failed: nothing to track
        now = self.clock()
        st.cooldown_streak = 0
        if st.circuit != _CLOSED:
            st.circuit = _CLOSED
            st.probing = False
            st.outcomes.clear()
            log.info("circuit closed for %s key %s", provider, key)
            if self.listener is not None:
                self.listener("circuit_closed", provider, key, 0)
            return
        st.outcomes.append((now, True))
        self._trim(st, now, settings)

    def record_failure(self, provider: str, key: str, settings: CircuitSettings, *,
                       retry_after: float | None = None, rate_limited: bool = False) -> None:
        """Count an upstream fault; a 429 also starts a cooldown."""
        now = self.clock()
        st = self.state(provider, key)
        if rate_limited or retry_after is not None:
            if retry_after is None:
                retry_after = settings.cooldown_base_s * (3 ** st.cooldown_streak)
                st.cooldown_streak += 1
            st.cooldown_until = max(st.cooldown_until,
                                    now + min(retry_after, settings.cooldown_max_s))
        if st.circuit == _HALF_OPEN:
            st.circuit = _OPEN
            st.probing = False
            st.opened_until = now + settings.open_s
            log.warning("probe failed; circuit re-opened for %s key %s", provider, key)
            return
        if st.circuit == _OPEN:
            return  # an attempt from before it opened: already judged
        st.outcomes.append((now, False))
        self._trim(st, now, settings)
        failures = sum(1 for _, ok in st.outcomes if not ok)
        if (len(st.outcomes) >= settings.min_requests
                and failures / len(st.outcomes) >= settings.failure_rate):
            st.circuit = _OPEN
            st.opened_until = now + settings.open_s
            st.outcomes.clear()
            log.warning("circuit opened for %s key %s: %d of the last attempts failed",
                        provider, key, failures)
            if self.listener is not None:
                self.listener("circuit_open", provider, key, 0)

    def forget(self, provider: str, key: str) -> bool:
        """Drop everything known about a key (its secret changed or it was removed):
        cooldown, circuit and 'bad' mark. True if there was anything to drop."""
        return self._keys.pop((provider, key), None) is not None

    def mark_bad(self, provider: str, key: str, status: int) -> None:
        st = self.state(provider, key)
        if st.bad_generation != self.generation:
            st.bad_generation = self.generation
            log.error("upstream rejected key '%s' of provider '%s' with %d: marked bad, not "
                      "used until a reload (state 'bad' in llm_router_key_state)", key,
                      provider, status)
            if self.listener is not None:
                self.listener("key_bad", provider, key, status)

    def _trim(self, st: KeyState, now: float, settings: CircuitSettings | None) -> None:
        if settings is None:
            settings = _DEFAULT_SETTINGS
        window, window_s = settings.window, settings.window_s
        while st.outcomes and (len(st.outcomes) > window or st.outcomes[0][0] < now - window_s):
            st.outcomes.popleft()
