"""The provider registry: one registered object per type, and what a new type plugs into.

A new provider type is one folder and one registry line. These tests hold the registry
to the config's list of types, run each type's model listing against a fake upstream,
and drive the relay through a wire that is neither the client's nor the hub, the path
the next native providers (Gemini, Bedrock) take.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.config import Provider, load_config
from llm_router.config.model import PROVIDER_TYPES as CONFIG_TYPES
from llm_router.gateway import relay
from llm_router.hub.sse import DONE, event_fields, frame
from llm_router.hub.stream import STREAM_ERROR, Usage, openai_error_event
from llm_router.providers import (
    UPSTREAM_ERRORS,
    CachedToken,
    ProviderType,
    failure_from_exception,
)
from llm_router.providers.bedrock.eventstream import FrameError
from llm_router.providers.registry import PROVIDER_TYPES, provider_type

from .conftest import Upstream
from .helpers import write_config


def test_every_config_type_is_registered_and_nothing_else() -> None:
    assert set(PROVIDER_TYPES) == set(CONFIG_TYPES)
    for name, ptype in PROVIDER_TYPES.items():
        assert ptype.type == name and ptype.serves


async def _providers(tmp_path: Any, up: Upstream) -> dict[str, Provider]:
    path = tmp_path / "c.yaml"
    write_config(path, {
        "providers": [
            {"name": "o", "type": "openai", "base_url": up.base_url, "api_keys": ["sk-o"]},
            {"name": "a", "type": "anthropic", "base_url": up.root, "api_keys": ["sk-a"]},
            {"name": "m", "type": "mock"}],
        "groups": [{"name": "g", "models": [{"provider": "o", "name": "x"}]}]})
    return load_config(path).providers


async def test_model_listing_asks_the_upstream_with_its_key(tmp_path: Any,
                                                           upstream: Upstream) -> None:
    providers = await _providers(tmp_path, upstream)
    async with aiohttp.ClientSession() as session:
        for name in ("o", "a"):
            p = providers[name]
            models = await provider_type(p.type).list_models(session, p, p.keys[0])
            assert models and all(isinstance(m.id, str) and m.id for m in models), name
        m = providers["m"]
        assert await provider_type("mock").list_models(session, m, m.keys[0]) is None
    assert [k for k in upstream.keys_seen() if k] == ["sk-o", "sk-a"]


class _ToyRelay:
    """A wire whose events are ``data: <text>`` lines and ``data: end <in> <out>``."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None

    def feed(self, raw: bytes) -> bytes:
        _, data = event_fields(raw)
        if data.startswith(b"end "):
            prompt, completion = (int(n) for n in data.split()[1:])
            self.usage = Usage(prompt, completion)
            self.done = True
            chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
            return frame(orjson.dumps(chunk)) + DONE
        chunk = {"choices": [{"index": 0, "delta": {"content": data.decode()}}]}
        return frame(orjson.dumps(chunk))

    def fail(self, message: str) -> bytes:
        return openai_error_event(message)


class _Toy(ProviderType):
    type = "toy"
    serves = frozenset({"chat", "messages"})

    def wire(self, provider: Provider, client: str) -> str:
        return "toy"

    def stream(self, requested_model: str, include_usage: bool) -> _ToyRelay:
        return _ToyRelay()


def test_a_foreign_wire_reaches_an_anthropic_client_through_the_hub() -> None:
    r = relay.make_relay("anthropic", "toy", _Toy(), "g", include_usage=False)
    out = b"".join(r.feed(frame(e)) for e in (b"Hel", b"lo", b"end 7 2"))
    events = [event_fields(e + b"\n\n") for e in out.split(b"\n\n") if e]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(orjson.loads(d)["delta"]["text"] for k, d in events
                   if k == "content_block_delta")
    assert text == "Hello"
    delta = orjson.loads(next(d for k, d in events if k == "message_delta"))
    assert delta["usage"] == {"output_tokens": 2, "input_tokens": 7}
    assert r.done and r.failure is None
    assert (r.usage.prompt, r.usage.completion) == (7, 2)  # read by the provider


def test_a_foreign_wire_cut_short_ends_the_clients_stream_in_its_dialect() -> None:
    r = relay.make_relay("anthropic", "toy", _Toy(), "g", include_usage=False)
    r.feed(frame(b"Hel"))
    kind, data = event_fields(r.fail("upstream went away"))
    assert kind == "error" and b"upstream went away" in data
    assert r.fail("again") == b"" and not r.done


def test_a_foreign_wire_reaches_a_hub_client_through_the_providers_transform_only() -> None:
    r = relay.make_relay("openai", "toy", _Toy(), "g", include_usage=True)
    out = r.feed(frame(b"Hi")) + r.feed(frame(b"end 3 1"))
    assert out.endswith(DONE) and b'"content":"Hi"' in out
    assert r.done and r.failure != STREAM_ERROR


async def test_a_cached_token_is_fetched_once_for_concurrent_callers() -> None:
    fetched: list[int] = []
    gate = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        fetched.append(1)
        await gate.wait()
        return f"token-{len(fetched)}", 3600.0

    token = CachedToken(fetch)
    waiters = [asyncio.create_task(token.get()) for _ in range(3)]
    await asyncio.sleep(0)  # let every caller reach the lock
    gate.set()
    assert await asyncio.gather(*waiters) == ["token-1"] * 3
    assert await token.get() == "token-1" and len(fetched) == 1
    token.clear()
    assert await token.get() == "token-2"


async def test_a_token_inside_its_refresh_margin_is_fetched_again() -> None:
    n = 0

    async def fetch() -> tuple[str, float]:
        nonlocal n
        n += 1
        return f"t{n}", 30.0  # shorter than the 60 s margin: stale at once

    token = CachedToken(fetch)
    assert [await token.get(), await token.get()] == ["t1", "t2"]



@pytest.mark.parametrize(("exc", "reason"), [
    (aiohttp.ServerDisconnectedError(), "closed"),
    (ConnectionResetError(), "closed"),
    (TimeoutError(), "timeout"),
    (FrameError("bad prelude CRC"), "bad_response"),
], ids=["disconnected", "reset", "timeout", "broken-framing"])
def test_upstream_errors_map_to_attempt_failures(exc: BaseException, reason: str) -> None:
    assert isinstance(exc, UPSTREAM_ERRORS)
    assert failure_from_exception(exc, "p").reason == reason


def test_an_error_that_is_not_the_upstreams_is_raised_not_failed_over() -> None:
    bug = KeyError("a router bug")
    assert not isinstance(bug, UPSTREAM_ERRORS)
    with pytest.raises(KeyError):
        failure_from_exception(bug, "p")
