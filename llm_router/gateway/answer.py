"""An upstream's answer on its way to the client: read whole or relayed as a stream,
translated (:mod:`.relay`), redacted, and accounted.

A whole answer is read within ``total`` and sent as one body. A stream is committed
with its first event (:mod:`.downstream`; events that open it with no part of the
answer, Anthropic's ``message_start`` and Azure's filter chunks, are held for the next:
:func:`_past_lead`), written one upstream read at a time, and
ended at its terminal event; a stream cut short still counts what it used
(:func:`_account`). An upstream failure before the first event is an
:class:`AttemptFailure` (the attempt loop may fail over); after it, only in-band.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from decimal import Decimal
from typing import Final

import orjson
from aiohttp import web

from ..config import Config
from ..dialects.openai import filter_only
from ..hub.sse import event_fields
from ..hub.stream import STREAM_ERROR, Relay, client_fault, split_events, throttled
from ..hub.usage import Usage
from ..ledger.accounting import price_for, priced_usd
from ..ledger.usage import CounterKey
from ..observe.metrics import Series
from ..providers import UPSTREAM_ERRORS, AttemptFailure, UpstreamResponse, failure_from_exception
from .answer_stream import AnswerStream
from .attempt import Attempt, pin_response, router_header_items, router_headers
from .compression import MIN_COMPRESS_BYTES, compress_body
from .deadlines import Guard
from .downstream import Downstream
from .model_request import ModelRequest
from .relay import (
    answer_events,
    answer_usage,
    make_relay,
    passthrough_usage,
    run_feed,
    translate_answer,
)
from .router_state import RouterState
from .routing import Candidate
from .upstream_events import UpstreamEvents

__all__ = ["answer_as_stream", "relay_body", "relay_stream"]


async def relay_body(req: ModelRequest, att: Attempt, resp: UpstreamResponse
                      ) -> web.Response:
    state, ex, cand, up = req.state, req.ex, att.cand, att.up
    limit = req.cfg.upstream_limits.max_response_bytes
    try:
        raw = resp.whole(limit)  # already here: no wait to bound
        if raw is None:
            # total counts from the attempt's start, the wait for headers included.
            with Guard(state.deadlines, att.sent_loop + cand.provider.timeouts.total):
                raw = await resp.read(limit)
    except UPSTREAM_ERRORS as exc:
        raise failure_from_exception(exc, cand.provider.name) from None
    ex.upstream_s += time.perf_counter() - att.sent
    # Passed on untouched: read only its usage if that is cheap (passthrough_usage).
    usage = passthrough_usage(up, raw) if ex.client == up and req.turn is None else None
    out: bytes | None = None
    if req.turn is not None:
        try:
            out, usage = await req.turn.answer(up, att.ptype, raw, cand)
            await pin_response(req, cand)
        except (ValueError, KeyError, TypeError):
            raise AttemptFailure("bad_response", f"upstream '{cand.provider.name}' sent an "
                                 "answer that is not a valid JSON response") from None
    elif usage is None:
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError
            out = translate_answer(ex.client, up, att.ptype, doc, ex.answer_model)
        except (ValueError, KeyError, TypeError):
            raise AttemptFailure("bad_response", f"upstream '{cand.provider.name}' sent an "
                                 "answer that is not a valid JSON response") from None
        usage = answer_usage(ex.client, up, att.ptype, doc)
    _account(req, att, usage)
    payload = state.redactor.bytes(raw if out is None else out)
    if req.fill is not None:  # a cache miss: this whole, successful answer is kept
        req.fill.keep(payload, cand, Usage(ex.prompt_tokens, ex.completion_tokens,
                                           usage.cached))
    if att.span is not None and req.state.tracing is not None:
        req.state.tracing.record_output(att.span, payload)
    ex.status = 200
    # The headers as one list: the response's header map is built from it in one call.
    body = payload
    coding = req.coding
    if coding is not None and len(payload) >= MIN_COMPRESS_BYTES:
        body = compress_body(coding, payload)
        headers = [("Content-Type", "application/json"), ("Content-Encoding", coding),
                   ("Vary", "Accept-Encoding")]
    else:
        headers = [("Content-Type", "application/json")]
    if ex.cache or ex.dropped_tools:
        headers += router_header_items(ex, cand)
    else:  # router_header_items' usual case, inline
        headers += (("X-Router-Group", ex.group), ("X-Router-Provider", cand.provider.name),
                    ("X-Router-Model", cand.member.model), ("X-Router-Key", cand.key.label),
                    ("X-Router-Attempts", str(ex.attempts)))
    elapsed = time.perf_counter() - ex.t0
    overhead = elapsed - ex.upstream_s
    usd = ex.cost or 0.0  # never -0.0 (falsy), which would share 0.0's entry
    cost = _COST_TEXT.get(usd)
    if cost is None:
        cost = _cost_text(usd)
    headers += (("X-Router-Latency-Ms", f"{elapsed * 1000:.1f}"),
                ("X-Router-Overhead-Ms", f"{overhead * 1000 if overhead > 0.0 else 0.0:.3f}"),
                ("X-Router-Cost-USD", cost))
    ex.bytes_out = len(body)
    return web.Response(status=200, body=body, headers=headers)


# X-Router-Cost-USD's text by cost: answers of the same size cost the same, and writing
# a float's digits (repr, and Decimal below 1e-4) was about 8k instructions an answer.
_COST_TEXT: dict[float, str] = {}
_MAX_COST_TEXTS: Final = 1024


def _cost_text(usd: float) -> str:
    """The cost in plain decimal notation with the shortest digits that parse back to the
    same float, so the headers of many answers sum to exactly what /v1/usage and the
    access log count (8 fixed decimals lost up to 5e-9 USD an answer). repr is that
    already unless it uses an exponent (below 1e-4, from 1e16): then Decimal writes it.
    Kept in :data:`_COST_TEXT`, emptied when full."""
    text = repr(usd)
    if "e" in text:
        text = f"{Decimal(text):f}"
    if len(_COST_TEXT) >= _MAX_COST_TEXTS:
        _COST_TEXT.clear()
    _COST_TEXT[usd] = text
    return text


async def answer_as_stream(req: ModelRequest, att: Attempt, resp: UpstreamResponse
                            ) -> UpstreamResponse:
    """The events of a whole answer (answer_stream.py); ``bad_response`` if it is not a
    valid completion of the kind asked for."""
    name = att.cand.provider.name
    try:
        with req.state.deadlines.guard(att.sent_loop + att.cand.provider.timeouts.total):
            raw = await resp.read(req.cfg.upstream_limits.max_response_bytes)
    except UPSTREAM_ERRORS as exc:
        raise failure_from_exception(exc, name) from None
    events = answer_events(att.up, req.ex.kind, raw) if req.turn is None else None
    if events is None:
        raise AttemptFailure("bad_response", f"upstream '{name}' answered a stream request "
                             "without a stream, and not with a valid completion either")
    return AnswerStream(events)


async def relay_stream(req: ModelRequest, att: Attempt, resp: UpstreamResponse,
                        down: Downstream) -> web.StreamResponse:
    t = att.cand.provider.timeouts
    relay = make_relay(req.ex.client, att.up, att.ptype, req.ex.answer_model,
                          req.include_usage) \
        if req.turn is None else req.turn.relay(att.up, att.ptype)
    max_event = req.cfg.upstream_limits.max_event_bytes
    feed_run = run_feed(relay)
    events = UpstreamEvents(resp, att.sent + t.first_byte, t.idle, att.sent + t.total,
                            max_event, att.ptype.events(max_event), runs=feed_run is not None,
                            deadlines=req.state.deadlines)
    try:
        return await _relay_events(req, att, relay, feed_run, events, down)
    finally:
        events.close()  # stops its watchdog now, even if the client went away


async def _relay_events(req: ModelRequest, att: Attempt, relay: Relay,
                        feed_run: Callable[[bytes], bytes] | None, events: UpstreamEvents,
                        down: Downstream) -> web.StreamResponse:
    state, cfg, ex, cand = req.state, req.cfg, req.ex, att.cand
    provider = cand.provider

    def headers(out: web.StreamResponse) -> None:
        router_headers(out, ex, cand)

    # Wait for the first event before committing, so a failure here can still fail over;
    # a long wait commits early to send keepalive comments through idle-timeout proxies
    # (started by the events' watchdog, which bounds this wait already). Often the first
    # events are here already (events.ready): then there is no wait to keep alive.
    beat = None
    try:
        batch = events.ready()
        if batch is None:
            beat = down.keepalive(ex, headers)
            delay = beat.delay()
            if delay is not None:
                events.beat(delay, beat.fire)
            batch = await events.__anext__()
    except StopAsyncIteration:
        raise AttemptFailure("closed", f"upstream '{provider.name}' closed the stream "
                             "before sending anything") from None
    except UPSTREAM_ERRORS as exc:
        raise failure_from_exception(exc, provider.name) from None
    finally:
        if beat is not None and beat.beating:
            await beat.stop()
    # The first event after those that open a stream with no part of the answer in them
    # (held unsent: _past_lead), when it opened with some: the stream is judged on it.
    lead = None
    if down.out is None:
        if att.up == "anthropic":
            # (A run's first bytes are its first event's.) Usually the event after
            # message_start came in the same read: then there is nothing to wait for.
            if _anthropic_lead(batch[0]):
                lead = _lead(batch, _anthropic_lead)
                if lead is None:
                    batch, lead = await _past_lead(req, att, events, batch, down, headers,
                                                   _anthropic_lead, "message_start")
        elif att.ptype.opens_with_filter_chunks and att.up == "openai" \
                and _filter_first(batch):
            batch, lead = await _past_lead(req, att, events, batch, down, headers,
                                           filter_only, "content-filter results")
    now = time.perf_counter()
    ex.upstream_s += now - att.sent
    series = _stream_series(req, provider.name, cand.member.model)
    first = True  # the first batch is being read: the commit and TTFT are decided on it
    seen = 0
    answered = False  # a Responses answer was stored (and its id pinned)
    failure: str | None = None
    finished = False  # the client's response was ended with the last events
    try:
        while True:
            if isinstance(batch, tuple):  # regular events joined (UpstreamEvents' runs)
                assert feed_run is not None
                seen += batch[1]
                sent = feed_run(batch[0])
            elif feed_run is not None:
                seen += len(batch)
                sent = feed_run(batch[0] if len(batch) == 1 else b"".join(batch))
            else:
                parts: list[bytes] = []
                for raw in batch:
                    seen += 1
                    data = relay.feed(raw)
                    if data:
                        parts.append(data)
                sent = parts[0] if len(parts) == 1 else b"".join(parts)
            if first:
                first = False
                if relay.failure is None:
                    opens_with_error = False
                else:
                    if lead is None:
                        lead = _first_event(batch)
                    opens_with_error = b'"error"' in lead or lead.startswith(b"event: error")
                if down.out is None:  # committed with the first events, in the same send
                    if opens_with_error:
                        # The upstream's error came before anything reached the client.
                        assert lead is not None
                        failed = _failed_first(provider.name, lead)
                        if failed is not None:
                            raise failed
                    await down.open(ex, router_header_items(ex, cand),
                                    data_follows=bool(sent))
                if not opens_with_error:
                    # An answer's first event (an error event is none: a failed-over
                    # attempt, or an error passed on, records no time to first token).
                    ex.ttft = now - ex.t0
                    series.ttft.observe(ex.ttft)
            if req.turn is not None and not answered:
                await req.turn.after_events(cand)  # stored before the client can follow up
                answered = await pin_response(req, cand)
            if sent:  # one write (one flush) for the events of one upstream read
                sent = state.redactor.bytes(sent)
                if req.fill is not None:
                    req.fill.feed(sent)
                if relay.done and relay.failure is None:
                    # The terminal event: sent with the stream's end, in one write. Still
                    # in this try, so a client gone now is a 499 as before.
                    await down.finish(ex, sent)
                    finished = True
                else:
                    await down.write(ex, sent)
            if relay.done or relay.failure is not None:
                # The terminal event ([DONE], message_stop, response.completed) or an
                # error event went out: end the client's response now, not at the
                # upstream's EOF, which may linger (a client that left then was a 499).
                att.ended = relay.done
                break
            waited = time.perf_counter()
            try:
                batch = await events.__anext__()
            except StopAsyncIteration:
                break
            finally:
                ex.upstream_s += time.perf_counter() - waited
        if not relay.done:
            failure = relay.failure or "closed"
    except (ConnectionError, asyncio.CancelledError):
        # The client went away, or the server is cutting streams at the end of its grace
        # period (then proxy.forward tells a client still there why): stop the upstream
        # at once and count what was used so far.
        ex.status = 499
        ex.error = "client_disconnected"
        owed = events.unfinished()  # the usage a translating upstream reported (Gemini)
        for raw in owed:
            relay.feed(raw)
        _account(req, att, relay.usage, seen + len(owed), complete=False)
        raise
    except UPSTREAM_ERRORS as exc:
        failure = failure_from_exception(exc, provider.name).reason
        # Cut, timed out or too large: what a translating upstream still owes (Gemini's
        # running usage) is counted, and goes out before the error as a cut's would.
        owed = events.unfinished()
        if owed:
            seen += len(owed)
            data = b"".join(relay.feed(raw) for raw in owed)
            if data:
                with suppress(ConnectionError):
                    await down.write(ex, state.redactor.bytes(data))
    if failure is not None:
        ex.error = failure
        state.metrics.child(state.metrics.upstream_errors, provider.name, cand.key.label,
                            failure).inc()
        # An in-band throttle (Bedrock's throttlingException mid-stream, Anthropic's
        # overloaded_error) cools the key as a 429 would; batch is the read that ended it.
        state.health.record_failure(provider.name, cand.key.label, cfg.circuit,
                                    rate_limited=relay.failure is not None
                                    and throttled(split_events(batch[0])
                                                  if isinstance(batch, tuple) else batch))
        # b"" when the upstream's own error event already ended the client's stream.
        event = relay.fail(f"upstream '{provider.name}' stream was interrupted ({failure})")
        if event:
            with suppress(ConnectionError):
                await down.write(ex, event)
        _account(req, att, relay.usage, seen, complete=False)
    else:
        _account(req, att, relay.usage, seen)
        _observe_decoding(req, series, ex.completion_tokens)
        if req.fill is not None:  # ended by its terminal event, no error: kept whole
            req.fill.keep_stream(cand, Usage(ex.prompt_tokens, ex.completion_tokens,
                                             relay.usage.cached))
    if not finished:
        with suppress(ConnectionError):
            await down.finish(ex)
    assert down.out is not None
    return down.out


_Batch = tuple[bytes, int] | list[bytes]  # UpstreamEvents': a run of joined events, or a list


def _first_event(batch: _Batch) -> bytes:
    return batch[0][:batch[0].find(b"\n\n") + 2] if isinstance(batch, tuple) else batch[0]


def _batch_events(batch: _Batch) -> list[bytes]:
    return split_events(batch[0]) if isinstance(batch, tuple) else batch


def _filter_first(batch: _Batch) -> bool:
    """Whether the batch's first event may be one of Azure's filter-only chunks (a byte
    test: :func:`filter_only` decides)."""
    if isinstance(batch, tuple):
        run = batch[0]
        return run.find(b"filter_results", 0, run.find(b"\n\n")) >= 0
    return b"filter_results" in batch[0]


# How an Anthropic stream opens (message_start, maybe a ping), as the upstream writes it.
_ANTHROPIC_LEAD: Final = (b"event: message_start\n", b"event: ping\n")


def _anthropic_lead(raw: bytes) -> bool:
    """Whether an Anthropic stream event is one that opens a stream without any part of
    the answer: ``message_start`` (who answers, the prompt's usage) or ``ping``."""
    if raw.startswith(_ANTHROPIC_LEAD):
        return True
    if raw.startswith(b"event: "):
        return False  # any other type, as Anthropic writes it: the usual case
    event, _ = event_fields(raw)  # fields in another order or spelling
    return event == "message_start" or event == "ping"


def _lead(batch: _Batch, held: Callable[[bytes], bool]) -> bytes | None:
    """The batch's first event that ``held`` does not hold (:func:`_past_lead`), if any."""
    for event in _batch_events(batch):
        if not held(event):
            return event
    return None


# The most bytes of such events held unsent (a stream opens with one or two, of a few
# hundred bytes): past it the stream is passed on as any other, judged on its first event.
_MAX_HELD_LEAD: Final = 64 << 10


async def _past_lead(req: ModelRequest, att: Attempt, events: UpstreamEvents, batch: _Batch,
                     down: Downstream, headers: Callable[[web.StreamResponse], None],
                     held: Callable[[bytes], bool], what: str) -> tuple[_Batch, bytes]:
    """Events that open a stream without any part of the answer (``held``: Anthropic's
    ``message_start`` and ``ping``, Azure's content-filter chunks, :func:`filter_only`)
    are held, unsent, until the first event that is not one, which is returned with them
    all (the batch) and alone: the stream is judged on it as on a first event. So an
    error there fails over (or is an error status) before any byte, as an error as the
    very first event is, and time to first token is that event's. Usually that event
    came in the same read (no wait). Else the wait is bounded by ``idle`` (the
    watchdog's, as between any events), with keepalive comments meanwhile (the first
    commits the stream: an error is then in-band). ``what`` names the held events.

    At most :data:`_MAX_HELD_LEAD` bytes of them: an upstream that sent them without end
    (within ``idle`` of each other, up to ``total``) had them all held, and all of them
    read again at each read, a loop stall growing with their square (3 s for 20 MB of
    Azure's filter chunks). Past it they go out, the first of them the stream's first
    event."""
    name = att.cand.provider.name
    reads = [batch]
    size = 0
    while True:
        for event in _batch_events(batch):  # only this read's: the others were held
            if not held(event):
                return _joined(reads), event
            size += len(event)
        if size > _MAX_HELD_LEAD:
            joined = _joined(reads)
            return joined, _first_event(joined)
        try:
            async with down.keepalive(req.ex, headers):
                batch = await events.__anext__()
        except StopAsyncIteration:
            raise AttemptFailure("closed", f"upstream '{name}' closed the stream after "
                                 f"{what}, before any answer") from None
        except UPSTREAM_ERRORS as exc:
            raise failure_from_exception(exc, name) from None
        reads.append(batch)


def _joined(reads: list[_Batch]) -> _Batch:
    """The reads as one batch: a run of joined events if each was one, else a list."""
    if len(reads) == 1:
        return reads[0]
    if all(isinstance(r, tuple) for r in reads):
        return (b"".join(r[0] for r in reads if isinstance(r, tuple)),
                sum(r[1] for r in reads if isinstance(r, tuple)))
    return [event for r in reads for event in _batch_events(r)]


def _failed_first(provider: str, first: bytes) -> AttemptFailure | None:
    """The attempt's failure when the upstream's stream began with its own error event
    ``first`` (after events with no answer in them, :func:`_past_lead`): nothing was
    sent, so it fails over as the same error in a status would (a throttle as a 429).
    None when it blames the request (no reason to try another upstream: the client gets
    it in-band, as the upstream sent it). An error after other events ends the stream
    in-band, however the reads were split."""
    if client_fault([first]):
        return None
    return AttemptFailure(STREAM_ERROR, f"upstream '{provider}' answered with an error event",
                          status=429 if throttled([first]) else None)


def _observe_decoding(req: ModelRequest, series: _StreamSeries,
                      completion_tokens: int) -> None:
    """time_per_output_token_seconds: the stream's time after its first event, per token
    after the first (the first token's wait is TTFT's)."""
    ex = req.ex
    if completion_tokens > 1 and ex.ttft is not None:
        decoding = time.perf_counter() - ex.t0 - ex.ttft
        tpot = series.tpot
        if tpot is None:  # made at its first value, so kept with the others from then on
            m = req.state.metrics
            tpot = series.tpot = m.child(m.tpot, *series.labels)
        tpot.observe(decoding / (completion_tokens - 1))


class _StreamSeries:
    """A stream's time_to_first_token series, and the labels and (once observed)
    series of its time_per_output_token."""

    __slots__ = ("labels", "tpot", "ttft")

    def __init__(self, ttft: Series, labels: tuple[str, str, str]) -> None:
        self.ttft = ttft
        self.labels = labels
        self.tpot: Series | None = None


# _stream_series: by the metrics and label names they were resolved with.
_SERIES: dict[tuple[str, str, str], _StreamSeries] = {}
_SERIES_OF: list[object] = [None, None]


def _stream_series(req: ModelRequest, provider: str, model: str) -> _StreamSeries:
    """A stream's series (:class:`_StreamSeries`), resolved once per (group, provider,
    model) while the metrics and the config's label names stay the same, and kept only
    for values that are their own labels (as ``answered`` keeps)."""
    state, group = req.state, req.ex.group
    m, names = state.metrics, state.labels
    if _SERIES_OF[0] is not m or _SERIES_OF[1] is not names:
        _SERIES.clear()
        _SERIES_OF[:] = m, names
    key = (group, provider, model)
    found = _SERIES.get(key)
    if found is None:
        g, label = names.group(group), names.model(provider, model)
        found = _StreamSeries(m.child(m.ttft, g, provider, label), (g, provider, label))
        if g == group and label == model:
            _SERIES[key] = found
    return found


def _account(req: ModelRequest, att: Attempt, usage: Usage, events_seen: int = 0,
             *, complete: bool = True) -> None:
    """Count what one answer used: selection counters, the caller's spend and limits,
    metrics, and the exchange (access log, trace, cost header). The one place usage is
    counted, so the one place upstream counts out of range are replaced (upstream_usage).

    ``complete`` False: a stream that ended early. It counts what it reported, but at
    least one completion token per event relayed, and the prompt estimate if it
    reported no prompt; and it does not count as a success of the key.
    """
    state, cfg, ex, cand = req.state, req.cfg, req.ex, att.cand
    if usage.rejected:
        usage = state.rejected_usage.settle(cand.provider.name, usage, ex.prompt_estimate,
                                            max(req.estimate - ex.prompt_estimate,
                                                events_seen, 1))
    if not complete and (usage.completion < events_seen or not usage.prompt):
        # Reported counts of a stream cut short can be provisional: Anthropic's
        # message_start says output_tokens: 1 and gives the real count only at the end,
        # so a client that read the text and left early would otherwise pay for one token.
        usage = Usage(usage.prompt or ex.prompt_estimate, max(usage.completion, events_seen),
                      usage.cached)
    prompt, completion, cached = usage.prompt, usage.completion, usage.cached
    state.counters.settle(att.reservation, prompt, completion, cfg.request_penalty)
    user = ex.caller.user
    found = _COUNTED.get((cand.counter_key, cand.member.model, user)) \
        if _COUNTED_OF[0] is cfg and _COUNTED_OF[1] is state.metrics \
        and _COUNTED_OF[2] is state.labels else None
    if found is None:
        found = _counted(req, cand, user)
    if complete:
        health = state.health
        if found.health in health.tracked:  # record_success is a no-op for the others
            health.record_success(found.provider, found.key, cfg.circuit)
    ex.prompt_tokens, ex.completion_tokens = prompt, completion
    price = found.price
    ex.cost = cost = None if price is None else priced_usd(price, prompt, completion, cached)
    found.spend.count(prompt, completion, cached, cost or 0.0)
    adm = ex.admission
    if adm is not None:
        state.store.record(adm, found.provider, found.counted, prompt, completion, cost)


class _Counted:
    """Where the answers of one candidate to one user are counted: its price, its
    metric series of usage (:meth:`Metrics.spend`), its names for health and the
    ledger. Resolved once per (config, metrics, label names)."""

    __slots__ = ("counted", "health", "key", "price", "provider", "spend")

    def __init__(self, cfg: Config, state: RouterState, cand: Candidate, user: str) -> None:
        self.provider, self.key, model = cand.provider.name, cand.key.label, cand.member.model
        self.health = (self.provider, self.key)
        self.counted = cand.state_model or model
        self.price = price_for(cfg.pricing, model)
        self.spend = state.metrics.spend(state.labels, self.provider, model, self.key, user)


# _account's bundles, by (counter key, model, user) while the config, the metrics and the
# label names they were resolved with stay.
_COUNTED: dict[tuple[CounterKey, str, str], _Counted] = {}
_COUNTED_OF: list[object] = [None, None, None]


def _counted(req: ModelRequest, cand: Candidate, user: str) -> _Counted:
    state, cfg = req.state, req.cfg
    if (_COUNTED_OF[0] is not cfg or _COUNTED_OF[1] is not state.metrics
            or _COUNTED_OF[2] is not state.labels):
        _COUNTED.clear()
        _COUNTED_OF[:] = cfg, state.metrics, state.labels
    found = _Counted(cfg, state, cand, user)
    model = cand.member.model
    # Kept only for a model the config names (as Metrics.spend keeps its series), so
    # that names clients invent cannot grow it; users and keys come from the config.
    if state.labels.model(found.provider, model) == model:
        _COUNTED[(cand.counter_key, model, user)] = found
    return found
