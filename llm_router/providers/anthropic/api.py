"""``type: anthropic``: Anthropic's Messages API at ``{base_url}/v1/messages``.

Its wire is the Anthropic dialect: an Anthropic client's body and answer pass through
untouched (with its own ``anthropic-version`` and ``anthropic-beta``); hub requests are
translated by :mod:`.translate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from ...config import Provider, ProviderKey
from ...hub.sse import event_fields
from ...hub.stream import STREAM_ERROR, Usage, openai_error_event
from ..base import ModelInfo, UpstreamCall
from ..http import HTTPProvider, fixed_headers, get_json
from ..listing import listed_models
from .translate import (
    MessagesStreamToChat,
    anthropic_error_to_openai,
    chat_to_messages,
    message_to_chat,
)

__all__ = ["AnthropicProvider", "MessagesToChat"]

# Pages of a model list followed at most: a list longer than this is cut, not
# followed without end.
_MAX_PAGES: Final = 20


class AnthropicProvider(HTTPProvider):
    """POST ``{base_url}/v1/{path}`` with ``x-api-key`` and ``anthropic-version`` (the
    provider's, unless the call carries the client's own)."""

    type = "anthropic"
    serves = frozenset({"chat", "messages", "count_tokens", "responses"})

    def wire(self, provider: Provider, client: str, model: str) -> str:
        del provider, client, model
        return "anthropic"

    def url(self, call: UpstreamCall) -> str:
        return f"{call.provider.base_url}/v1/{call.path}"

    def headers(self, call: UpstreamCall) -> Mapping[str, str]:
        if not call.headers:  # nothing from the client: the same headers every time
            return fixed_headers(call, _headers)
        return _headers(call)

    def passthrough_headers(self, client: str, provider: Provider,
                            request_headers: Mapping[str, str]) -> dict[str, str]:
        """``anthropic-version`` and ``anthropic-beta`` of an Anthropic client.

        Both change what a Messages body may contain (Claude Code requires a gateway to
        forward them), so an Anthropic client talking to an Anthropic provider keeps its
        own; its betas are merged with any the provider's ``headers`` configure.
        Translated requests (OpenAI clients) use the provider's ``anthropic_version``
        and headers.
        """
        if client != "anthropic":
            return {}
        out: dict[str, str] = {}
        version = request_headers.get("anthropic-version")
        if version:
            out["anthropic-version"] = version
        asked = request_headers.get("anthropic-beta")
        if asked:
            configured = [v for k, v in provider.headers.items() if k.lower() == "anthropic-beta"]
            names = dict.fromkeys(n.strip() for v in (*configured, asked) for n in v.split(","))
            names.pop("", None)
            if names:
                out["anthropic-beta"] = ",".join(names)
        return out

    def request(self, hub: dict[str, Any], provider: Provider,
                stream: bool) -> tuple[str, dict[str, Any]]:
        del stream
        return "messages", chat_to_messages(hub, hub["model"], provider.max_tokens_default)

    def answer(self, doc: dict[str, Any], requested_model: str) -> dict[str, Any]:
        return message_to_chat(doc, requested_model)

    def usage(self, doc: dict[str, Any]) -> Usage:
        return Usage.from_anthropic(doc.get("usage"))

    def stream(self, requested_model: str, include_usage: bool) -> MessagesToChat:
        return MessagesToChat(requested_model, include_usage)

    def error(self, status: int, body: bytes) -> bytes:
        return orjson.dumps(anthropic_error_to_openai(status, body))

    async def list_models(self, session: aiohttp.ClientSession, provider: Provider,
                          key: ProviderKey) -> list[ModelInfo] | None:
        """Every page of ``GET /v1/models`` (``limit`` and ``after_id``, while
        ``has_more``), with each model's ``max_input_tokens`` and ``capabilities``;
        at most :data:`_MAX_PAGES` pages."""
        headers = {**provider.headers, "x-api-key": key.secret,
                   "anthropic-version": provider.anthropic_version}
        ids: list[ModelInfo] = []
        after = ""
        for _ in range(_MAX_PAGES):
            query = f"?limit=1000&after_id={quote(after, safe='')}" if after else "?limit=1000"
            doc = await get_json(session, provider, f"{provider.base_url}/v1/models{query}",
                                 headers)
            page = listed_models(doc)
            if page is None:
                return None
            ids += page
            last = doc.get("last_id") if isinstance(doc, dict) else None
            if not (isinstance(doc, dict) and doc.get("has_more") is True
                    and isinstance(last, str) and last and last != after):
                break
            after = last
        return ids


def _headers(call: UpstreamCall) -> dict[str, str]:
    kept = {name.lower() for name in call.headers}
    return {
        **{k: v for k, v in call.provider.headers.items() if k.lower() not in kept},
        "anthropic-version": call.provider.anthropic_version,
        **call.headers,  # a passthrough client's own anthropic-version / anthropic-beta
        "x-api-key": call.key.secret,
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if call.stream else "application/json",
    }


class MessagesToChat:
    """Anthropic upstream stream → hub chunk stream (a :class:`~llm_router.hub.stream.Relay`)."""

    __slots__ = ("_t", "done", "failure", "usage")

    def __init__(self, requested_model: str, include_usage: bool) -> None:
        self._t = MessagesStreamToChat(requested_model, include_usage)
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None

    def feed(self, raw: bytes) -> bytes:
        event, data = event_fields(raw)
        if not event or self._t.done:
            return b""
        try:
            doc = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            return b""
        out = self._t.feed(event, doc if isinstance(doc, dict) else {})
        self.usage = self._t.usage
        if event == "error":
            self.failure = STREAM_ERROR  # the translator sent it on as an error chunk
        else:
            self.done = self._t.done
        return out

    def fail(self, message: str) -> bytes:
        if self._t.done:
            return b""
        self._t.done = True
        return openai_error_event(message)
