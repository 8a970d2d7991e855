"""Prompt-cache affinity: a conversation's turns go back to the key that holds its cache.

Providers cache prompt prefixes per organisation or API key, so inverse weight alone,
which sends each turn to the least-loaded key, throws the cache away on most turns of a
multi-key group. Here every request to a group gets an *affinity key* (:func:`affinity_key`),
the router remembers which (provider, key, model) served it last (:class:`AffinityStore`),
and :func:`pick_with_affinity` sends the request back there while that candidate is
eligible and its ``tokens x weight`` is within ``slack`` of the group's lowest; otherwise
inverse weight picks as always and the new candidate is pinned. docs/affinity.md has
the rules for operators.

The store is the seam for shared state: :class:`MemoryAffinityStore` serves one process;
a store that replicas share (Redis) implements the same two coroutines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Final, Protocol

from ..config import Affinity
from ..ledger.usage import CounterKey
from .routing import Candidate, PickContext, Preferences, Target, inverse_weight

__all__ = [
    "AFFINITY_KINDS",
    "RESULTS",
    "AffinityKey",
    "AffinityStore",
    "KeyValue",
    "MemoryAffinityStore",
    "SharedAffinityStore",
    "affinity_key",
    "applies",
    "derived_cache_key",
    "pick_with_affinity",
    "prefix_digest",
    "response_key",
    "within_slack",
]

log = logging.getLogger("llm_router.affinity")

# Route kinds whose prompts providers cache. Embeddings and count_tokens have no cache
# to keep; legacy completions repeat no structure a prefix hash could follow.
AFFINITY_KINDS: Final = frozenset({"chat", "messages", "responses"})
# affinity_total{result}: hit = the pinned candidate served; new = nothing was pinned;
# moved = the pin was not eligible or beyond the slack; off = affinity did not apply.
RESULTS: Final = ("hit", "new", "moved", "off")
SESSION_HEADER: Final = "X-Router-Session"
# Explicit keys longer than this are hashed all the same; the cap only bounds the work.
_MAX_EXPLICIT: Final = 1024


@dataclass(frozen=True, slots=True)
class AffinityKey:
    """What a request is remembered by: a 16-byte digest scoped to its group."""

    digest: bytes
    source: str  # prompt_cache_key | session | previous_response_id | user_id | prefix


def applies(target: Target, kind: str, prefs: Preferences) -> bool | None:
    """Whether affinity may steer this request: True, False (counted as ``off``: the
    group's mode is off, its strategy is not inverse weight, or the client's
    ``X-Router-Provider-Order`` / ``X-Router-Sort`` decide), or None when it does not
    concern affinity at all (a route without a prompt cache, or a ``provider/model``
    address, which is not a group)."""
    if kind not in AFFINITY_KINDS or target.is_direct:
        return None
    group = target.group
    return (group.affinity.mode != "off" and group.strategy == "inverse-weight"
            and not prefs.order and prefs.sort is None)


def _explicit(group: str, source: str, value: str) -> AffinityKey:
    # A header's bytes that are not UTF-8 arrive surrogate-escaped: hash them as sent.
    raw = value[:_MAX_EXPLICIT].encode("utf-8", "surrogateescape")
    data = b"%b\0%b\0%b" % (group.encode(), source.encode(), raw)
    return AffinityKey(sha256(data).digest()[:16], source)


def response_key(group: str, response_id: str) -> AffinityKey:
    """The key the next turn of a Responses conversation will look up: its
    ``previous_response_id`` is this answer's id."""
    return _explicit(group, "previous_response_id", response_id)


def affinity_key(body: Mapping[str, Any], headers: Mapping[str, str], group: str,
                 settings: Affinity) -> AffinityKey | None:
    """The request's affinity key, first found of: the body's ``prompt_cache_key``, the
    ``X-Router-Session`` header, ``previous_response_id``, Anthropic
    ``metadata.user_id``, and (mode ``auto`` only) the digest of the cacheable prefix.
    None when there is none (mode ``session`` without an explicit key, or a body with
    nothing to hash)."""
    value = body.get("prompt_cache_key")
    if isinstance(value, str) and value:
        return _explicit(group, "prompt_cache_key", value)
    value = headers.get(SESSION_HEADER)
    if value:
        return _explicit(group, "session", value)
    value = body.get("previous_response_id")
    if isinstance(value, str) and value:
        return _explicit(group, "previous_response_id", value)
    meta = body.get("metadata")
    if isinstance(meta, dict):
        value = meta.get("user_id")
        if isinstance(value, str) and value:
            return _explicit(group, "user_id", value)
    if settings.mode != "auto":
        return None
    digest = prefix_digest(body, group, settings.prefix_bytes)
    return None if digest is None else AffinityKey(digest, "prefix")


