"""Stored responses are shared by replicas that share state (Redis): any replica continues
a conversation, reads it, or deletes it, whichever replica answered it."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from llm_router.dialects.responses.store import SharedResponseStore

from .conftest import StartRouter, Upstream
from .helpers import ROUTER_KEY, openai_provider
from .redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


def shared(up: Upstream, redis: RedisServer) -> dict[str, Any]:
    return {"api_key": ROUTER_KEY,
            "providers": [openai_provider("oa", up)],
            "groups": [{"name": "g", "models": [{"provider": "oa", "name": "m"}]}],
            "state": {"redis_url": redis.url, "prefix": "r15", "sync_interval_ms": 50}}


async def test_any_replica_continues_reads_and_deletes_a_conversation(
        redis_server: RedisServer, start_router: StartRouter, upstream: Upstream) -> None:
    a = await start_router(shared(upstream, redis_server), name="a.yaml")
    b = await start_router(shared(upstream, redis_server), name="b.yaml")
    assert isinstance(b.state.responses, SharedResponseStore)
    first = await a.openai().responses.create(model="g", input="remember the word 'otter'")
    second = await b.openai().responses.create(model="g", input="which word?",
                                               previous_response_id=first.id)
    sent = upstream.fake.requests[-1].body
    assert sent is not None
    assert sent["messages"][0]["content"] == "remember the word 'otter'"
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert (await a.openai().responses.retrieve(second.id)).id == second.id
    await a.openai().responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        await b.openai().responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError):
        await b.openai().responses.create(model="g", input="x", previous_response_id=first.id)
