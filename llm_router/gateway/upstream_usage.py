"""Upstream token counts the router cannot trust: counted at its own estimate instead.

:mod:`hub.usage` reads every count an upstream reports and marks those out of range
(``Usage.rejected``). Before anything is counted, the request path hands the usage to
:meth:`RejectedUsage.settle`, which replaces each rejected count by the router's
estimate (the prompt: a token per 4 bytes of request; the completion: what the request
was expected to use, or one token per stream event relayed when more), adds one to
``llm_router_upstream_usage_rejected_total{provider}`` and logs a WARNING naming the
provider: the first time, then at most once a minute per provider with how many more
there were, so a broken upstream cannot flood the log (docs/observability.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from ..hub.usage import CACHED, COMPLETION, PROMPT, TOKEN_COUNT_LIMIT, Usage, bounded_count
from ..observe.metrics import Metrics

__all__ = ["RejectedUsage"]

log = logging.getLogger("llm_router.usage")

_LOG_EVERY_S: Final = 60.0


class RejectedUsage:
    """Replaces rejected counts, counts and logs them (one per :class:`RouterState`)."""

    __slots__ = ("_clock", "_logged", "_metrics", "_unlogged")

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._logged: dict[str, float] = {}  # provider → when its last WARNING went out
        self._unlogged: dict[str, int] = {}  # provider → rejections since then

    def settle(self, provider: str, usage: Usage, prompt_estimate: int,
               completion_estimate: int) -> Usage:
        """``usage`` as it may be counted: itself when nothing was rejected."""
        if not usage.rejected:
            return usage
        bad = usage.rejected
        self._metrics.child(self._metrics.usage_rejected, provider).inc()
        self._warn(provider)
        return Usage(bounded_count(prompt_estimate) if bad & PROMPT else usage.prompt,
                     bounded_count(completion_estimate) if bad & COMPLETION
                     else usage.completion,
                     0 if bad & CACHED else usage.cached, usage.reasoning)

    def _warn(self, provider: str) -> None:
        now = self._clock()
        last = self._logged.get(provider)
        if last is not None and now - last < _LOG_EVERY_S:
            self._unlogged[provider] = self._unlogged.get(provider, 0) + 1
            return
        self._logged[provider] = now
        more = self._unlogged.pop(provider, 0)
        log.warning("upstream '%s' reported token counts that are not whole numbers from 0 to "
                    "%d; counted at the router's estimate instead%s", provider,
                    TOKEN_COUNT_LIMIT, f" ({more} more such answers since the last such warning)"
                    if more else " (said at most once a minute per provider)")
