"""``type: mock``: answers in-process from the fake upstream's generators.

No network and no key: the example config's default group uses it so a fresh install
answers at once. ``latency_ms`` delays the answer (or first chunk) and
``tokens_per_second`` paces streamed chunks, like ``llm-router fake-upstream``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from ...config import Provider
from ...hub.sse import DONE, frame
from ...testing import responses as fake_responses
from ...testing import upstream as gen
from ..base import ProviderType, ResponseTooLarge, UpstreamCall

__all__ = ["MockProvider", "MockResponse"]

_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream"}


class MockResponse:
    __slots__ = ("_body", "_delay", "_events", "_gap", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", events: list[bytes] | None = None,
                 delay: float = 0.0, gap: float = 0.0) -> None:
        self.status = status
        self.headers: Mapping[str, str] = _SSE if events is not None else _JSON
        self._body = body
        self._events = events
        self._delay = delay
        self._gap = gap

    def whole(self, limit: int) -> bytes | None:
        del limit
        return None  # read() it

    async def read(self, limit: int) -> bytes:
        if len(self._body) > limit:
            raise ResponseTooLarge(f"an answer larger than {limit} bytes")
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(self._events or ()):
            if i and self._gap:
                await asyncio.sleep(self._gap)
            yield event

    def close(self) -> None:
        self._events = None

    def release(self) -> None:
        self._events = None


def _answer(path: str, body: dict[str, Any], stream: bool) -> tuple[bytes, list[bytes] | None]:
    model = str(body.get("model", "mock"))
    if path == "chat/completions":
        if stream:
            return b"", [frame(orjson.dumps(c)) for c in gen.chat_chunks(body, model)] + [DONE]
        return orjson.dumps(gen.chat_completion(body, model)), None
    if path == "completions":
        if stream:
            chunks = gen.completion_chunks(body, model)
            return b"", [frame(orjson.dumps(c)) for c in chunks] + [DONE]
        return orjson.dumps(gen.text_completion(body, model)), None
    if path == "embeddings":
        return orjson.dumps(gen.embeddings(body, model)), None
    if path == "messages":
        if stream:
            return b"", [frame(orjson.dumps(d), t) for t, d in gen.messages_events(body, model)]
        return orjson.dumps(gen.messages_response(body, model)), None
    if path == "responses":
        if stream:
            events = fake_responses.response_events(body, model)
            return b"", [frame(orjson.dumps(d), t) for t, d in events]
        return orjson.dumps(fake_responses.response_object(body, model)), None
    if path == "messages/count_tokens":
        return orjson.dumps({"input_tokens": gen.count_prompt_tokens(body)}), None
    raise ValueError(path)


class MockProvider(ProviderType):
    """Speaks whatever the client speaks, so every request passes through untouched."""

    type = "mock"
    serves = frozenset({"chat", "completions", "embeddings", "messages",
                               "count_tokens", "responses"})

    def wire(self, provider: Provider, client: str, model: str) -> str:
        if client == "responses":
            return "responses" if provider.responses == "native" else "openai"
        return client

    async def send(self, session: aiohttp.ClientSession, call: UpstreamCall) -> MockResponse:
        """Answer ``call`` as an OpenAI-compatible (or, for ``messages``, Anthropic) server."""
        del session
        p = call.provider
        if p.latency_ms:
            await asyncio.sleep(p.latency_ms / 1000)
        body, events = _answer(call.path, call.parsed, call.stream)
        gap = 1.0 / p.tokens_per_second if p.tokens_per_second else 0.0
        return MockResponse(200, body, events, gap=gap)
