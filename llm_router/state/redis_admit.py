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
from collections.abc import Callable
from typing import Any, Final

from ..config import Limits
from ..errors import RouterError
from ..ledger.accounting import Caller
from ..ledger.limits import budget_exhausted, period_end
from ..ledger.limits import rate_limited as limit_error

__all__ = ["BATCH", "UNSET", "Waiting", "pack", "refusal"]

BATCH: Final = 256  # admissions per script call at most: Redis runs it without interruption
UNSET: Final = -1
_OK: Final = b"ok"

# (account, now, budget period) -> the 7 keys of that account (redis_keys.ADMIT)
KeysOf = Callable[[str, float, str], list[str]]


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


def pack(batch: list[Waiting], now: float, lease_ms: int,
         keys_of: KeysOf) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one ADMIT call for ``batch``, all at ``now``. The admissions of
    one caller share a group: its keys and limits travel once."""
    minute = int(now // 60)
    groups: dict[int, int] = {}
    keys: list[str] = []
    limits: list[Any] = []
    admissions: list[Any] = []
    for w in batch:
        c = w.caller
        # The caller objects of a batch are all alive: their ids are distinct.
        g = groups.get(id(c))
        if g is None:
            g = groups[id(c)] = len(groups) + 1
            for acct, lim, budget in ((w.accounts[0], c.limits, c.budget),
                                      (w.accounts[1], c.key_limits, c.key_budget)):
                keys += keys_of(acct, now, budget.period if budget is not None else "total")
                limits += [*_limit_args(lim), budget.usd if budget is not None else UNSET]
        admissions += (g, w.estimate, w.slot)
    head = [len(groups), now - minute * 60, int(now * 1000), lease_ms,
            (period_end("daily", now) or now) - now]
    return keys, [*head, *limits, *admissions]


def refusal(caller: Caller, answer: Any, now: float) -> RouterError | None:
    """The 402 or 429 the script answered for ``caller``; None if it was admitted."""
    verdict = answer[0]
    if verdict == _OK:
        return None
    is_key = int(answer[1]) == 2
    if verdict == b"budget":
        budget = caller.key_budget if is_key else caller.budget
        assert budget is not None
        return budget_exhausted(caller, is_key, budget, float(answer[2]), now)
    return limit_error(caller, is_key, _text(answer[2]), int(answer[4]), float(answer[3]))


def _limit_args(limits: Limits | None) -> list[int]:
    if limits is None:
        return [UNSET] * 4
    return [UNSET if v is None else v for v in (limits.rpm, limits.tpm, limits.daily_requests,
                                                limits.max_concurrent)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
