"""The fake upstream's prompt cache: per API key, like a provider's, so routing shows in it.

Providers cache prompt prefixes per organisation or key and report the cached part of a
prompt (OpenAI ``usage.prompt_tokens_details.cached_tokens``, Anthropic
``usage.cache_read_input_tokens``). :class:`PromptCache` does the same for
``fake-upstream``: a prompt is a run of blocks (the tool list, the Anthropic ``system``,
then each message); after every request the cache remembers, for that API key and
model, a digest of each leading run of blocks and its token count (by
``count_prompt_tokens``'s rule). The next request's ``cached_tokens`` are the tokens of
its longest leading run that the same key sent within ``ttl_s`` (each use refreshes it).

Simplified on purpose: whole messages, no 1,024-token minimum or 128-token steps
(OpenAI), no ``cache_control`` breakpoints needed (Anthropic): every prefix is cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from hashlib import blake2b
from typing import Any, Final

import orjson

__all__ = ["PromptCache", "report_cached"]

_Body = dict[str, Any]
_MAX_ENTRIES: Final = 200_000  # prefix digests kept, over every key (about 40 MiB at most)


class PromptCache:
    """Prefix digests per (API key, model), each for ``ttl_s`` after its last use."""

    def __init__(self, ttl_s: float, block_tokens: Callable[[Any], int],
                 max_entries: int = _MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self._block_tokens = block_tokens  # tokens of one message content or system
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, api_key: str | None, body: _Body) -> int:
        """Cached tokens of ``body`` for ``api_key``; then remember its prefixes."""
        now = time.monotonic()
        h = blake2b(digest_size=16)
        h.update(orjson.dumps([api_key, body.get("model")]))
        cached = 0
        tokens = 0
        prefixes: list[bytes] = []
        for block, size in self._blocks(body):
            h.update(orjson.dumps(block))
            tokens += size
            digest = h.digest()
            prefixes.append(digest)
            expiry = self._seen.get(digest)
            if expiry is not None and expiry > now and cached == tokens - size:
                cached = tokens  # only a run from the start counts
        until = now + self.ttl_s
        seen = self._seen
        for digest in prefixes:
            seen[digest] = until
            seen.move_to_end(digest)
        while len(seen) > self.max_entries:
            seen.popitem(last=False)
        return cached

    def _blocks(self, body: _Body) -> list[tuple[Any, int]]:
        """The prompt as (block, tokens) in order: tools (free, as in
        count_prompt_tokens), Anthropic system, then each message."""
        count = self._block_tokens
        out: list[tuple[Any, int]] = []
        if body.get("tools"):
            out.append((body["tools"], 0))
        if body.get("system"):
            out.append((body["system"], count(body["system"])))
        messages = body.get("messages")
        if isinstance(messages, list):
            out.extend((m, count(m.get("content")) if isinstance(m, dict) else 0)
                       for m in messages)
        return out


def report_cached(answer: Any, anthropic: bool, cached: int) -> None:
    """Write ``cached`` into an answer's usage, in place: the whole body, a stream chunk,
    or an Anthropic event's data. OpenAI counts cached tokens inside ``prompt_tokens``;
    Anthropic's ``input_tokens`` leaves out what ``cache_read_input_tokens`` reports."""
    if not isinstance(answer, dict):
        return
    if anthropic:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            message = answer.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict) and "input_tokens" in usage:
            usage["input_tokens"] = max(0, usage["input_tokens"] - cached)
            usage["cache_read_input_tokens"] = cached
        return
    usage = answer.get("usage")
    if isinstance(usage, dict) and "prompt_tokens" in usage:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
