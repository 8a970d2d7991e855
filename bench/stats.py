"""Percentiles for the bench scripts (nearest rank, as wrk reports them)."""

from __future__ import annotations

import statistics

__all__ = ["median", "percentiles"]


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | int | None]:
    """p50/p90/p99/p99.9/max of ``values`` times ``scale`` (seconds to ms by default)."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "p999": None, "max": None}
    s = sorted(values)
    n = len(s)

    def at(q: float) -> float:
        return round(s[min(n - 1, max(0, int(q * n + 0.5) - 1))] * scale, 3)

    return {"n": n, "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
            "max": round(s[-1] * scale, 3)}


def median(values: list[float]) -> float | None:
    """The median, or None for no values (a target that never answered)."""
    return statistics.median(values) if values else None
