"""One receiver's outbox: a bounded queue of events and the task that delivers them.

Events are delivered one at a time, in order. An attempt that fails with a connection
error, a timeout, a 5xx, a 408 or a 429 is retried after 1 s, 2 s, 4 s ... (capped at
``max_backoff_s``, with up to 10 % jitter) until it succeeds, ``max_attempts`` are used
or the event is ``max_age_s`` old; any other 4xx is the receiver refusing it (a failed
signature check, say), and it is not retried. The queue holds ``max_queue`` events; a
new one past that drops the oldest. Every outcome is counted in
``llm_router_webhook_deliveries_total{webhook,event,result}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from .. import __version__
from ..config.webhooks import Webhook, redact_webhook_url
from ..observe.metrics import Metrics
from .signing import EVENT_HEADER, ID_HEADER, SIGNATURE_HEADER, signature

__all__ = ["Event", "Outbox"]

log = logging.getLogger("llm_router.webhooks")

_RETRY_STATUSES: Final = frozenset({408, 429})
_FIRST_BACKOFF_S: Final = 1.0
_ERROR_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class Event:
    """One event, its JSON body encoded once (every attempt sends the same bytes)."""

    id: str
    type: str
    created: float  # Unix time it happened
    body: bytes


class Outbox:
    """The queue and delivery task of one configured receiver."""

    def __init__(self, hook: Webhook, metrics: Metrics) -> None:
        self.hook = hook
        self.metrics = metrics
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._depth = metrics.child(metrics.webhook_queue, hook.name)
        self.delivered = 0
        self.failed = 0  # rejected, expired or dropped
        self.last: dict[str, Any] | None = None  # the last attempt's outcome, for status
        self.last_delivered_at: float | None = None
        self._current: Event | None = None  # being delivered (not in _queue any more)
        self._handed_over = False

    @property
    def queued(self) -> int:
        return len(self._queue) + (1 if self._current is not None else 0)

    def put(self, event: Event) -> None:
        """Queue ``event`` (O(1)); past ``max_queue`` the oldest waiting one is dropped."""
        if len(self._queue) >= self.hook.max_queue:
            dropped = self._queue.popleft()
            self._count(dropped, "dropped")
            self.failed += 1
            log.warning("webhook %s: queue full (%d), dropped event %s (%s)", self.hook.name,
                        self.hook.max_queue, dropped.id, dropped.type)
        self._queue.append(event)
        self._depth.set(self.queued)
        self._wake.set()

    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._task = asyncio.create_task(self._run(), name=f"webhook {self.hook.name}")

    def hand_over(self) -> list[Event]:
        """Stop at once and give up every event not delivered yet, the one being sent
        first (a reload changed this receiver: its successor sends them). Cut mid-attempt,
        that one may reach the receiver twice, with the same id."""
        self._handed_over = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        events = [self._current] if self._current is not None else []
        events += self._queue
        self._current = None
        self._queue.clear()
        return events

    def adopt(self, events: list[Event]) -> None:
        """Send ``events`` (a predecessor's, :meth:`hand_over`) before any new one."""
        self._queue.extendleft(reversed(events))
        self._depth.set(self.queued)
        self._wake.set()

    async def stop(self, grace_s: float) -> int:
        """Give the queue up to ``grace_s`` to drain, then stop; returns what is left."""
        task, self._task = self._task, None
        if task is None:
            return len(self._queue)
        if self.queued:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), grace_s)
        left = self.queued  # the one being sent included: cancelling it loses it
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return left

    async def _drained(self) -> None:
        while self.queued:
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event = self._current = self._queue.popleft()
                try:
                    await self._deliver(event)
                except Exception:  # a bug must not stop this receiver's deliveries for good
                    log.exception("webhook %s: delivering event %s failed", self.hook.name,
                                  event.id)
                    self._finish(event, "expired", time.time())
                finally:
                    if not self._handed_over:  # else the gauge is the successor's
                        self._current = None
                        self._depth.set(self.queued)

    async def _deliver(self, event: Event) -> None:
        hook = self.hook
        attempt = 0
        while True:
            attempt += 1
            status, error = await self._attempt(event, attempt)
            now = time.time()
            self.last = {"event": event.type, "id": event.id, "at": now, "attempt": attempt,
                         "status": status, "error": error}
            if error is None and 200 <= status < 300:
                self._finish(event, "delivered", now)
                return
            if error is None and status < 500 and status not in _RETRY_STATUSES:
                log.warning("webhook %s refused event %s (%s) with %d; not retried",
                            hook.name, event.id, event.type, status)
                self._finish(event, "rejected", now)
                return
            wait = min(hook.max_backoff_s, _FIRST_BACKOFF_S * 2 ** (attempt - 1))
            wait *= 1 + random.random() * 0.1
            if attempt >= hook.max_attempts or now + wait - event.created > hook.max_age_s:
                log.warning("webhook %s: event %s (%s) given up after %d attempt(s): %s",
                            hook.name, event.id, event.type, attempt, error or f"HTTP {status}")
                self._finish(event, "expired", now)
                return
            self._count(event, "retry")
            await asyncio.sleep(wait)

    async def _attempt(self, event: Event, attempt: int) -> tuple[int, str | None]:
        """(status, None) for an answer, (0, why) for no answer."""
        assert self._session is not None
        hook = self.hook
        headers = {"Content-Type": "application/json",
                   "User-Agent": f"llm-router/{__version__} webhooks",
                   EVENT_HEADER: event.type, ID_HEADER: event.id,
                   "X-Router-Delivery-Attempt": str(attempt),
                   SIGNATURE_HEADER: signature(hook.secret, int(time.time()), event.body)}
        try:
            async with self._session.post(hook.url, data=event.body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=hook.timeout_s),
                                          allow_redirects=False) as resp:
                await resp.read()
                return resp.status, None
        except TimeoutError:
            return 0, f"no answer within {hook.timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            # The exception text may quote the URL, credentials and query included.
            return 0, type(exc).__name__

    def _finish(self, event: Event, result: str, now: float) -> None:
        self._count(event, result)
        if result == "delivered":
            self.delivered += 1
            self.last_delivered_at = now
        else:
            self.failed += 1

    def _count(self, event: Event, result: str) -> None:
        self.metrics.child(self.metrics.webhook_deliveries, self.hook.name, event.type,
                           result).inc()

    def status(self) -> dict[str, Any]:
        """For /admin/status: never the secret, the URL without credentials or query."""
        last = dict(self.last) if self.last else None
        if last is not None:
            last["at"] = _iso(last["at"])
            if last["error"]:
                last["error"] = str(last["error"])[:_ERROR_CHARS]
        return {"name": self.hook.name, "url": redact_webhook_url(self.hook.url),
                "events": list(self.hook.events), "queued": self.queued,
                "delivered": self.delivered, "failed": self.failed,
                "last_delivered_at": _iso(self.last_delivered_at)
                if self.last_delivered_at is not None else None, "last_attempt": last}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
