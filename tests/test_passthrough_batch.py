"""OpenAIPassthrough.feed_batch and feed_run: what feeding each event in turn would send
and count.

The batch read skips the fields of events that cannot change or be counted; whatever
the events, the bytes out, the usage, ``done`` and ``failure`` must equal the per-event
path's. The same holds for a whole upstream answer read as runs of joined events
(``UpstreamEvents(runs=True)``, ``SSEParser.feed_run``), however it is cut into reads,
with comments, blank lines and CR line ends among the events.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from llm_router.dialects.openai import OpenAIPassthrough
from llm_router.gateway.upstream_events import UpstreamEvents
from llm_router.hub.sse import SSEParser
from llm_router.providers import ResponseTooLarge


def _chunk(rng: random.Random) -> bytes:
    kind = rng.randrange(13)
    body: dict[str, object] = {"id": "c1", "object": "chat.completion.chunk",
                               "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    if kind == 0:
        return b"data: [DONE]\n\n"
    if kind == 1:
        body["usage"] = {"prompt_tokens": rng.randrange(50), "completion_tokens": 3,
                         "total_tokens": 9}
        if rng.random() < 0.5:
            body["choices"] = []
    elif kind == 2:
        body = {"error": {"message": "boom", "type": "server_error"}}
    elif kind == 3:  # text that only looks like the markers
        body["choices"] = [{"index": 0, "delta": {"content": 'say "error" [DONE] "usage":1'}}]
    elif kind == 4:
        return b'data: {"choices":[],"usage": {"prompt_tokens":2,"completion_tokens":1}}\n\n'
    elif kind == 5:
        return b'data: {"choices":[{"delta":{}}],"usage": null}\n\n'
    elif kind == 6:
        return b'event: x\ndata: {"usage":\ndata: {"prompt_tokens":1}}\n\n'
    elif kind == 7:
        return b'data: {"usage":nul}\n\n'
    elif kind == 8:  # [DONE] as a second data line is not the end
        return rng.choice([b'data: a\ndata: [DONE]\n\n', b'event: x\ndata: [DONE]\n\n'])
    else:
        body["usage"] = None
    data = orjson.dumps(body)
    return b"data: " + data + b"\n\n"


@pytest.mark.parametrize("include_usage", [True, False])
def test_batch_equals_event_by_event(include_usage: bool) -> None:
    rng = random.Random(27)
    for _ in range(3000):
        batches = [[_chunk(rng) for _ in range(rng.randrange(1, 8))]
                   for _ in range(rng.randrange(1, 4))]
        one, many = OpenAIPassthrough(include_usage), OpenAIPassthrough(include_usage)
        for batch in batches:
            expected = b"".join(one.feed(raw) for raw in batch)
            assert many.feed_batch(batch) == expected, batch
            assert (_counts(many), many.done, many.failure) == (_counts(one), one.done,
                                                                  one.failure), batch


def _counts(relay: OpenAIPassthrough) -> tuple[object, ...]:
    return tuple(getattr(relay.usage, name) for name in relay.usage.__slots__)


def test_plain_chunks_pass_as_one_object() -> None:
    batch = [b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'] * 3
    relay = OpenAIPassthrough(False)
    assert relay.feed_batch(batch) == b"".join(batch)
    assert not relay.done and relay.failure is None


class _Reads:
    """An upstream answer that arrives in the given reads (the UpstreamResponse shape)."""

    def __init__(self, reads: list[bytes]) -> None:
        self.status = 200
        self.headers = {"Content-Type": "text/event-stream"}
        self._reads = reads

    async def chunks(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read


def _wire(rng: random.Random) -> bytes:
    out: list[bytes] = []
    for _ in range(rng.randrange(1, 30)):
        kind = rng.randrange(20)
        if kind == 0:
            out.append(b": OPENROUTER PROCESSING\n\n")  # a comment event, dropped
        elif kind == 1:
            out.append(b"\n")  # a blank line between events
        elif kind == 2:  # a comment line inside an event, kept
            out.append(b'data: {"choices":[]}\n: note\n\n')
        else:
            out.append(_chunk(rng))
    wire = b"".join(out)
    if rng.random() < 0.1:
        wire = wire.replace(b"\n", b"\r\n")
    return wire


_RUNS: list[int] = []  # runs relayed: the joined path was taken, not only its fallback


async def _relay(reads: list[bytes], runs: bool, include_usage: bool, max_event: int
                 ) -> tuple[object, ...]:
    relay = OpenAIPassthrough(include_usage)
    now = time.perf_counter()
    events = UpstreamEvents(_Reads(reads), now + 60, 60, now + 60, max_event,
                            SSEParser(max_event), runs=runs)
    sent: list[bytes] = []
    seen = 0
    error = None
    try:
        async for batch in events:
            if isinstance(batch, tuple):
                _RUNS.append(1)
                seen += batch[1]
                sent.append(relay.feed_run(batch[0]))
            else:
                seen += len(batch)
                sent.extend(relay.feed(raw) for raw in batch)
            if relay.done or relay.failure is not None:
                break
    except ResponseTooLarge as exc:
        error = str(exc)
    finally:
        await events.aclose()
    return b"".join(sent), seen, _counts(relay), relay.done, relay.failure, error


@pytest.mark.parametrize("include_usage", [True, False])
async def test_runs_equal_event_by_event_over_any_reads(include_usage: bool) -> None:
    rng = random.Random(2027)
    _RUNS.clear()
    for _ in range(1500):
        wire = _wire(rng)
        cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randrange(4))))
        reads = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        max_event = rng.choice([64, 300, 1 << 20])
        expected = await _relay(reads, False, include_usage, max_event)
        assert await _relay(reads, True, include_usage, max_event) == expected, reads
    assert len(_RUNS) > 500


async def test_long_reads_of_json_events_equal_event_by_event() -> None:
    """Reads of many ``data: {...}`` events (as OpenAI-compatible upstreams send an
    unpaced answer) are counted whole by SSEParser.feed_run; the odd blank line, comment,
    multi-line event or cut inside an event must still give the per-event result."""
    rng = random.Random(1227)
    odd = [b"\n", b": ping\n\n", b'event: x\ndata: {"a":1}\n\n', b"data: {}\n\n\n",
           b'data: {"a":\ndata: 1}\n\n', b'data: {"a":1}\nid: 7\n\n']  # (one event each)
    taken = 0
    for _ in range(600):
        events = [b"data: " + orjson.dumps({"id": "c", "choices": [
            {"index": 0, "delta": {"content": "w" * rng.randrange(1, 40)}}],
            "usage": None}) + b"\n\n" for _ in range(rng.randrange(6, 40))]
        if rng.random() < 0.3:
            events.insert(rng.randrange(len(events)), rng.choice(odd))
        if rng.random() < 0.5:
            events.append(b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,'
                          b'"completion_tokens":%d,"total_tokens":9}}\n\n' % len(events))
        if rng.random() < 0.8:
            events.append(b"data: [DONE]\n\n")
        wire = b"".join(events)
        cuts = sorted(rng.sample(range(1, len(wire)), rng.randrange(3)))
        reads = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        include_usage = rng.random() < 0.5
        _RUNS.clear()
        expected = await _relay(reads, False, include_usage, 1 << 20)
        assert await _relay(reads, True, include_usage, 1 << 20) == expected, reads
        taken += bool(_RUNS)
    assert taken > 500


class _Arrived:
    """An upstream answer whose ``first`` bytes have arrived when the relay starts (read
    by ``ready``, as HTTPResponse's chunks offer) and whose later reads each take
    ``delay`` seconds."""

    def __init__(self, first: bytes, later: list[bytes], delay: float) -> None:
        self._first, self._later, self._delay = first, later, delay

    def chunks(self) -> _Arrived:
        return self

    def __aiter__(self) -> _Arrived:
        return self

    def ready(self) -> bytes:
        data, self._first = self._first, b""
        return data

    async def __anext__(self) -> bytes:
        if not self._later:
            raise StopAsyncIteration
        await asyncio.sleep(self._delay)
        return self._later.pop(0)


def _events(resp: _Arrived, first_due: float, idle: float, runs: bool) -> UpstreamEvents:
    now = time.perf_counter()
    return UpstreamEvents(resp, now + first_due, idle, now + 60, 1 << 20, runs=runs)  # type: ignore[arg-type]


@pytest.mark.parametrize("runs", [True, False])
async def test_events_already_arrived_come_without_a_wait_and_the_rest_follows(
        runs: bool) -> None:
    one, two = b'data: {"a":1}\n\n', b'data: {"b":2}\n\n'
    events = _events(_Arrived(one + two[:9], [two[9:]], 0.01), 60, 60, runs)
    first = events.ready()
    assert first == ((one, 1) if runs else [one])
    assert events.ready() is None  # nothing more has arrived
    assert await events.__anext__() == ((two, 1) if runs else [two])  # the kept part, ended
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()
    # Only part of an event (or a comment) arrived: nothing yet, and the wait goes on from it.
    events = _events(_Arrived(b": hi\n\n" + one[:5], [one[5:]], 0.01), 60, 60, runs)
    assert events.ready() is None
    assert await events.__anext__() == ((one, 1) if runs else [one])
    events.close()


async def test_a_wait_after_events_already_arrived_is_bounded_by_idle() -> None:
    # The first events were read without a watchdog; the first wait is still bounded, by
    # idle from then on (as after any event), not by the first event's due time.
    events = _events(_Arrived(b'data: {"a":1}\n\n', [b""], 30), 60, 0.2, True)
    assert events.ready() is not None
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        await events.__anext__()
    assert 0.2 <= time.perf_counter() - t0 < 2
    # Nothing complete arrived: the first wait is bounded by the first event's due time.
    events = _events(_Arrived(b'data: {"a"', [b""], 30), 0.2, 60, True)
    assert events.ready() is None
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        await events.__anext__()
    assert 0.2 <= time.perf_counter() - t0 < 2
