#!/usr/bin/env python3
"""What the per-request metrics calls cost, in-process, before and after issue 18.

The A/B of whole routers (bench/ab.py) has a noise floor of a few µs per request; the
metrics change is smaller than that. This times exactly the calls ``app._observe`` and
the stream relay make per request, on prometheus-client objects shaped as before and
after, interleaved A B A B in one process:

    python bench/metrics_cost.py            # 7 rounds x 200,000 requests per variant

before: requests_total{route,group,provider,model,status}.inc() +
        request_duration_seconds{route,group,provider}.observe()
after:  requests_total{...,status,user}.inc() +
        request_duration_seconds{...,provider,model,status_class}.observe()
stream: + time_per_output_token_seconds.observe() (streams only)
refusal: + rejections_total.inc() (refused requests only)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from llm_router.observe.metrics import Metrics, status_class

_N = 200_000
_ROUNDS = 7
_DURATION = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


def _before() -> Callable[[], None]:
    r = CollectorRegistry()
    requests = Counter("r_total", "", ["route", "group", "provider", "model", "status"],
                       registry=r)
    duration = Histogram("d_seconds", "", ["route", "group", "provider"], buckets=_DURATION,
                         registry=r)
    children: dict[tuple[object, ...], object] = {}

    def child(metric: object, *labels: str) -> object:  # Metrics.child, as it was
        key = (id(metric), *labels)
        c = children.get(key)
        if c is None:
            c = children[key] = metric.labels(*labels)  # type: ignore[attr-defined]
        return c

    def one() -> None:
        child(requests, "/v1/chat/completions", "fast", "openai", "gpt-4o-mini",
              str(200)).inc()  # type: ignore[attr-defined]
        child(duration, "/v1/chat/completions", "fast",
              "openai").observe(0.31)  # type: ignore[attr-defined]

    return one


def _after(stream: bool = False, refusal: bool = False) -> Callable[[], None]:
    m = Metrics()

    def one() -> None:
        status = 200
        user = "alice"
        m.child(m.requests, "/v1/chat/completions", "fast", "openai", "gpt-4o-mini",
                str(status), user).inc()
        m.child(m.duration, "/v1/chat/completions", "fast", "openai", "gpt-4o-mini",
                status_class(status)).observe(0.31)
        if stream:
            m.child(m.tpot, "fast", "openai", "gpt-4o-mini").observe(0.012 / 15)
        if refusal:
            m.child(m.rejections, "/v1/chat/completions", "fast", user, "rpm").inc()

    return one


def _time(fn: Callable[[], None]) -> float:
    """CPU µs per call over _N calls."""
    t0 = time.process_time_ns()
    for _ in range(_N):
        fn()
    return (time.process_time_ns() - t0) / _N / 1000


def main() -> None:
    variants = {"before": _before(), "after": _after(), "after+stream": _after(stream=True),
                "after+refusal": _after(refusal=True)}
    for fn in variants.values():
        fn()  # first calls resolve the label children
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(_ROUNDS):
        for name, fn in variants.items():
            rounds[name].append(_time(fn))
    base = statistics.median(rounds["before"])
    print(f"{_ROUNDS} rounds x {_N} calls, CPU µs per request (median, spread)")
    for name, values in rounds.items():
        med = statistics.median(values)
        print(f"  {name:14} {med:6.2f}  ({min(values):.2f}-{max(values):.2f})  "
              f"{med - base:+.2f} vs before")


if __name__ == "__main__":
    main()
