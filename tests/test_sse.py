"""The SSE splitter: CR, LF and CRLF line ends split anywhere across reads, bounded
events in linear time, and the same through the router from a real upstream socket."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from llm_router.hub.sse import EventTooLarge, SSEParser
from llm_router.hub.stream import throttled
from llm_router.testing.upstream import chat_chunks, messages_events

from .conftest import StartRouter

_BODY = {"messages": [{"role": "user", "content": "say something"}], "max_tokens": 6,
         "stream_options": {"include_usage": True}}


def _openai_stream() -> list[bytes]:
    events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chat_chunks(_BODY, "m")]
    return [b": OPENROUTER PROCESSING\n\n", *events, b"data: [DONE]\n\n"]


def _anthropic_stream() -> list[bytes]:
    return [b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            for name, data in messages_events(_BODY, "m")]


def _with_line_ends(events: list[bytes], end: bytes) -> bytes:
    return b"".join(events).replace(b"\n", end)


def _split(parser: SSEParser, reads: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for read in reads:
        out.extend(parser.feed(read))
    return out


@pytest.mark.parametrize("recorded", [_openai_stream, _anthropic_stream])
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_split_point_gives_the_same_events(recorded: Callable[[], list[bytes]],
                                                 end: bytes) -> None:
    events = recorded()
    wire = _with_line_ends(events, end)
    for at in range(len(wire) + 1):
        parser = SSEParser()
        got = _split(parser, [wire[:at], wire[at:]])
        assert got == events, f"split at byte {at}"
        assert parser.tail() == b""
    # One byte per read, the worst case of all.
    assert _split(SSEParser(), [wire[i:i + 1] for i in range(len(wire))]) == events


def test_mixed_line_ends_and_blank_lines_between_events() -> None:
    wire = b"\r\n\nevent: a\rdata: 1\r\n\r\n\n\nevent: b\ndata: 2\r\rdata: 3\n\n"
    assert _split(SSEParser(), [wire]) == [b"event: a\ndata: 1\n\n", b"event: b\ndata: 2\n\n",
                                           b"data: 3\n\n"]


def test_an_event_past_the_bound_raises() -> None:
    parser = SSEParser(max_event=1024)
    assert parser.feed(b"data: " + b"x" * 900 + b"\n\n") == [b"data: " + b"x" * 900 + b"\n\n"]
    parser.feed(b"data: " + b"y" * 600)
    with pytest.raises(EventTooLarge):
        parser.feed(b"y" * 600)
    with pytest.raises(EventTooLarge):  # whole in one read, too
        SSEParser(max_event=1024).feed(b"data: " + b"z" * 2000 + b"\n\n")


def test_a_large_event_in_small_reads_is_not_copied_per_read() -> None:
    # Quadratic buffering (the buffer plus each read, copied anew) allocates the whole
    # event again on every read. Allocation is measured, not time: timing is bench/'s
    # (bench/sse_parser.py shows the cost grows linearly with the event).
    parser = SSEParser(max_event=64 << 20)
    read = b"x" * 16384
    parser.feed(b"data: ")
    for _ in range(512):  # 8 MiB buffered
        assert parser.feed(read) == []
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(8):
            assert parser.feed(read) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < 1 << 20  # the new reads and the list's growth, not 8 MiB
    [event] = parser.feed(b"\n\n")
    assert event == b"data: " + read * 520 + b"\n\n"


# ------------------------------------------------------------- through the router

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _byte_split_upstream(aiohttp_server: AiohttpServer, wire: bytes, cuts: list[int]
                               ) -> str:
    """An upstream that sends ``wire`` as separate socket writes, cut at ``cuts``."""

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        at = 0
        for cut in [*cuts, len(wire)]:
            await resp.write(wire[at:cut])
            at = cut
            await asyncio.sleep(0.01)  # separate reads on the router's side
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", stream)
    app.router.add_post("/v1/chat/completions", stream)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def _cr_lf_cuts(wire: bytes) -> list[int]:
    """Every position between a CR and its LF: the split that lost Anthropic events."""
    return [i + 1 for i in range(len(wire) - 1) if wire[i:i + 2] == b"\r\n"]


async def test_anthropic_upstream_with_crlf_split_between_cr_and_lf(
        start_router: StartRouter, aiohttp_server: AiohttpServer) -> None:
    wire = _with_line_ends(_anthropic_stream(), b"\r\n")
    root = await _byte_split_upstream(aiohttp_server, wire, _cr_lf_cuts(wire))
    router = await start_router({
        "providers": [{"name": "claude", "type": "anthropic", "base_url": root,
                       "api_keys": ["sk-ant"]}],
        "groups": [{"name": "g", "models": [{"provider": "claude", "name": "m"}]}]})
    # An OpenAI client: every event is translated, so a lost event type shows.
    stream = await router.openai().chat.completions.create(
        model="g", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [d["delta"]["text"].strip() for n, d in messages_events(_BODY, "m")
                            if n == "content_block_delta"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6
    # And an Anthropic client gets every event through the passthrough.
    async with router.anthropic().messages.stream(
            model="g", max_tokens=6, messages=[{"role": "user", "content": "hi"}]) as s:
        message = await s.get_final_message()
    assert message.usage.output_tokens == 6 and message.stop_reason == "max_tokens"


async def test_openai_upstream_with_cr_line_ends_split_everywhere(
        start_router: StartRouter, aiohttp_server: AiohttpServer) -> None:
    wire = _with_line_ends(_openai_stream(), b"\r")
    root = await _byte_split_upstream(aiohttp_server, wire, list(range(7, len(wire), 97)))
    router = await start_router({
        "providers": [{"name": "up", "type": "openai", "base_url": root + "/v1",
                       "api_keys": ["sk-up"]}],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "m"}]}]})
    stream = await router.openai().chat.completions.create(
        model="g", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(c["choices"][0]["delta"].get("content") or ""
                           for c in chat_chunks(_BODY, "m") if c["choices"])
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(("events", "expected"), [
    ([b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
      b'"message":"Overloaded"}}\n\n'], True),
    ([b'data: {"error":{"message":"slow down","type":"rate_limit_error",'
      b'"code":"ThrottlingException"}}\n\n'], True),
    ([b'data: {"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}\n\n'], True),
    ([b'data: {"error":{"message":"bad input","type":"invalid_request_error"}}\n\n'], False),
    # A model's text about rate limits in the same read is not the error.
    ([b'data: {"choices":[{"delta":{"content":"the rate_limit_error means"}}]}\n\n',
      b'data: {"error":{"message":"model crashed","type":"server_error"}}\n\n'], False),
    ([b'data: {"choices":[{"delta":{"content":"rate_limit"}}]}\n\n'], False),
], ids=["anthropic-overloaded", "bedrock-throttle", "gemini-exhausted", "other-error",
        "text-about-limits", "no-error"])
def test_throttled_reads_only_the_error_event(events: list[bytes], expected: bool) -> None:
    assert throttled(events) is expected
