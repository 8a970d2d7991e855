"""Prompt-cache affinity: a conversation's turns go back to the key that holds its cache.

Providers cache prompt prefixes per organisation or API key, so inverse weight alone,
which sends each turn to the least-loaded key, throws the cache away on most turns of a
multi-key group. Here every request to a group gets an *affinity key* (:func:`affinity_key`),
the router remembers which (provider, key, model) served it last (:class:`AffinityStore`),
and :func:`pick_with_affinity` sends the request back there while that candidate is
eligible, its in-flight load is within a few requests of its weight's share (so a burst
spreads), and its recent load (:class:`RecentLoad`: in flight plus a decaying window of
about a minute) is within ``slack`` of the group's lowest; otherwise inverse weight
picks and the new candidate is pinned, but for a burst's spill, which leaves the pin.
docs/affinity.md has the rules for operators.

The store is the seam for shared state: :class:`MemoryAffinityStore` serves one process;
a store that replicas share (Redis) implements the same two coroutines.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from hashlib import sha256
from typing import Any, Final, NamedTuple, Protocol

from multidict import istr

from ..config import Affinity
from ..ledger.usage import CounterKey, UsageCounters
from .routing import AFFINITY_KINDS, Candidate, PickContext, Preferences, Target, inverse_weight

__all__ = [
    "AFFINITY_KINDS",
    "BURST_GRACE",
    "RECENT_WINDOW_S",
    "RESULTS",
    "SPILLED",
    "AffinityKey",
    "AffinityStore",
    "KeyValue",
    "MemoryAffinityStore",
    "RecentLoad",
    "SharedAffinityStore",
    "affinity_key",
    "affinity_room",
    "applies",
    "derived_cache_key",
    "pick_one",
    "pick_with_affinity",
    "prefix_digest",
    "response_key",
    "spilled",
    "within_slack",
]

log = logging.getLogger("llm_router.affinity")

# affinity_total{result}: hit = the pinned candidate served; new = nothing was pinned;
# moved = the pin was not eligible or beyond the slack; off = affinity did not apply.
RESULTS: Final = ("hit", "new", "moved", "off")
SESSION_HEADER: Final = "X-Router-Session"
# As istr: a request's headers find it without folding its case first (mostly a miss).
_SESSION: Final = istr(SESSION_HEADER)
# Explicit keys longer than this are hashed all the same; the cap only bounds the work.
_MAX_EXPLICIT: Final = 1024


class AffinityKey(NamedTuple):
    """What a request is remembered by: a 16-byte digest scoped to its group. A named
    tuple: one is made per request, and a frozen dataclass costs a setattr per field."""

    digest: bytes
    source: str  # prompt_cache_key | session | previous_response_id | user_id | prefix


# AffinityKey(digest, source) without the named tuple's __new__, a Python function that
# does just this: one made per group request.
_new_tuple: Final = tuple.__new__


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
    return _new_tuple(AffinityKey, (sha256(data).digest()[:16], source))


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
    value = headers.get(_SESSION)
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
    return None if digest is None else _new_tuple(AffinityKey, (digest, "prefix"))


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

    The digest is part of the pins' names (in Redis too) and of the ``prompt_cache_key``
    sent upstream, so it must stay the same from one release to the next:
    tests/test_affinity.py holds known digests.
    """
    # The opening as text parts, in prompt order: tool names, the system prompt, then
    # each message (role, text) up to and including the first user message. Inline (one
    # call per request, not three): this runs for every group request.
    parts: list[str] = []
    tools = body.get("tools")
    if tools and isinstance(tools, list):
        # Names only: schemas are long, and a tool set differing in schema alone is rare.
        parts += ("tools", "\x1f".join(_tool_name(t) for t in tools))
    system = body.get("system")
    if system:
        parts += ("system", system if isinstance(system, str) else _text(system))
    system = body.get("instructions")
    if system:
        parts += ("system", system if isinstance(system, str) else _text(system))
    messages = body.get("messages")
    if messages is None:
        messages = body.get("input")
        if isinstance(messages, str):  # Responses: a bare string is the user's turn
            parts += ("user", messages)
    if isinstance(messages, list):
        append = parts.append
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            role = msg.get("role")
            if not isinstance(role, str):
                role = str(msg.get("type", ""))
            content = msg.get("content")
            append("system" if role == "developer" else role)
            append(content if isinstance(content, str) else _text(content))
            if role == "user":
                break
    if not parts:
        return None
    text = "\0".join(parts)
    # The opening's length counts its parts, not the separators between them.
    length = len(text) - len(parts) + 1
    if len(text) < prefix_bytes and text.isascii():
        # The usual opening: all of it within the budget, one byte a character (isascii
        # is a flag of the string, not a scan), so nothing is cut: one encode.
        data = f"{group}\0prefix\0{length}\0{text}".encode()
    else:
        if len(text) >= prefix_bytes:
            budget = prefix_bytes  # in characters first (cheap), in bytes after encoding
            tail: list[str] = []
            for part in reversed(parts):
                if len(part) >= budget:
                    tail.append(part[len(part) - budget:])
                    break
                tail.append(part)
                budget -= len(part) + 1
            text = "\0".join(reversed(tail))
        data = b"%b\0prefix\0%d\0%b" % (group.encode(), length, text.encode()[-prefix_bytes:])
    # sha256 runs on the CPU's SHA extensions where present: about twice blake2b's speed.
    return sha256(data).digest()[:16]