def _text(content: Any) -> str:
    """The text of a message content or system field: a string, or the text of its parts
    (other parts count by their type, so an image-only turn still hashes)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for part in content:
        if isinstance(part, dict):
            text = part.get("text")
            parts.append(text if isinstance(text, str) else str(part.get("type", "")))
        elif isinstance(part, str):
            parts.append(part)
    return "\n".join(parts)


def _tool_name(tool: Any) -> str:
    if not isinstance(tool, dict):
        return ""
    fn = tool.get("function")  # OpenAI chat; Anthropic and Responses name it at the top
    name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
    return name if isinstance(name, str) else str(tool.get("type", ""))


def _opening(body: Mapping[str, Any]) -> list[str]:
    """The conversation's opening as text parts, in prompt order: tool names, the system
    prompt, then each message (role, text) up to and including the first user message."""
    parts: list[str] = []
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        # Names only: schemas are long, and a tool set differing in schema alone is rare.
        parts += ("tools", "\x1f".join(_tool_name(t) for t in tools))
    for field in ("system", "instructions"):
        system = body.get(field)
        if system:
            parts += ("system", _text(system))
    messages = body.get("messages")
    if messages is None:
        messages = body.get("input")
        if isinstance(messages, str):  # Responses: a bare string is the user's turn
            parts += ("user", messages)
            return parts
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            role = msg.get("role")
            role = role if isinstance(role, str) else str(msg.get("type", ""))
            parts += ("system" if role == "developer" else role, _text(msg.get("content")))
            if role == "user":
                break
    return parts


def prefix_digest(body: Mapping[str, Any], group: str, prefix_bytes: int) -> bytes | None:
    """Digest of the opening every turn of a conversation repeats: the tool names, the
    system prompt, and the messages up to and including the first user message. OpenAI
    chat (leading system/developer messages), Anthropic Messages (``system``) and
    Responses (``instructions``, ``input``) bodies are read the same way, so a
    conversation hashes alike whichever dialect it speaks. None when there is none.

    Only the last ``prefix_bytes`` bytes of the opening are hashed, with its length: the
    tail holds what tells conversations apart (their first user message) even behind a
    system prompt longer than the budget, and the work per request stays bounded.
    Openings that differ only before the tail share a pin, which suits a prompt cache:
    they share that much of their prefix.
    """
    parts = _opening(body)
    if not parts:
        return None
    length = sum(len(p) for p in parts)
    budget = prefix_bytes  # in characters first (cheap), in bytes after encoding
    tail: list[str] = []
    for part in reversed(parts):
        if len(part) >= budget:
            tail.append(part[len(part) - budget:])
            break
        tail.append(part)
        budget -= len(part) + 1
    text = "\0".join(reversed(tail)).encode()[-prefix_bytes:]
    # sha256 runs on the CPU's SHA extensions where present: about twice blake2b's speed.
    return sha256(b"%b\0prefix\0%d\0%b" % (group.encode(), length, text)).digest()[:16]


def derived_cache_key(key: AffinityKey) -> str:
    """A ``prompt_cache_key`` for the upstream when the client sent none: the affinity
    digest, so the provider's own cache routing groups what ours groups. Not secret: it
    is a hash of the prompt's opening, already sent in full to the same upstream."""
    return "llmr-" + key.digest.hex()


def within_slack(pinned: Candidate, cands: Sequence[Candidate], ctx: PickContext,
                 slack: float, estimate: int = 0) -> bool:
    """Whether the pinned candidate may keep the request: its ``tokens x weight``
    (in-flight included) is at most ``(1 + slack)`` times the lowest among ``cands``,
    plus this request's own ``estimate x weight``. That grace of one request keeps a
    conversation together while the counters are still small (a fresh start, or little
    traffic), where any relative bound alone would move it on every turn; it adds at
    most one request to the spread. A weight-0 candidate is always preferred (CONTRACT
    §3): a pinned one is always within, and any eligible one puts a weighted pin beyond."""
    load = ctx.counters.load
    w = pinned.member.weight
    if w <= 0:
        return True
    if any(c.member.weight <= 0 for c in cands):
        return False
    mine = load(pinned.counter_key) * w
    lowest = min(load(c.counter_key) * c.member.weight for c in cands)
    return mine <= lowest * (1.0 + slack) + estimate * w


