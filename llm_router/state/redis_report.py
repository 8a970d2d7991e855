"""What Redis holds for some accounts, as a ledger dump: the fleet's ``/v1/usage`` and
``/admin/usage`` (:meth:`~.redis_store.RedisStore.usage`) restore a ledger from it."""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from redis.asyncio.client import Pipeline

from ..ledger.limits import PERIODS, period_id
from .redis_keys import key_of

__all__ = ["queue_reads", "report", "text"]


class AccountReads(NamedTuple):
    """One account's results of a fleet-view pipeline, in the order :func:`queue_reads`
    asks for them."""

    daily: dict[bytes, bytes]  # the spend hashes of the four PERIODS
    weekly: dict[bytes, bytes]
    monthly: dict[bytes, bytes]
    total: dict[bytes, bytes]
    rpm: bytes | None  # this minute's count
    rpm_before: bytes | None  # the last minute's
    tpm: bytes | None
    tpm_before: bytes | None
    day_requests: bytes | None
    slots: list[bytes]  # live in-flight slot members


_READS: Final = len(AccountReads._fields)


def queue_reads(pipe: Pipeline, prefix: str, acct: str, now: float) -> list[str]:
    """Queue one account's reads (:class:`AccountReads`, in its order) on a fleet-view
    pipeline; the keys they read, in the same order."""
    minute = int(now // 60)
    hashes = [key_of(prefix, "spend", acct, p, period_id(p, now)) for p in PERIODS]
    counts = [*(key_of(prefix, "w", acct, name, m) for name in ("rpm", "tpm")
                for m in (minute, minute - 1)),
              key_of(prefix, "day", acct, period_id("daily", now))]
    slots = key_of(prefix, "slots", acct)
    for k in hashes:
        pipe.hgetall(k)
    for k in counts:
        pipe.get(k)
    pipe.zrangebyscore(slots, int(now * 1000), "+inf")
    return [*hashes, *counts, slots]


def report(accounts: list[tuple[str, str | None]], res: list[Any],
           now: float) -> dict[str, Any]:
    """What a fleet-view pipeline read (:func:`queue_reads` for each account, in order),
    as a ledger dump."""
    minute = int(now // 60)
    doc: dict[str, Any] = {"version": 1, "users": [], "keys": []}
    for i, (user, key) in enumerate(accounts):
        r = AccountReads(*res[i * _READS:(i + 1) * _READS])
        hashes = (r.daily, r.weekly, r.monthly, r.total)
        row: dict[str, Any] = {
            "user": user, "day": period_id("daily", now),
            "day_requests": int(r.day_requests or 0),
            "periods": {p: _period_row(period_id(p, now), h)
                        for p, h in zip(PERIODS, hashes, strict=True)},
            "rpm": (minute, _float(r.rpm), _float(r.rpm_before)),
            "tpm": (minute, _float(r.tpm), _float(r.tpm_before)),
            "concurrent": len(r.slots),
            "reserved_usd": sum(float(text(m).rpartition("|")[2] or 0) for m in r.slots)}
        if key is None:
            doc["users"].append(row)
        else:
            doc["keys"].append({**row, "key": key})
    return doc


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float:
    return max(0.0, float(value)) if value is not None else 0.0


def _period_row(pid: str, h: dict[bytes, bytes]) -> dict[str, Any]:
    """A spend hash as the ledger's dump row of one period."""
    def totals(suffix: str = "") -> list[Any]:
        if suffix:
            return [int(h.get(f"r|{suffix}".encode(), 0)), int(h.get(f"p|{suffix}".encode(), 0)),
                    int(h.get(f"c|{suffix}".encode(), 0)),
                    float(h.get(f"$|{suffix}".encode(), 0.0))]
        return [int(h.get(b"requests", 0)), int(h.get(b"prompt", 0)),
                int(h.get(b"completion", 0)), float(h.get(b"cost", 0.0))]

    models = [f.decode()[2:] for f in h if f.startswith(b"r|")]
    return {"id": pid, "totals": totals(), "models": {m: totals(m) for m in models}}