def derived_cache_key(key: AffinityKey) -> str:
    """A ``prompt_cache_key`` for the upstream when the client sent none: the affinity
    digest, so the provider's own cache routing groups what ours groups. Not secret: it
    is a hash of the prompt's opening, already sent in full to the same upstream."""
    return "llmr-" + key.digest.hex()


# The recent window's time constant: tokens served a minute ago weigh 1/e of those
# served now, so the room a pin gets follows the group's current traffic, not its history.
RECENT_WINDOW_S: Final = 60.0
# Requests of this size a pinned key may have in flight beyond its weight's share: the
# one about to be sent and two more. Below it, a few concurrent conversations (which
# leave some key idle most of the time) keep their pins; a burst of dozens spreads by
# weight (docs/affinity.md, "What bounds the concentration").
BURST_GRACE: Final = 3


class RecentLoad:
    """Tokens each (provider, key, model) served lately: a sum decaying with a time
    constant of ``window_s`` seconds (an EWMA of the token rate, times the window).

    It follows the growth of the selection counters (``UsageCounters.tokens``), read
    at each affinity pick, so with shared state (Redis) it sees what the other
    replicas served as soon as their totals reach this one. Growth between two reads is
    taken as spread evenly over the interval; a key's first read counts its whole total
    as grown since ``start`` (this object's creation). So a restored snapshot, or the
    fleet's totals reaching a new replica, weigh as recent for a window or two and then
    fade: bursts stay bounded meanwhile by the in-flight bound. Entries are per counter
    key, which the config bounds.
    """

    __slots__ = ("_seen", "_start", "window_s")

    def __init__(self, window_s: float = RECENT_WINDOW_S, start: float | None = None) -> None:
        self.window_s = window_s
        self._start = time.monotonic() if start is None else start
        self._seen: dict[CounterKey, tuple[int, float, float]] = {}  # tokens, sum, when

    def tokens(self, key: CounterKey, total: int, now: float) -> float:
        """The decayed recent tokens of ``key`` whose counter now reads ``total``
        (``now`` on the ``time.monotonic`` clock)."""
        entry = self._seen.get(key)
        if entry is None:
            entry = (0, 0.0, min(self._start, now))
        seen, value, at = entry
        if total == seen and now == at:
            return value
        span = now - at
        grown = total - seen if total > seen else 0  # a counter reset is a new baseline
        if span > 0:
            decay = math.exp(-span / self.window_s)
            # Growth spread over the span: its decayed sum is grown x (1 - decay) x τ/span.
            value = value * decay + (grown * (1.0 - decay) * self.window_s / span
                                     if grown else 0.0)
        else:
            value += grown
        self._seen[key] = (total, value, now)
        return value


def within_slack(pinned: Candidate, cands: Sequence[Candidate], ctx: PickContext,
                 slack: float, estimate: int = 0, recent: RecentLoad | None = None,
                 now: float = 0.0) -> bool:
    """Whether the pinned candidate may keep the request (:func:`affinity_room` is
    ``hit``)."""
    return affinity_room(pinned, cands, ctx, slack, estimate, recent, now) == "hit"


