"""An upstream's SSE answer as batches of raw events, under one watchdog per stream.

Two costs measured on the stream path (bench/README.md) shaped this module. Events that
arrive in one socket read are yielded together, so the relay sends them in one write
(one syscall, one compress flush) instead of one per event: they were ready at the same
instant, so no event waits for another. And the waits for upstream bytes are bounded by
one entry per stream on the shared wheel of :mod:`.deadlines`, re-armed lazily, instead
of an ``asyncio.timeout`` per read (or a loop timer per stream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from ..hub.sse import EventParser, EventTooLarge, SSEParser
from ..providers import ResponseTooLarge, UpstreamResponse
from .deadlines import Deadlines, TaskBound

__all__ = ["UpstreamEvents"]


class _Watchdog(TaskBound):
    """Bounds every wait for upstream bytes of one stream, from one entry on the shared
    wheel of :mod:`.deadlines`.

    Used as ``with dog: await read()``. A wait may last until the first event is due
    (before any event came), else ``idle`` from the first wait after the last complete
    event (:attr:`progress`), and never past the stream's ``deadline``: bytes that
    trickle in without completing an event do not hold a stream open. The entry is not
    moved on every read: when it fires early (the stream made progress meanwhile) it
    re-arms itself for the current wait, so a busy stream costs one bucket move per
    ``idle`` period, and a short one an add and a discard. An overdue wait ends as with
    ``asyncio.timeout`` (:class:`deadlines.TaskBound`), at most one tick late.

    The same entry starts the client's keepalive comments (:meth:`beat`) if the first
    event is late: the wait for it needs no entry of its own.
    """

    __slots__ = ("_beat", "_beat_at", "_bucket", "_deadline", "_due", "_first_due", "_idle",
                 "_loop", "_waiting", "_wheel", "progress", "started", "when")

    def __init__(self, wheel: Deadlines, first_due: float, idle: float,
                 deadline: float) -> None:
        """``first_due`` and ``deadline`` are ``time.perf_counter()`` times."""
        self._wheel = wheel
        # The task's loop, not get_running_loop(): in Python 3.11 that checks getpid(), a
        # system call, and _bind's current_task() has made one already.
        self._loop = self._bind().get_loop()
        # The loop's clock may differ from perf_counter (uvloop keeps its own).
        shift = self._loop.time() - time.perf_counter()
        self._first_due = first_due + shift
        self._deadline = deadline + shift
        self._idle = idle
        self._due = 0.0
        self._waiting = False
        self.started = False  # an event came: from now on waits are bounded by idle
        self.progress = False  # an event completed since the idle clock last started
        self.when = _NEVER  # where the entry is on the wheel (_NEVER: not on it)
        self._bucket = -1
        self._beat: Callable[[], None] | None = None
        self._beat_at = _NEVER

    def beat(self, delay: float, start: Callable[[], None]) -> None:
        """Call ``start`` in ``delay`` seconds, if no event came by then."""
        self._beat, self._beat_at = start, self._loop.time() + delay

    def __enter__(self) -> None:
        # The idle clock starts when the router asks for more, so a slow client's
        # backpressure is not blamed on the upstream.
        if not self.started:
            due = self._due = min(self._first_due, self._deadline)
            if self._beat is not None and self._beat_at < due:
                due = self._beat_at
        elif self.progress:
            due = self._due = min(self._loop.time() + self._idle, self._deadline)
            self.progress = False
        else:
            due = self._due
        self._waiting = True
        if due < self.when:
            self._arm(due)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._waiting = False
        if self._expired:
            self._end(exc_type, exc)

    def close(self) -> None:
        if self._bucket >= 0:
            self._wheel.discard(self)
        self.when = _NEVER

    def _arm(self, when: float) -> None:
        wheel = self._wheel
        if self._bucket >= 0:
            wheel.discard(self)
        self.when = when
        wheel.add(self)

    def fire(self) -> None:
        """The wheel's tick reached :attr:`when` (and took the entry off)."""
        self.when = _NEVER
        if self._task.done():
            return
        now = self._loop.time()
        beat = self._beat
        if beat is not None and not self.started and now >= self._beat_at:
            self._beat = None
            beat()
        if not self._waiting:
            # Between reads: the next wait cannot end sooner than idle from now (and
            # __enter__ re-arms sooner if the deadline says so).
            self._arm(now + self._idle)
        elif now < self._due:
            # Progress since the entry was set, or the comments' start came first.
            self._arm(self._due if self._beat is None or self.started
                      else min(self._due, self._beat_at))
        else:
            self._expire()


_NEVER: Final = float("inf")


