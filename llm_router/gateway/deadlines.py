"""Deadlines for many short waits, checked on one shared clock tick.

A non-streamed request waits twice on its upstream: for the headers (``first_byte``)
and for the body (``total``). With ``asyncio.timeout`` every wait starts and cancels
an event-loop timer; under uvloop each is a libuv handle, and the profile of the
request path (bench/README.md) showed the two costing more than any other piece of
router logic. Here a wait only enters a bucket of a coarse timer wheel, and one task
walks the buckets every :data:`TICK` seconds while any wait is registered.

A deadline may fire up to one tick late. Timeouts are seconds to minutes, so that is
well inside what they promise; a wait that outlives its deadline ends exactly as with
``asyncio.timeout``: the task is cancelled and the ``with`` raises ``TimeoutError``.

Other per-request timers ride the same wheel (:class:`Timed`): a stream's watchdog
(``upstream_events``) and the wait before its first keepalive comment (``downstream``),
each of which was a loop timer per stream before.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType
from typing import Final, Protocol

__all__ = ["TICK", "Deadlines", "Guard", "TaskBound", "Timed"]

TICK: Final = 0.05  # seconds between checks: the most a deadline fires late


class Timed(Protocol):
    """An entry of the wheel: :meth:`fire` runs once a tick finds ``when`` passed.
    ``_bucket`` is the wheel's (-1 while not on it, and before ``fire`` is called)."""

    _bucket: int
    when: float

    def fire(self) -> None: ...


class TaskBound:
    """What a bound on a task's wait shares with ``asyncio.timeout``: when the wait is
    overdue the task is cancelled, and on leaving the wait that cancellation (and only
    that one: a cancel from elsewhere, such as the client going away, stays a
    cancellation) becomes ``TimeoutError``. Used by :class:`Guard` and by the stream
    watchdog in ``upstream_events``."""

    __slots__ = ("_cancelling", "_expired", "_task")

    def _bind(self) -> asyncio.Task[object]:
        task = asyncio.current_task()
        assert task is not None, "a deadline bounds a task's wait"
        self._task: asyncio.Task[object] = task
        self._cancelling = task.cancelling()
        self._expired = False
        return task

    def _expire(self) -> None:
        if not self._task.done():
            self._expired = True
            self._task.cancel()

    def _end(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        if self._expired:
            self._expired = False
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


class Guard(TaskBound):
    """One bounded wait: ``with deadlines.guard(when): await ...``; ``when`` is
    ``loop.time()`` based. :meth:`move` changes the deadline of the wait in progress;
    :meth:`beat` has the same entry of the wheel start something earlier in the wait.
    A caller that has the running ``loop`` passes it: asking asyncio for it costs a
    getpid() system call."""

    __slots__ = ("_beat", "_bucket", "_deadline", "_loop", "_owner", "when")

    def __init__(self, owner: Deadlines, when: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._owner = owner
        self.when = when  # where the entry goes on the wheel: the deadline, or the beat
        self._bucket = -1
        self._loop = loop
        self._beat: Callable[[], None] | None = None

    def beat(self, at: float, start: Callable[[], None]) -> None:
        """Call ``start`` once at ``at`` (``loop.time()`` based) if the wait lasts that
        long; set before the wait begins. A stream's wait for its upstream's headers
        starts the client's keepalive comments so, from the entry that bounds the wait
        rather than one of their own (a second add and discard on the wheel per stream)."""
        if at < self.when:  # else the deadline ends the wait first: nothing to start
            self._beat, self._deadline, self.when = start, self.when, at

    # __enter__ and __exit__ do what _bind + Deadlines.add and Deadlines.discard + _end
    # do, inline: two bounded waits per request made these eight calls.
    def __enter__(self) -> Guard:
        task = asyncio.current_task(self._loop)
        assert task is not None, "a deadline bounds a task's wait"
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        owner = self._owner
        slot = self._bucket = math.ceil(self.when / TICK)
        bucket = owner._buckets.get(slot)
        if bucket is None:
            bucket = owner._buckets[slot] = set()
        bucket.add(self)
        if owner._ticker is None:
            owner._ticker = asyncio.get_running_loop().create_task(owner._tick())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        buckets = self._owner._buckets
        bucket = buckets.get(self._bucket)
        if bucket is not None:
            bucket.discard(self)
            if not bucket:
                del buckets[self._bucket]
        self._bucket = -1
        if self._expired:
            self._end(exc_type, exc)

    def fire(self) -> None:
        beat = self._beat
        if beat is not None:  # the entry was at the beat's time: on to the deadline
            self._beat = None
            beat()
            if self._task.get_loop().time() < self._deadline:
                self.when = self._deadline
                self._owner.add(self)
                return
        self._expire()

    def move(self, when: float) -> None:
        """A new deadline for this wait (the body's, once the headers came)."""
        if self._beat is not None:
            self._deadline = when
            if when > self.when:
                return  # the beat comes first still, and the deadline after it
            self._beat = None  # the new deadline ends the wait before the beat is due
        if self._bucket < 0:
            self.when = when
            return
        self._owner.discard(self)
        self.when = when
        self._owner.add(self)


class Deadlines:
    """The wheel: buckets of waits by the tick their deadline falls in."""

    def __init__(self) -> None:
        self._buckets: dict[int, set[Timed]] = {}
        self._ticker: asyncio.Task[None] | None = None

    def guard(self, when: float) -> Guard:
        return Guard(self, when)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, entry: Timed) -> None:
        """Put ``entry`` on the wheel at its ``when`` (``loop.time()`` based); it must not
        be on it already."""
        slot = math.ceil(entry.when / TICK)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
        bucket.add(entry)
        entry._bucket = slot
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def discard(self, entry: Timed) -> None:
        """Take ``entry`` off the wheel, if it is on it."""
        if entry._bucket < 0:
            return
        bucket = self._buckets.get(entry._bucket)
        if bucket is not None:
            bucket.discard(entry)
            if not bucket:
                del self._buckets[entry._bucket]
        entry._bucket = -1

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._buckets:
                await asyncio.sleep(TICK)
                now = loop.time()
                due = [slot for slot in self._buckets if slot * TICK <= now]
                for slot in due:
                    for entry in self._buckets.pop(slot, ()):
                        entry._bucket = -1
                        entry.fire()
        finally:
            self._ticker = None
