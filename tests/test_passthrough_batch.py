"""OpenAIPassthrough.feed_batch: what feeding each event in turn would send and count.

The batch read skips the fields of events that cannot change or be counted; whatever
the events, the bytes out, the usage, ``done`` and ``failure`` must equal the per-event
path's.
"""

from __future__ import annotations

import random

import orjson
import pytest

from llm_router.dialects.openai import OpenAIPassthrough


def _chunk(rng: random.Random) -> bytes:
    kind = rng.randrange(12)
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