class UpstreamEvents:
    """An upstream's answer as batches of raw events (SSE, unless ``parser`` splits
    another framing), those of one read together (never an empty batch): the first by
    ``first_due``, then never more than ``idle`` between complete events, all by
    ``deadline`` (``perf_counter`` times); past any of these, ``TimeoutError``. An event
    larger than ``max_event`` bytes raises :class:`ResponseTooLarge`.

    With ``runs`` (an SSE answer to a relay that reads joined events, the OpenAI
    passthrough), a batch of regular events comes as one run of joined bytes and their
    number (:meth:`SSEParser.feed_run`), else as a list. An async iterator class, not an async
    generator: the event loop tracks every async generator (a weak set, a finalizer),
    which showed in stream profiles. :meth:`close` (or :meth:`aclose`) stops the
    watchdog. ``deadlines`` is the wheel the watchdog rides (the router's shared one; a
    new one if None).

    The watchdog is made at the first wait: a batch whose bytes have arrived already
    (:meth:`ready`; often the whole answer, when the upstream sends it at once) has no
    wait to bound, and making, arming and discarding the watchdog for it was a visible
    part of a short stream's own cost.
    """

    __slots__ = ("_bounds", "_chunks", "_dog", "_ended", "_feed", "_parser", "_ready",
                 "_resp", "_started")

    def __init__(self, resp: UpstreamResponse, first_due: float, idle: float,
                 deadline: float, max_event: int, parser: EventParser | None = None,
                 *, runs: bool = False, deadlines: Deadlines | None = None) -> None:
        if parser is None:
            parser = SSEParser(max_event)
        self._parser = parser
        self._feed: Callable[[bytes], tuple[bytes, int] | list[bytes]] = (
            parser.feed_run if runs and isinstance(parser, SSEParser) else parser.feed)
        self._resp = resp
        self._chunks = chunks = resp.chunks().__aiter__()
        # The read of what arrived without a wait (HTTP answers have one).
        self._ready: Callable[[], bytes] | None = getattr(chunks, "ready", None)
        self._dog: _Watchdog | None = None  # made at the first wait (_watchdog)
        self._bounds = (deadlines, first_due, idle, deadline)
        self._started = False  # an event came before the watchdog was made
        self._ended = False

    def _watchdog(self) -> _Watchdog:
        deadlines, first_due, idle, deadline = self._bounds
        dog = self._dog = _Watchdog(deadlines if deadlines is not None else Deadlines(),
                                    first_due, idle, deadline)
        # Events read before (ready) start the idle clock at this first wait, as they
        # would have with the watchdog made at the start.
        dog.started = dog.progress = self._started
        return dog

    def beat(self, delay: float, start: Callable[[], None]) -> None:
        """Call ``start`` in ``delay`` seconds if the first event has not come by then
        (the client's keepalive comments, :meth:`Downstream.keepalive`)."""
        (self._dog or self._watchdog()).beat(delay, start)

    def ready(self) -> tuple[bytes, int] | list[bytes] | None:
        """The next batch, if the bytes it needs arrived already: read without a wait
        (nothing to bound, nor to keep the client's connection alive for); None when
        it takes a wait (bytes read here that do not complete an event are kept, and
        :meth:`__anext__` goes on from them)."""
        ready = self._ready
        if ready is None or self._ended:
            return None
        chunk = ready()
        if not chunk:
            return None
        try:
            return self._take(chunk)
        except BaseException:
            self._end()
            raise

    def _take(self, chunk: bytes) -> tuple[bytes, int] | list[bytes] | None:
        """The events ``chunk`` completes, comments left out; None if it completes none.
        A complete comment shows the upstream alive (idle restarts), but it is not an
        answer: it must not commit the stream, and the router sends its own keepalives
        (": OPENROUTER PROCESSING"). A run holds none."""
        try:
            events = self._feed(chunk)
        except EventTooLarge as exc:
            raise ResponseTooLarge(str(exc)) from None
        if not events:
            return None
        dog = self._dog
        if dog is not None:
            dog.progress = True
        if isinstance(events, tuple):
            batch: tuple[bytes, int] | list[bytes] = events
        else:
            # (_is_comment's first test inlined: it runs for every event.)
            batch = [event for event in events
                     if event[:1] not in _COMMENT_START or not _is_comment(event)]
            if not batch:
                return None
        self._started = True
        if dog is not None:
            dog.started = True
        return batch

    def __aiter__(self) -> UpstreamEvents:
        return self

    async def __anext__(self) -> tuple[bytes, int] | list[bytes]:
        if self._ended:
            raise StopAsyncIteration
        dog, chunks = self._dog or self._watchdog(), self._chunks
        try:
            while True:
                with dog:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                batch = self._take(chunk)
                if batch is not None:
                    return batch
        except BaseException:
            self._end()
            raise
        self._end()
        tail = self._parser.tail()
        if tail.strip():
            return [tail + b"\n\n"]
        raise StopAsyncIteration

    def _end(self) -> None:
        self._ended = True
        if self._dog is not None:
            self._dog.close()

    def unfinished(self) -> list[bytes]:
        """After the stream broke (cut, timed out, too large) or its reader stopped: the
        events a translating response still owes its relay, as SSE events; [] for most.
        Gemini's (:class:`~llm_router.providers.gemini.wire.TranslatedResponse`) owes
        the usage chunk of the running usage reported so far, which its translator
        holds: its generator, cancelled by a timeout or left by the reader, cannot give
        it."""
        owed = getattr(self._resp, "unfinished", None)
        if owed is None:
            return []
        raw: bytes = owed()
        return [e + b"\n\n" for e in raw.split(b"\n\n") if e]

    def close(self) -> None:
        """Stop the watchdog (a method, not a coroutine: nothing to wait for)."""
        self._end()

    async def aclose(self) -> None:
        self._end()


_COMMENT_START = (b":", b"\n")


def _is_comment(event: bytes) -> bool:
    """Whether every line of the event is a comment (``: ...``)."""
    if event[:1] not in _COMMENT_START:
        return False  # the usual event: its first line is a field, so not all comments
    return all(line.startswith(b":") for line in event.split(b"\n") if line)