def affinity_room(pinned: Candidate, cands: Sequence[Candidate], ctx: PickContext,
                  slack: float, estimate: int = 0, recent: RecentLoad | None = None,
                  now: float = 0.0) -> str:
    """Whether the pinned candidate may keep the request: ``hit``, or why not.

    Two bounds of ``load x weight`` against the lowest among ``cands``:

    - ``burst``: in-flight estimates alone may exceed the lowest by
      :data:`BURST_GRACE` requests of this one's size, no more (no slack: concurrency
      is what an upstream's rate limit sees). Every request counts on its key from its
      pick on, so the requests of one burst see each other: past its share the burst
      spills to the least busy key, and the pin stays for the next calm turn.
    - ``slack``: recent load, in flight plus ``recent``'s decaying window (lifetime
      tokens when ``recent`` is None), at most ``(1 + slack)`` times the lowest plus
      this one request. That grace keeps a conversation together while the load is
      small, where any relative bound alone would move it on every turn.

    A weight-0 candidate is always preferred (README, "How selection works"): a pinned one is always
    within, and any eligible one puts a weighted pin beyond."""
    w = pinned.member.weight
    if w <= 0:
        return "hit"
    # Plain loops (min() as it compares: the first of equal lows is kept), in the order
    # the window is read: the pin, then each candidate.
    inflight = ctx.counters.inflight
    lowest: float | None = None
    for c in cands:
        cw = c.member.weight
        if cw <= 0:
            return "slack"
        value = inflight.get(c.counter_key, 0) * cw
        if lowest is None or value < lowest:
            lowest = value
    assert lowest is not None, "cands must not be empty"
    mine = inflight.get(pinned.counter_key, 0) * w
    if mine > lowest + BURST_GRACE * estimate * w:
        return "burst"
    tokens = ctx.counters.tokens
    key = pinned.counter_key
    if recent is None:
        mine_recent = (tokens.get(key, 0) + inflight.get(key, 0)) * w
    else:
        mine_recent = (recent.tokens(key, tokens.get(key, 0), now) + inflight.get(key, 0)) * w
    lowest_recent: float | None = None
    for c in cands:
        key = c.counter_key
        seen = tokens.get(key, 0) if recent is None else recent.tokens(key, tokens.get(key, 0),
                                                                          now)
        value = (seen + inflight.get(key, 0)) * c.member.weight
        if lowest_recent is None or value < lowest_recent:
            lowest_recent = value
    assert lowest_recent is not None
    if mine_recent <= lowest_recent * (1.0 + slack) + estimate * w:
        return "hit"
    return "slack"


def pick_with_affinity(cands: Sequence[Candidate], pinned: CounterKey | None,
                       ctx: PickContext, slack: float, estimate: int = 0,
                       recent: RecentLoad | None = None, now: float = 0.0
                       ) -> tuple[Candidate, str]:
    """The candidate for a request whose affinity key points at ``pinned`` (None: no
    pin), and the result for ``affinity_total``: the pin when it is eligible and within
    both bounds (``hit``, :func:`affinity_room`), else inverse weight (``new`` or
    ``moved``). ``cands`` must not be empty. :func:`spilled` tells a move past the
    burst bound, whose answer must not re-pin."""
    if len(cands) == 1:
        return pick_one(cands[0], pinned, ctx.counters, slack, estimate, recent, now)
    if recent is not None:
        # Every pick reads the window, a new conversation's too, so a key's growth is
        # seen soon after it happens and not first when some pin looks at it.
        tokens = ctx.counters.tokens
        for c in cands:
            recent.tokens(c.counter_key, tokens.get(c.counter_key, 0), now)
    if pinned is None:
        return inverse_weight(cands, ctx), "new"
    for c in cands:
        if c.counter_key == pinned:
            room = affinity_room(c, cands, ctx, slack, estimate, recent, now)
            if room == "hit":
                return c, "hit"
            if room == "burst":
                return _spill(cands, ctx), SPILLED
            break
    return inverse_weight(cands, ctx), "moved"