def pick_with_affinity(cands: Sequence[Candidate], pinned: CounterKey | None,
                       ctx: PickContext, slack: float, estimate: int = 0
                       ) -> tuple[Candidate, str]:
    """The candidate for a request whose affinity key points at ``pinned`` (None: no
    pin), and the result for ``affinity_total``: the pin when it is eligible and within
    the slack (``hit``, :func:`within_slack`), else inverse weight (``new`` or
    ``moved``). ``cands`` must not be empty."""
    if pinned is None:
        return inverse_weight(cands, ctx), "new"
    for c in cands:
        if c.counter_key == pinned:
            if within_slack(c, cands, ctx, slack, estimate):
                return c, "hit"
            break
    return inverse_weight(cands, ctx), "moved"


class AffinityStore(Protocol):
    """Where pins live: affinity digest -> (provider, key label, model), each for ``ttl_s``
    after its last use. One process (:class:`MemoryAffinityStore`) or shared."""

    async def lookup(self, digest: bytes) -> CounterKey | None:
        """The pin for ``digest``, or None if there is none or it expired."""

    async def remember(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        """Pin ``digest`` to ``pin`` (again) for ``ttl_s`` seconds from now."""


# 65,536 pins take about 13 MiB (a 16-byte digest, an entry, a shared key tuple each).
DEFAULT_MAX_PINS: Final = 65_536


class MemoryAffinityStore:
    """Pins in this process: an LRU of at most ``max_pins`` entries with a TTL each.

    A hit refreshes its entry's expiry and moves it to the young end, as a provider's
    cache is refreshed by use. Eviction takes the least recently used entry; expired
    entries are dropped when met (lookups) and from the old end on every insert, so
    memory is bounded by ``max_pins`` whatever the clients send.
    """

    def __init__(self, max_pins: int = DEFAULT_MAX_PINS) -> None:
        self.max_pins = max_pins
        self._pins: OrderedDict[bytes, tuple[CounterKey, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    async def lookup(self, digest: bytes) -> CounterKey | None:
        entry = self._pins.get(digest)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._pins[digest]
            return None
        return entry[0]

    async def remember(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        now = time.monotonic()
        pins = self._pins
        pins[digest] = (pin, now + ttl_s)
        pins.move_to_end(digest)
        # Groups may differ in ttl_s, so the old end is only roughly the soonest to expire:
        # drop what has, then whatever is over the bound.
        while pins:
            oldest = next(iter(pins.values()))
            if oldest[1] > now and len(pins) <= self.max_pins:
                break
            pins.popitem(last=False)


class KeyValue(Protocol):
    """A shared map with a TTL per entry (the state store's ``get``/``put`` hook)."""

    async def get(self, name: str) -> bytes | None: ...

    async def put(self, name: str, value: bytes, ttl_s: float) -> None: ...


_PENDING_MAX: Final = 1024  # pin writes in flight at most; past it a pin is skipped


class SharedAffinityStore:
    """Pins in a map that replicas share (Redis, through the state store), so a
    conversation's turns agree on its key whichever replica serves them.

    A lookup waits for the map (the pick needs it); a pin is written in the background,
    so the answer does not wait for the round trip. Pins are best effort: one lost under
    pressure (more than 1,024 writes pending) costs one turn its cache, nothing else.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._pending: set[asyncio.Task[None]] = set()

    async def lookup(self, digest: bytes) -> CounterKey | None:
        raw = await self._kv.get("affinity:" + digest.hex())
        if raw is None:
            return None
        parts = raw.decode(errors="replace").split("\x1f")
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None

    async def remember(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        if len(self._pending) >= _PENDING_MAX:
            return
        value = "\x1f".join(pin).encode()
        task = asyncio.create_task(self._put("affinity:" + digest.hex(), value, ttl_s))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, name: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._kv.put(name, value, ttl_s)
        except Exception as exc:  # a background write: nobody else would see it fail
            log.warning("affinity pin not written to the shared store: %r", exc)
