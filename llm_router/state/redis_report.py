"""What Redis holds for some accounts, as a ledger dump: the fleet's ``/v1/usage`` and
``/admin/usage`` (:meth:`~.redis_store.RedisStore.usage`) restore a ledger from it."""

from __future__ import annotations

from typing import Any, Final

from ..ledger.limits import PERIODS, period_id

__all__ = ["REPORT_READS", "report", "text"]

REPORT_READS: Final = 10  # results of the fleet-view pipeline per account


def report(accounts: list[tuple[str, str | None]], res: list[Any],
           now: float) -> dict[str, Any]:
    """What a fleet-view pipeline read (:data:`REPORT_READS` results per account: four
    period hashes, rpm and tpm of this minute and the last, the day count, the live
    slots), as a ledger dump."""
    minute = int(now // 60)
    doc: dict[str, Any] = {"version": 1, "users": [], "keys": []}
    for i, (user, key) in enumerate(accounts):
        r = res[i * REPORT_READS:(i + 1) * REPORT_READS]
        row: dict[str, Any] = {
            "user": user, "day": period_id("daily", now), "day_requests": int(r[8] or 0),
            "periods": {p: _period_row(period_id(p, now), h) for p, h in zip(PERIODS, r[:4],
                                                                             strict=True)},
            "rpm": (minute, _float(r[4]), _float(r[5])),
            "tpm": (minute, _float(r[6]), _float(r[7])),
            "concurrent": len(r[9]),
            "reserved_usd": sum(float(text(m).rpartition("|")[2] or 0) for m in r[9])}
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