def pick_one(c: Candidate, pinned: CounterKey | None, counters: UsageCounters, slack: float,
             estimate: int, recent: RecentLoad | None, now: float) -> tuple[Candidate, str]:
    """:func:`pick_with_affinity` for one eligible candidate, with the same window read
    and the same result: whatever the bounds say, inverse weight and a spill pick ``c``;
    only the result for ``affinity_total`` depends on them. The bounds are
    :func:`affinity_room`'s with ``c`` as its own lowest, computed the same way (the
    comparisons stay, so a negative slack or a negative count decides as there)."""
    key = c.counter_key
    tokens = counters.tokens.get(key, 0)
    seen = recent.tokens(key, tokens, now) if recent is not None else 0.0
    if pinned is None:
        return c, "new"
    if key != pinned:
        return c, "moved"
    w = c.member.weight
    if w <= 0:
        return c, "hit"
    mine = counters.inflight.get(key, 0) * w
    if mine > mine + BURST_GRACE * estimate * w:
        return c, SPILLED
    load = ((seen if recent is not None else tokens) + counters.inflight.get(key, 0)) * w
    if load <= load * (1.0 + slack) + estimate * w:
        return c, "hit"
    return c, "moved"


def _spill(cands: Sequence[Candidate], ctx: PickContext) -> Candidate:
    """Where a burst's request goes past its pin: the lowest in-flight ``estimate x
    weight``, then inverse weight among those. In-flight first, because the counters'
    history says nothing of where the burst already is: a key behind by one long
    request would otherwise take the whole spill."""
    inflight = ctx.counters.inflight

    def busy(c: Candidate) -> float:
        return inflight.get(c.counter_key, 0) * c.member.weight

    least = min(busy(c) for c in cands)
    return inverse_weight([c for c in cands if busy(c) == least], ctx)


# pick_with_affinity's result for a burst's spill: counted and logged as "moved".
SPILLED: Final = "moved:burst"


def spilled(result: str) -> bool:
    """Whether a pick's result is a burst's spill, which leaves the pin where it is."""
    return result == SPILLED


class AffinityStore(Protocol):
    """Where pins live: affinity digest -> (provider, key label, model), each for ``ttl_s``
    after its last use. One process (:class:`MemoryAffinityStore`) or shared."""

    async def lookup(self, digest: bytes) -> CounterKey | None:
        """The pin for ``digest``, or None if there is none or it expired."""

    async def remember(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        """Pin ``digest`` to ``pin`` (again) for ``ttl_s`` seconds from now."""

    def pin(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        """:meth:`remember`, which no store needs to wait for, as a plain call."""


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
        return self.pinned(digest)

    async def remember(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        self.pin(digest, pin, ttl_s)

    def pinned(self, digest: bytes) -> CounterKey | None:
        """:meth:`lookup`, without a coroutine: the proxy calls this one when the store is
        this class (nothing here waits)."""
        entry = self._pins.get(digest)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._pins[digest]
            return None
        return entry[0]

    def pin(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        """:meth:`remember`, without a coroutine (as :meth:`pinned`)."""
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

    def get_soon(self, name: str) -> asyncio.Future[Any] | None: ...

    async def got(self, name: str, asked: asyncio.Future[Any] | None) -> bytes | None: ...

    async def put(self, name: str, value: bytes, ttl_s: float) -> None: ...

    def put_soon(self, name: str, value: bytes, ttl_s: float) -> None: ...


class SharedAffinityStore:
    """Pins in a map that replicas share (Redis, through the state store), so a
    conversation's turns agree on its key whichever replica serves them.

    A lookup waits for the map (the pick needs it); a pin is written in the background
    (``put_soon``: with the store's next exchange), so the answer does not wait for the
    round trip. Pins are best effort: one lost (Redis away, or too many writes pending)
    costs one turn its cache, nothing else.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def lookup(self, digest: bytes) -> CounterKey | None:
        return await self.looked_up(digest, self.lookup_soon(digest))

    def lookup_soon(self, digest: bytes) -> asyncio.Future[Any] | None:
        """:meth:`lookup` asked now, read by :meth:`looked_up`: the proxy asks before it
        awaits the admission, so the two share one exchange with the map."""
        return self._kv.get_soon("affinity:" + digest.hex())

    async def looked_up(self, digest: bytes, asked: asyncio.Future[Any] | None
                        ) -> CounterKey | None:
        """The pin for ``digest`` as :meth:`lookup_soon` asked for it."""
        raw = await self._kv.got("affinity:" + digest.hex(), asked)
        if raw is None:
            return None
        parts = raw.decode(errors="replace").split("\x1f")
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None

    async def remember(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        self.pin(digest, pin, ttl_s)

    def pin(self, digest: bytes, pin: CounterKey, ttl_s: float) -> None:
        """:meth:`remember` without a coroutine: the write is queued, never awaited."""
        self._kv.put_soon("affinity:" + digest.hex(), "\x1f".join(pin).encode(), ttl_s)
