"""Per-user and per-key limits, spend and budgets: the :class:`Ledger`.

Every authenticated caller is two *accounts*: its user and its client key (the key's
limits and budget narrow the user's). Around each model request the proxy calls

* :meth:`Ledger.admit` before forwarding, with the request's estimated tokens and cost:
  raises :class:`BudgetExhausted` (402) when a budget is spent *or reserved* by requests
  in flight, or :class:`RateLimited` (429, ``Retry-After``) when a limit would be passed;
  otherwise counts the request, reserves its estimates and returns an :class:`Admission`;
* :meth:`Ledger.record` once the upstream reported usage (streams and cut streams too):
  the reservation is replaced by the real tokens and cost;
* :meth:`Ledger.release` always, in a ``finally`` (it frees the ``max_concurrent`` slot
  and refunds the estimates of a request that never recorded usage).

Reservations are what keep a burst from outrunning a budget: a request is admitted while
``spent + reserved < budget``, so concurrent requests see each other's estimated cost and
the spend ends at most about one request's cost over the budget (exactly one when the
estimates hold; docs/teams.md). ``tpm`` works the same way with estimated tokens.

Windows (documented in docs/teams.md):

* ``rpm``/``tpm``: a two-bucket sliding window. Each account keeps the count of the
  current wall-clock minute and of the previous one; the level is
  ``previous x (share of the current minute still to run) + current``. O(1) time and
  memory per account, no burst of twice the limit at a minute boundary, and a
  ``Retry-After`` computed exactly from the two buckets. ``tpm`` counts the request's
  token estimate on admission and corrects it to the real usage on record.
* ``daily_requests``: requests admitted in the UTC calendar day (resets 00:00 UTC).
* ``max_concurrent``: requests admitted and not yet released.
* Spend, tokens and requests per model are kept per calendar period in UTC: ``daily``,
  ``weekly`` (ISO week, from Monday), ``monthly`` and ``total``; a budget reads the
  period it names. Each period keeps at most :data:`MAX_MODELS` models, the rest is
  summed under ``"other"``: memory stays bounded whatever the clients send.

An answer's usage is not added to the 2 accounts x 4 periods x (totals + its model) at
once: each account keeps the answers since its last read in a short list (at most
:data:`_FOLD_AT`, tagged with the day's period ids) and adds them when anything reads its
periods (reports, ``spent``, the snapshot), when the list is full, and when a day ends.
The result is exactly that of adding each answer as it came (integers, and each cost
added to each sum in order, one float addition at a time), and a budget check sums the
pending costs on the same way (``_Account.watched``).

Everything runs on the event loop thread, so plain attributes suffice. Spend and daily
counts are persisted through :meth:`dump`/:meth:`restore` (the ``ledger`` section of
the usage snapshot, checked by :meth:`Ledger.validate` before anything is restored) and,
in between, as journal events (``a`` on admission, ``r`` on record; :meth:`replay`).
Minute windows, reservations and in-flight counts start fresh after a restart.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import add, itemgetter
from typing import Any, Final

from ..config import Budget, Config, Limits
from ..errors import BudgetExhausted, RateLimited
from ..hub.usage import TOKEN_COUNT_LIMIT, bounded_count
from .accounting import Caller
from .journal import Event, Journal
from .shapes import ShapeError, count, mapping, money, rows, text

__all__ = [
    "MAX_MODELS",
    "PERIODS",
    "Admission",
    "Ledger",
    "budget_exhausted",
    "period_end",
    "period_id",
    "period_ids",
    "rate_limited",
    "seconds_to_day_end",
]

log = logging.getLogger("llm_router.limits")

Clock = Callable[[], float]
PERIODS: Final = ("daily", "weekly", "monthly", "total")
_PERIOD_INDEX: Final = {name: i for i, name in enumerate(PERIODS)}
MAX_MODELS: Final = 256  # per account and period; beyond it usage is summed as "other"
_OTHER: Final = "other"
# An account's usage waits in a list of this many answers at most before it is added to
# its four periods (_Account.fold): every read folds it first.
_FOLD_AT: Final = 32
_NAME: Final = itemgetter(0)  # of a pending answer (_Account.pend)
_PROMPT: Final = itemgetter(1)
_COMPLETION: Final = itemgetter(2)
_COST: Final = itemgetter(3)
_MAX_UNPRICED: Final = 1024  # models remembered as "already warned about"
_DUMP_VERSION: Final = 1
_LIMIT_NAMES: Final = {
    "rpm": "requests per minute (rpm)",
    "tpm": "tokens per minute (tpm)",
    "daily_requests": "requests per day (daily_requests)",
    "max_concurrent": "concurrent requests (max_concurrent)",
}


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


# period name -> (start, end, id) of the period last asked for. Every admitted request
# asks for each period's id several times; a datetime plus strftime each time was a
# measurable share of the request path (bench/README.md), and the answer only changes at
# a period boundary. A test clock that jumps around just misses the cache.
_PERIOD_CACHE: dict[str, tuple[float, float, str]] = {}


def period_id(period: str, now: float) -> str:
    """The UTC calendar period of ``now``: ``2024-05-01``, ``2024-W18``, ``2024-05``, ``total``."""
    hit = _PERIOD_CACHE.get(period)
    if hit is not None and hit[0] <= now < hit[1]:
        return hit[2]
    end = period_end(period, now)
    if end is None:  # "total": never ends, and its id never changes
        _PERIOD_CACHE[period] = (-math.inf, math.inf, "total")
        return "total"
    pid = _period_id(period, now)
    _PERIOD_CACHE[period] = (_period_start(period, now), end, pid)
    return pid


# (day start, day end, the ids of PERIODS) for the UTC day last asked for. Every period
# boundary is a UTC midnight, and Unix days are exactly 86,400 s, so the four ids hold
# for the whole day: the request path gets them with one comparison.
_IDS_CACHE: tuple[float, float, tuple[str, ...]] = (math.inf, -math.inf, ())


def period_ids(now: float) -> tuple[str, ...]:
    """The id of each of :data:`PERIODS` (in that order) at ``now``. The same tuple object
    for the whole UTC day, so that an account can tell its periods are current by
    identity."""
    global _IDS_CACHE
    start, end, ids = _IDS_CACHE
    if start <= now < end:
        return ids
    start = now // 86400 * 86400
    ids = tuple(period_id(p, now) for p in PERIODS)
    _IDS_CACHE = (start, start + 86400, ids)
    return ids


def _period_id(period: str, now: float) -> str:
    d = _utc(now)
    if period == "daily":
        return d.strftime("%Y-%m-%d")
    if period == "weekly":
        iso = d.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if period == "monthly":
        return d.strftime("%Y-%m")
    return "total"


def _period_start(period: str, now: float) -> float:
    """Unix time the (daily, weekly or monthly) period containing ``now`` began."""
    d = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "weekly":
        d -= timedelta(days=d.weekday())
    elif period == "monthly":
        d = d.replace(day=1)
    return d.timestamp()


def period_end(period: str, now: float) -> float | None:
    """Unix time the period containing ``now`` ends (None for ``total``)."""
    d = _utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return (d + timedelta(days=1)).timestamp()
    if period == "weekly":
        return (d + timedelta(days=7 - d.weekday())).timestamp()
    if period == "monthly":
        first = d.replace(day=1)
        return (first.replace(year=first.year + 1, month=1) if first.month == 12
                else first.replace(month=first.month + 1)).timestamp()
    return None


def seconds_to_day_end(now: float) -> float:
    """Seconds from ``now`` (Unix time) to the UTC midnight that ends its daily period."""
    end = period_end("daily", now)
    assert end is not None
    return end - now


class _Window:
    """Two-bucket sliding window over wall-clock minutes."""

    __slots__ = ("cur", "minute", "prev")

    def __init__(self) -> None:
        self.minute = 0
        self.cur = 0.0
        self.prev = 0.0

    def _roll(self, now: float) -> None:
        m = int(now // 60)
        if m != self.minute:
            self.roll(m)

    def roll(self, m: int) -> None:
        """Make minute ``m`` the current one (the request path checks ``minute`` first)."""
        self.prev = self.cur if m == self.minute + 1 else 0.0
        self.cur = 0.0
        self.minute = m

    def level(self, now: float) -> float:
        self._roll(now)
        return self.prev * (1.0 - (now - self.minute * 60) / 60) + self.cur

    def add(self, now: float, n: float) -> None:
        self._roll(now)
        self.cur = max(0.0, self.cur + n)

    def wait(self, now: float, need: float, limit: int) -> float:
        """Seconds until ``need`` more fits under ``limit``; 0 if it fits now. A need
        larger than the whole limit fits an empty window, or it could never pass."""
        need = min(need, float(limit))
        if self.level(now) + need <= limit:
            return 0.0
        elapsed = now - self.minute * 60
        room = limit - need - self.cur
        if room >= 0:  # the previous minute's share must fade enough, within this minute
            return max(0.0, 60 * (1 - room / self.prev) - elapsed) if self.prev > 0 else 0.0
        # Only once this minute is the previous one, fading: cur x (1 - t/60) <= limit - need.
        return (60 - elapsed) + 60 * (1 - (limit - need) / self.cur)


class _Totals:
    __slots__ = ("completion", "cost", "prompt", "requests")

    def __init__(self, requests: int = 0, prompt: int = 0, completion: int = 0,
                 cost: float = 0.0) -> None:
        self.requests, self.prompt, self.completion, self.cost = (requests, prompt, completion,
                                                                  cost)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt,
                "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion, "cost_usd": self.cost}

    def as_row(self) -> list[Any]:
        return [self.requests, self.prompt, self.completion, self.cost]


class _Period:
    __slots__ = ("id", "models", "totals")

    def __init__(self, pid: str) -> None:
        self.id = pid
        self.totals = _Totals()
        self.models: dict[str, _Totals] = {}

    def new_model(self, model: str) -> _Totals:
        """The totals a model not counted yet in this period adds to: its own, or those
        of ``"other"`` once the period holds :data:`MAX_MODELS` models."""
        if len(self.models) >= MAX_MODELS:
            model = _OTHER
            m = self.models.get(model)
            if m is not None:
                return m
        m = self.models[model] = _Totals()
        return m


class _Account:
    """The counters of one user or one client key."""

    __slots__ = ("concurrent", "cur", "cur_ids", "day", "day_requests", "pend", "pend_ids",
                 "periods", "reserved_usd", "rpm", "tpm", "watch", "watched")

    def __init__(self) -> None:
        self.rpm = _Window()
        self.tpm = _Window()
        self.day = ""
        self.day_requests = 0
        self.concurrent = 0
        self.reserved_usd = 0.0  # estimated cost of admitted requests not yet recorded
        self.periods: dict[str, _Period] = {}
        # The periods of PERIODS (in order) for the ids tuple ``cur_ids`` (period_ids):
        # recording checks that by identity. Whatever replaces an entry of ``periods``
        # sets ``cur_ids`` to None.
        self.cur: tuple[_Period, ...] = ()
        self.cur_ids: tuple[str, ...] | None = None
        # Answers recorded and not yet added to the periods of ``pend_ids``, in order:
        # (provider/model, prompt tokens, completion tokens, USD). See fold().
        self.pend: list[tuple[str, int, int, float]] = []
        self.pend_ids: tuple[str, ...] | None = None
        # A budget's period (its index in ``cur``; -1: none) and its spend with the pending
        # costs summed on, in order: what fold() will leave in it, kept as answers come so
        # that a budget check is one read. Valid while ``cur`` and ``pend_ids`` stay.
        self.watch = -1
        self.watched = 0.0

    def unreserve(self, usd: float) -> None:
        # Float sums drift: with nothing in flight the reservation is exactly zero.
        self.reserved_usd = max(0.0, self.reserved_usd - usd) if self.concurrent else 0.0

    def requests_today(self, now: float) -> int:
        today = period_ids(now)[0]
        if today != self.day:
            self.day, self.day_requests = today, 0
        return self.day_requests

    def period(self, name: str, now: float) -> _Period:
        if self.pend:
            self.fold()
        pid = period_id(name, now)
        p = self.periods.get(name)
        if p is None or p.id != pid:
            p = self.periods[name] = _Period(pid)
            self.cur_ids, self.watch = None, -1
        return p

    def current(self, ids: tuple[str, ...]) -> tuple[_Period, ...]:
        """The periods of :data:`PERIODS` whose ids are ``ids`` (:func:`period_ids`): one
        that has ended is replaced by a new, empty one, as :meth:`period` does."""
        if self.cur_ids is ids:
            return self.cur
        periods = self.periods
        cur = []
        for name, pid in zip(PERIODS, ids, strict=True):
            p = periods.get(name)
            if p is None or p.id != pid:
                p = periods[name] = _Period(pid)
            cur.append(p)
        self.cur, self.cur_ids, self.watch = tuple(cur), ids, -1
        return self.cur

    def fold(self) -> None:
        """Add the pending answers to the periods they were recorded in. Exactly what adding
        each as it came would have left: token and request counts are integers, and each
        cost is added to each sum in the order recorded (``reduce``, one float addition at
        a time, never a rounded subtotal). What it saves is the Python work of 2 accounts x
        4 periods x (totals + the model's) per answer."""
        recs = self.pend
        if not recs:
            return
        self.pend = []
        assert self.pend_ids is not None
        cur = self.current(self.pend_ids)
        n = len(recs)
        if n == 1:
            name, prompt, completion, cost = recs[0]
            for p in cur:
                t = p.totals
                t.requests += 1
                t.prompt += prompt
                t.completion += completion
                t.cost += cost
                m = p.models.get(name)
                if m is None:
                    m = p.new_model(name)
                m.requests += 1
                m.prompt += prompt
                m.completion += completion
                m.cost += cost
            return
        # Per model: [answers, prompt, completion, costs in order], in order of first sight.
        prompt = sum(map(_PROMPT, recs))
        completion = sum(map(_COMPLETION, recs))
        costs = list(map(_COST, recs))  # read once, added to each period's total below
        first = recs[0][0]
        groups: dict[str, list[Any]]
        if all(map(first.__eq__, map(_NAME, recs))):
            # The usual case, one model: its sums are the totals (no loop in Python).
            groups = {first: [n, prompt, completion, costs]}
        else:
            groups = {}
            for name, pt, ct, cost in recs:
                g = groups.get(name)
                if g is None:
                    g = groups[name] = [0, 0, 0, []]
                g[0] += 1
                g[1] += pt
                g[2] += ct
                g[3].append(cost)
        for p in cur:
            t = p.totals
            t.requests += n
            t.prompt += prompt
            t.completion += completion
            t.cost = reduce(add, costs, t.cost)
            models = p.models
            if len(models) + len(groups) <= MAX_MODELS:
                # Every model keeps its own totals (none is summed as "other").
                for name, (k, pt, ct, model_costs) in groups.items():
                    m = models.get(name)
                    if m is None:
                        m = models[name] = _Totals()
                    m.requests += k
                    m.prompt += pt
                    m.completion += ct
                    m.cost = reduce(add, model_costs, m.cost)
                continue
            for name, pt, ct, cost in recs:  # near the bound: one answer at a time
                m = models.get(name)
                if m is None:
                    m = p.new_model(name)
                m.requests += 1
                m.prompt += pt
                m.completion += ct
                m.cost += cost


class Admission:
    """One admitted request: what :meth:`Ledger.record` and :meth:`Ledger.release` settle."""

    __slots__ = ("accounts", "cost_estimate", "estimate", "key", "recorded", "released",
                 "shared", "user")

    def __init__(self, accounts: tuple[_Account, ...], estimate: int,
                 cost_estimate: float = 0.0, user: str = "", key: str = "") -> None:
        self.accounts = accounts
        self.estimate = estimate  # tokens counted toward tpm at admission
        self.cost_estimate = cost_estimate  # USD reserved against budgets at admission
        self.user = user  # names of the accounts, for the journal
        self.key = key
        self.recorded = False
        self.released = False
        self.shared: object = None  # what a shared state store holds for it (store.py)


class Ledger:
    """Request, token and spend counters per user and client key; limits and budgets.

    ``clock`` (Unix seconds) is the time source for windows and calendar periods; tests
    may replace it to cross a minute or a day without waiting.
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._users: dict[str, _Account] = {}
        self._keys: dict[tuple[str, str], _Account] = {}
        self._unpriced: set[str] = set()
        self.journal: Journal | None = None  # with a snapshot path: every change goes here

    # -- the request path
    def _user(self, user: str) -> _Account:
        acc = self._users.get(user)
        if acc is None:
            acc = self._users[user] = _Account()
        return acc

    def _key(self, user: str, key: str) -> _Account:
        acc = self._keys.get((user, key))
        if acc is None:
            acc = self._keys[(user, key)] = _Account()
        return acc

    def admit(self, caller: Caller, estimate_tokens: int, estimate_cost: float = 0.0, *,
              enforce: bool = True) -> Admission:
        """Count one request of ``caller`` or refuse it: 402 when a budget is spent or
        reserved by requests in flight, 429 (naming the limit, with ``Retry-After``) when a
        limit would be passed. Reserves ``estimate_tokens`` (tpm) and ``estimate_cost``
        (budgets) until :meth:`record` or :meth:`release` settles them. With
        ``enforce=False`` it only counts: a shared store already decided fleet-wide."""
        now = self.clock()
        name = caller.user
        user = self._users.get(name)
        if user is None:
            user = self._users[name] = _Account()
        pair = (name, caller.key)
        key = self._keys.get(pair)
        if key is None:
            key = self._keys[pair] = _Account()
        start, end, ids = _IDS_CACHE  # period_ids(now), inline while the day lasts
        if not start <= now < end:
            ids = period_ids(now)
        minute = int(now // 60)
        if enforce and (caller.limits is not None or caller.key_limits is not None
                        or caller.budget is not None or caller.key_budget is not None):
            self._enforce(caller, user, key, estimate_tokens, now, ids, minute)
        # _Window.add and requests_today, inlined: this runs for every request.
        day = ids[0]
        for acc in (user, key):
            acc.concurrent += 1
            if acc.day != day:
                acc.day, acc.day_requests = day, 0
            acc.day_requests += 1
            w = acc.rpm
            if w.minute != minute:
                w.roll(minute)
            level = w.cur + 1
            w.cur = level if level > 0.0 else 0.0
            w = acc.tpm
            if w.minute != minute:
                w.roll(minute)
            level = w.cur + estimate_tokens
            w.cur = level if level > 0.0 else 0.0
            if estimate_cost:  # 0 for every caller without a budget
                acc.reserved_usd += estimate_cost
        if self.journal is not None:
            self.journal.append(("a", now, name, caller.key))
        return Admission((user, key), estimate_tokens, estimate_cost, name, caller.key)

    def _enforce(self, caller: Caller, user: _Account, key: _Account, estimate_tokens: int,
                 now: float, ids: tuple[str, ...], minute: int) -> None:
        """``ids`` and ``minute``: :func:`period_ids` of ``now``, and its minute."""
        # Budgets first (402 before 429), then a quick test of every limit; only a request
        # that fails one goes through _refuse, which names the worst limit.
        budget = caller.budget
        if budget is not None:
            _check_budget(user, caller, False, budget, now, ids)
        budget = caller.key_budget
        if budget is not None:
            _check_budget(key, caller, True, budget, now, ids)
        limits, key_limits = caller.limits, caller.key_limits
        day = ids[0]
        if ((limits is not None and not _fits(user, limits, estimate_tokens, now, day, minute))
                or (key_limits is not None
                    and not _fits(key, key_limits, estimate_tokens, now, day, minute))):
            _refuse(caller, user, key, estimate_tokens, now)

    def record(self, adm: Admission, provider: str, model: str, prompt_tokens: int,
               completion_tokens: int, cost: float | None) -> None:
        """Count what one admitted request used (once; later calls are ignored)."""
        if adm.recorded:
            return
        adm.recorded = True
        if cost is None:
            self._warn_unpriced(provider, model)
        now = self.clock()
        name = f"{provider}/{model}"
        if not 0 <= prompt_tokens <= TOKEN_COUNT_LIMIT:
            prompt_tokens = bounded_count(prompt_tokens)
        if not 0 <= completion_tokens <= TOKEN_COUNT_LIMIT:
            completion_tokens = bounded_count(completion_tokens)
        correction = prompt_tokens + completion_tokens - adm.estimate
        reserved = adm.cost_estimate
        minute = int(now // 60)
        # Negative or non-finite costs cannot come from a price table; 0 keeps them out.
        usd = cost if cost is not None and 0 <= cost < math.inf else 0.0
        start, end, ids = _IDS_CACHE  # period_ids(now), its usual case inline
        if not start <= now < end:
            ids = period_ids(now)
        rec = (name, prompt_tokens, completion_tokens, usd)
        for acc in adm.accounts:
            w = acc.tpm  # _Window.add, inlined
            if w.minute != minute:
                w.roll(minute)
            level = w.cur + correction
            w.cur = level if level > 0.0 else 0.0
            if not acc.concurrent:  # unreserve, inlined
                acc.reserved_usd = 0.0
            elif reserved:  # nothing to take back from an unbudgeted caller's (never < 0)
                level = acc.reserved_usd - reserved
                acc.reserved_usd = level if level > 0.0 else 0.0
            # _add_usage, inlined: the answer waits in the account's pending list.
            pend = acc.pend
            if acc.pend_ids is not ids:  # pending usage belongs to the periods of its day
                if pend:
                    acc.fold()
                    pend = acc.pend
                acc.pend_ids, acc.watch = ids, -1
            pend.append(rec)
            if acc.watch >= 0:
                acc.watched += usd
            if len(pend) >= _FOLD_AT:
                acc.fold()
        if self.journal is not None:
            self.journal.append(("r", now, adm.user, adm.key, name, prompt_tokens,
                                 completion_tokens, usd))

    def release(self, adm: Admission) -> None:
        """End an admitted request (always, once): frees its concurrency slot, and refunds
        its token estimate if it never recorded usage."""
        if adm.released:
            return
        adm.released = True
        if not adm.recorded:
            now = self.clock()
            for acc in adm.accounts:
                acc.concurrent = max(0, acc.concurrent - 1)
                acc.tpm.add(now, -adm.estimate)
                acc.unreserve(adm.cost_estimate)
            return
        for acc in adm.accounts:
            n = acc.concurrent - 1
            if n > 0:
                acc.concurrent = n
            else:
                acc.concurrent = 0
                acc.reserved_usd = 0.0

    def _warn_unpriced(self, provider: str, model: str) -> None:
        if model in self._unpriced or len(self._unpriced) >= _MAX_UNPRICED:
            return
        self._unpriced.add(model)
        if model == _OTHER:  # names the config does not give, folded (docs/teams.md)
            log.warning("models the config does not name (provider '%s', counted as "
                        "'other') have no entry in 'pricing': their calls are counted at "
                        "cost 0 (reported once)", provider)
            return
        log.warning("model '%s' (provider '%s') has no entry in 'pricing': its calls are "
                    "counted at cost 0 (reported once)", model, provider)

    # -- reports
    def spent(self, user: str, key: str | None, period: str) -> float:
        """USD ``user`` (or its client ``key``) spent in the current ``period``."""
        acc = self._users.get(user) if key is None else self._keys.get((user, key))
        return 0.0 if acc is None else acc.period(period, self.clock()).totals.cost

    def usage(self, caller: Caller) -> dict[str, Any]:
        """What ``GET /v1/usage`` shows the caller: its user and its key."""
        now = self.clock()
        return {
            "object": "usage",
            "time": _iso(now),
            "periods": {p: period_id(p, now) for p in PERIODS},
            "user": {"name": caller.user, "role": caller.role,
                     **self._report(self._users.get(caller.user), caller.limits,
                                    caller.budget, now)},
            "key": {"name": caller.key,
                    **self._report(self._keys.get((caller.user, caller.key)),
                                   caller.key_limits, caller.key_budget, now)},
        }

    def admin_usage(self, cfg: Config) -> dict[str, Any]:
        """Every configured user and key, then any other account with counters (the
        legacy ``api_key`` user, users removed by a reload)."""
        now = self.clock()
        users: list[dict[str, Any]] = []
        seen_users: set[str] = set()
        seen_keys: set[tuple[str, str]] = set()
        for u in cfg.users:
            seen_users.add(u.name)
            keys = []
            for k in u.keys:
                seen_keys.add((u.name, k.name))
                keys.append({"name": k.name, **self._report(self._keys.get((u.name, k.name)),
                                                            k.limits, k.budget, now)})
            users.append({"name": u.name, "role": u.role, "configured": True,
                          **self._report(self._users.get(u.name), u.limits, u.budget, now),
                          "keys": keys})
        for name in sorted(set(self._users) - seen_users):
            keys = [{"name": k, **self._report(acc, None, None, now)}
                    for (u, k), acc in sorted(self._keys.items()) if u == name]
            users.append({"name": name, "configured": False,
                          **self._report(self._users[name], None, None, now), "keys": keys})
        return {"object": "usage", "time": _iso(now),
                "periods": {p: period_id(p, now) for p in PERIODS}, "users": users}

    def _report(self, acc: _Account | None, limits: Limits | None, budget: Budget | None,
                now: float) -> dict[str, Any]:
        acc = acc if acc is not None else _Account()
        usage: dict[str, Any] = {}
        for name in PERIODS:
            p = acc.period(name, now)
            usage[name] = {"period": p.id, **p.totals.as_dict(),
                           "models": {m: t.as_dict() for m, t in sorted(p.models.items())}}
        out: dict[str, Any] = {"usage": usage, "limits": _limits_report(acc, limits, now),
                               "budget": None, "concurrent": acc.concurrent}
        if budget is not None:
            spent = acc.period(budget.period, now).totals.cost
            end = period_end(budget.period, now)
            out["budget"] = {"usd": budget.usd, "period": budget.period,
                             "period_id": period_id(budget.period, now), "spent_usd": spent,
                             "in_flight_usd": acc.reserved_usd,
                             "remaining_usd": max(0.0, budget.usd - spent),
                             "exhausted": spent >= budget.usd,
                             "resets_at": _iso(end) if end is not None else None}
        return out

    # -- the usage snapshot section
    def dump(self) -> dict[str, Any]:
        now = self.clock()

        def account(acc: _Account) -> dict[str, Any]:
            acc.fold()
            acc.requests_today(now)
            return {"day": acc.day, "day_requests": acc.day_requests,
                    "periods": {name: {"id": p.id, "totals": p.totals.as_row(),
                                       "models": {m: t.as_row() for m, t in p.models.items()}}
                                for name, p in acc.periods.items()}}

        return {"version": _DUMP_VERSION,
                "users": [{"user": u, **account(a)} for u, a in sorted(self._users.items())],
                "keys": [{"user": u, "key": k, **account(a)}
                         for (u, k), a in sorted(self._keys.items())]}

    @staticmethod
    def validate(data: Any, where: str) -> dict[str, Any]:
        """:meth:`dump`'s shape, every value checked (:class:`ShapeError` otherwise)."""
        d = mapping(data, where)
        if d.get("version") != _DUMP_VERSION:
            raise ShapeError(f"{where}.version", f"expected {_DUMP_VERSION}, got "
                                                 f"{str(d.get('version'))[:40]}")
        for kind in ("users", "keys"):
            for i, row in enumerate(rows(d.get(kind), f"{where}.{kind}")):
                _check_account(row, f"{where}.{kind}[{i}]", kind == "keys")
        return d

    def restore(self, data: dict[str, Any]) -> None:
        """Load a :meth:`dump` that :meth:`validate` accepted; periods that have ended
        since are dropped on first use."""
        for row in data["users"]:
            _load_account(self._user(row["user"]), row)
        for row in data["keys"]:
            _load_account(self._key(row["user"], row["key"]), row)

    def replay(self, event: Event) -> None:
        """Apply one journal event (``a`` or ``r``) as it was applied live."""
        tag, ts, user, key = event[:4]
        accounts = (self._user(user), self._key(user, key))
        if tag == "a":
            for acc in accounts:
                acc.requests_today(ts)
                acc.day_requests += 1
        elif tag == "r":
            _add_usage(accounts, ts, *event[4:])


def rate_limited(caller: Caller, is_key: bool, name: str, value: int,
                 wait: float) -> RateLimited:
    """The 429 for ``caller`` (its user, or its key) on limit ``name``."""
    return RateLimited(f"Rate limit reached for {_who(caller, is_key)} on {_LIMIT_NAMES[name]}: "
                       f"limit {value}. Try again in {max(1, math.ceil(wait))} s.",
                       retry_after=max(1.0, wait), reason=name)


def _who(caller: Caller, is_key: bool) -> str:
    if is_key:
        return f"key '{caller.key}' of user '{caller.user}'"
    return f"user '{caller.user}'"


def _check_budget(acc: _Account, caller: Caller, is_key: bool, budget: Budget,
                  now: float, ids: tuple[str, ...]) -> None:
    """``ids``: :func:`period_ids` of ``now``."""
    if acc.cur_ids is ids and (acc.pend_ids is ids or not acc.pend):
        # Today's periods, and pending usage of today: its costs summed on in order, as
        # fold() will add them (the same float), without folding on every admission.
        i = _PERIOD_INDEX[budget.period]
        if acc.watch == i:
            spent = acc.watched
        else:
            spent = acc.cur[i].totals.cost
            if acc.pend:
                spent = reduce(add, map(_COST, acc.pend), spent)
            acc.watch, acc.watched = i, spent
    else:
        spent = acc.period(budget.period, now).totals.cost
    if spent + acc.reserved_usd >= budget.usd:
        raise budget_exhausted(caller, is_key, budget, spent, now)


def budget_exhausted(caller: Caller, is_key: bool, budget: Budget, spent: float,
                     now: float) -> BudgetExhausted:
    """The 402 for ``caller`` (its user, or its key) whose ``budget`` is spent (``spent``)
    or, below it, reserved by requests in flight."""
    who = _who(caller, is_key)
    span = ("total" if budget.period == "total"
            else f"{budget.period} ({period_id(budget.period, now)})")
    if spent < budget.usd:
        # Not spent yet, but requests in flight are expected to spend the rest.
        return BudgetExhausted(
            f"Budget exhausted for {who}: spent {_usd(spent)} of its {_usd(budget.usd)} "
            f"{span} budget, and requests in flight are expected to spend the remaining "
            f"{_usd(budget.usd - spent)}. Retry when they have finished.")
    end = period_end(budget.period, now)
    when = (f"It renews at {_iso(end)}." if end is not None
            else "It does not renew; ask an admin to raise it.")
    return BudgetExhausted(f"Budget exhausted for {who}: spent {_usd(spent)} of its "
                           f"{_usd(budget.usd)} {span} budget. {when}")


def _usd(value: float) -> str:
    # Cents for real budgets; tiny ones (tests, trials) keep their significant digits.
    if value >= 1:
        return f"${value:,.2f}"
    return "$" + (f"{value:.8f}".rstrip("0").rstrip(".") or "0")


def _fits(acc: _Account, limits: Limits, estimate: int, now: float, day: str,
          minute: int) -> bool:
    """Whether no limit refuses this request: :func:`_violations` finds none. The same
    tests, without naming anything (this runs for every request of a limited caller);
    a False is then explained by :func:`_violations`."""
    value = limits.max_concurrent
    if value is not None and acc.concurrent >= value:
        return False
    value = limits.daily_requests
    if value is not None:
        if acc.day != day:  # requests_today, inlined
            acc.day, acc.day_requests = day, 0
        if acc.day_requests >= value:
            return False
    value = limits.rpm
    if value is not None:
        w = acc.rpm  # _Window.wait's first test
        if w.minute != minute:
            w.roll(minute)
        # min(1, float(value)) and, below, min(estimate, float(value)) without their two
        # calls each: the same value (an estimate is far below 2**53, where an int and a
        # float compare exactly).
        if not (w.prev * (1.0 - (now - w.minute * 60) / 60) + w.cur
                + (1 if value >= 1 else float(value)) <= value):
            return False
    value = limits.tpm
    if value is not None:
        w = acc.tpm
        if w.minute != minute:
            w.roll(minute)
        if not (w.prev * (1.0 - (now - w.minute * 60) / 60) + w.cur
                + (estimate if estimate <= value else float(value)) <= value):
            return False
    return True


def _refuse(caller: Caller, user: _Account, key: _Account, estimate: int,
            now: float) -> None:
    """The 429 for the limit that makes this request wait longest, if any does."""
    worst: tuple[float, bool, str, int] | None = None  # (wait, is_key, limit, value)
    for acc, is_key, limits in ((user, False, caller.limits), (key, True, caller.key_limits)):
        if limits is None:
            continue
        for name, wait, value in _violations(acc, limits, estimate, now):
            if worst is None or wait > worst[0]:
                worst = (wait, is_key, name, value)
    if worst is not None:
        wait, is_key, name, value = worst
        raise rate_limited(caller, is_key, name, value, wait)


def _violations(acc: _Account, limits: Limits, estimate: int,
                now: float) -> Iterable[tuple[str, float, int]]:
    """(limit name, seconds to wait, limit value) for each limit this request would pass."""
    if limits.max_concurrent is not None and acc.concurrent >= limits.max_concurrent:
        yield "max_concurrent", 1.0, limits.max_concurrent
    if limits.daily_requests is not None and acc.requests_today(now) >= limits.daily_requests:
        yield "daily_requests", seconds_to_day_end(now), limits.daily_requests
    if limits.rpm is not None:
        wait = acc.rpm.wait(now, 1, limits.rpm)
        if wait > 0:
            yield "rpm", wait, limits.rpm
    if limits.tpm is not None:
        wait = acc.tpm.wait(now, estimate, limits.tpm)
        if wait > 0:
            yield "tpm", wait, limits.tpm


def _limits_report(acc: _Account, limits: Limits | None, now: float) -> dict[str, Any]:
    if limits is None:
        return {}
    out: dict[str, Any] = {}
    used: dict[str, float] = {"rpm": acc.rpm.level(now), "tpm": acc.tpm.level(now),
                              "daily_requests": acc.requests_today(now),
                              "max_concurrent": acc.concurrent}
    for name, value in (("rpm", limits.rpm), ("tpm", limits.tpm),
                        ("daily_requests", limits.daily_requests),
                        ("max_concurrent", limits.max_concurrent)):
        if value is None:
            continue
        u = used[name]
        # Whole requests and tokens: the sliding window's weighted level is fractional,
        # so used rounds up and remaining down (used + remaining = limit until it is over).
        out[name] = {"limit": value, "used": math.ceil(u - 1e-9),
                     "remaining": max(0, math.floor(value - u + 1e-9))}
    if "daily_requests" in out:
        end = period_end("daily", now)
        out["daily_requests"]["resets_at"] = _iso(end) if end is not None else None
    return out


def _add_usage(accounts: Iterable[_Account], now: float, name: str, prompt: int,
               completion: int, cost: float) -> None:
    # Runs for every answer: one tuple, kept by each account until a read or _FOLD_AT.
    ids = period_ids(now)
    rec = (name, prompt, completion, cost)
    for acc in accounts:
        pend = acc.pend
        if acc.pend_ids is not ids:  # pending usage belongs to the periods of its own day
            if pend:
                acc.fold()
                pend = acc.pend
            acc.pend_ids, acc.watch = ids, -1
        pend.append(rec)
        if acc.watch >= 0:
            acc.watched += cost
        if len(pend) >= _FOLD_AT:
            acc.fold()


def _check_account(row: Any, where: str, is_key: bool) -> None:
    r = mapping(row, where)
    text(r.get("user"), f"{where}.user")
    if is_key:
        text(r.get("key"), f"{where}.key")
    text(r.get("day"), f"{where}.day")
    count(r.get("day_requests"), f"{where}.day_requests")
    for name, p in mapping(r.get("periods"), f"{where}.periods").items():
        at = f"{where}.periods.{name}"
        if name not in PERIODS:
            raise ShapeError(at, f"unknown period (known: {', '.join(PERIODS)})")
        period = mapping(p, at)
        text(period.get("id"), f"{at}.id")
        _check_totals(period.get("totals"), f"{at}.totals")
        for model, totals in mapping(period.get("models"), f"{at}.models").items():
            _check_totals(totals, f"{at}.models.{model}")


def _check_totals(value: Any, where: str) -> None:
    row = rows(value, where)
    if len(row) != 4:
        raise ShapeError(where, "expected [requests, prompt tokens, completion tokens, cost]")
    for i in range(3):
        count(row[i], f"{where}[{i}]")
    money(row[3], f"{where}[3]")


def _load_account(acc: _Account, row: dict[str, Any]) -> None:
    acc.day, acc.day_requests = row["day"], row["day_requests"]
    # Live levels appear only in a fleet view read from a shared store, never in a file.
    for name in ("rpm", "tpm"):
        if name in row:
            window = getattr(acc, name)
            window.minute, window.cur, window.prev = row[name]
    acc.concurrent = int(row.get("concurrent", 0))
    acc.reserved_usd = float(row.get("reserved_usd", 0.0))
    acc.fold()
    acc.cur_ids, acc.watch = None, -1
    for name, p in row["periods"].items():
        period = _Period(p["id"])
        period.totals = _Totals(*p["totals"])
        period.models = {m: _Totals(*t) for m, t in p["models"].items()}
        acc.periods[name] = period


def _iso(ts: float) -> str:
    return _utc(ts).isoformat(timespec="seconds").replace("+00:00", "Z")
