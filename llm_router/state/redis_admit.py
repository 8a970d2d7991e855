"""Admissions to Redis in batches: one script call decides many requests.

A caller with limits or a budget is admitted by :data:`~.redis_keys.ADMIT` on the
server, where the decision and its counting are one atomic step. One call is out at a
time: the admissions that arrive while it is out (or within the same loop tick, when
none is) wait and go together in the next one. The script decides them in order,
exactly as separate calls would, each seeing what those before it counted; a refused one
counts nothing. Under load one round trip, one socket write and one wake-up serve many
requests; alone, a request waits for nothing but its own call.

This module packs a batch and reads its answers; :class:`~.redis_store.RedisStore` runs
the calls.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from ..config import Limits
from ..errors import RouterError
from ..ledger.accounting import Caller
from ..ledger.limits import (
    PERIODS,
    budget_exhausted,
    period_id,
    period_ids,
    seconds_to_day_end,
)
from ..ledger.limits import rate_limited as limit_error
from .redis_keys import ADMIT, key_of
from .redis_ops import bulk

__all__ = ["BATCH", "UNSET", "Packer", "Waiting", "answers", "refusal"]

BATCH: Final = 256  # admissions per script call at most: Redis runs it without interruption
UNSET: Final = -1
GROUP_ARGS: Final = 14  # a caller's part of an ADMIT call: 7 per account
_PARTS_MAX: Final = 10_000  # callers' parts kept at most; then all are packed again
_OK: Final = b"ok"


class Waiting:
    """One admission waiting for its batch; ``future`` gets the script's answer, or None
    when Redis could not decide (the store then admits locally, degraded)."""

    __slots__ = ("accounts", "caller", "cost", "estimate", "future", "slot")

    def __init__(self, caller: Caller, accounts: tuple[str, str], estimate: int, cost: float,
                 slot: str, future: asyncio.Future[Any]) -> None:
        self.caller = caller
        self.accounts = accounts
        self.estimate = estimate
        self.cost = cost
        self.slot = slot
        self.future = future


class Packer:
    """Packs ADMIT calls. A caller's part of a call (its accounts' ids, limits, budgets)
    is the same in every call: it is packed once, and kept while the caller object lives
    (the config's callers; a reload makes new ones, and the old ones go with the next
    clear)."""

    __slots__ = ("_parts", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._parts: dict[int, tuple[Caller, bytes]] = {}

    def pack(self, batch: list[Waiting], now: float, lease_ms: int) -> bytes:
        """The ADMIT call (EVALSHA, in RESP) deciding ``batch``, all at ``now``. The
        admissions of one caller share a group: its part travels once."""
        minute = int(now // 60)
        groups: dict[int, int] = {}
        parts: list[bytes] = []
        admissions: list[Any] = []
        for w in batch:
            c = w.caller
            # The caller objects of a batch are all alive: their ids are distinct.
            g = groups.get(id(c))
            if g is None:
                g = groups[id(c)] = len(groups) + 1
                parts.append(self._part(c, w.accounts))
            admissions += (g, w.estimate, w.slot)
        head = (self._prefix, len(groups), minute, minute - 1, now - minute * 60,
                int(now * 1000), lease_ms, seconds_to_day_end(now),
                *period_ids(now))
        return b"*%d\r\n%s%s%s" % (
            3 + len(head) + GROUP_ARGS * len(groups) + len(admissions),
            bulk(("EVALSHA", ADMIT.sha, 0, *head)), b"".join(parts), bulk(admissions))

    def _part(self, c: Caller, accounts: tuple[str, str]) -> bytes:
        hit = self._parts.get(id(c))
        if hit is not None and hit[0] is c:
            return hit[1]
        if len(self._parts) >= _PARTS_MAX:
            self._parts.clear()
        args: list[Any] = []
        for acct, lim, budget in ((accounts[0], c.limits, c.budget),
                                  (accounts[1], c.key_limits, c.key_budget)):
            args += [acct, *_limit_args(lim)]
            args += [repr(float(budget.usd)), PERIODS.index(budget.period) + 1] \
                if budget is not None else [UNSET, 0]
        part = bulk(args)
        self._parts[id(c)] = (c, part)
        return part

    def keys(self, batch: list[Waiting], now: float) -> list[str]:
        """The keys an ADMIT call for ``batch`` reads and writes (a data fault's
        suspects, for the probe)."""
        minute, daily = int(now // 60), period_id("daily", now)
        p = self._prefix
        out: list[str] = []
        for w in batch:
            for acct, budget in ((w.accounts[0], w.caller.budget),
                                 (w.accounts[1], w.caller.key_budget)):
                out += [key_of(p, "w", acct, name, m) for name in ("rpm", "tpm")
                        for m in (minute, minute - 1)]
                out += [key_of(p, "day", acct, daily), key_of(p, "slots", acct)]
                if budget is not None:
                    out.append(key_of(p, "spend", acct, budget.period,
                                      period_id(budget.period, now)))
        return list(dict.fromkeys(out))


def answers(reply: Any, n: int) -> list[list[bytes]] | None:
    """The ``n`` answers of an ADMIT reply, each split in its words; None if the reply
    is not one."""
    if not isinstance(reply, bytes):
        return None
    lines = reply.split(b"\n")
    if len(lines) != n:
        return None
    return [line.split(b" ") for line in lines]


def refusal(caller: Caller, answer: list[bytes], now: float) -> RouterError | None:
    """The 402 or 429 the script answered for ``caller``; None if it was admitted."""
    verdict = answer[0]
    if verdict == _OK:
        return None
    is_key = answer[1] == b"2"
    if verdict == b"budget":
        budget = caller.key_budget if is_key else caller.budget
        assert budget is not None
        return budget_exhausted(caller, is_key, budget, float(answer[2]), now)
    return limit_error(caller, is_key, answer[2].decode(), int(answer[4]), float(answer[3]))


def _limit_args(limits: Limits | None) -> list[int]:
    if limits is None:
        return [UNSET] * 4
    return [UNSET if v is None else v for v in (limits.rpm, limits.tpm, limits.daily_requests,
                                                limits.max_concurrent)]
