"""Capability-aware selection: which members of a group can take this request at all.

A member may declare ``capabilities`` (``vision``, ``tools``, ``json_schema``,
``audio``) and a ``context_window`` in tokens; what it does not declare comes from its
provider's model list when the provider discovers (:meth:`Catalog.described`), and a
member about which nothing is known can do anything. Before a strategy picks,
:func:`narrow` keeps the members that offer what the request needs
(:func:`request_needs`) and whose window fits the request's prompt estimate plus its
``max_tokens``. Weights then apply among those. None left is the client's 400, naming
what no member offers, and no upstream is called.

An upstream's context-length error (:func:`is_context_error`) teaches the router a
bound: :class:`ContextBounds` keeps, per (provider, model), the smallest request size
known to be too long, so the next request that large skips the member without trying.
A bound below :data:`LEARN_FLOOR` tokens, or below half the member's known window, is
not learnt (the error was surely about something else), and a bound lapses after
:data:`LEARNT_TTL_S` or at a config reload.

A group whose members declare nothing, while nothing has been learnt or discovered, is
not filtered: :func:`filters` reads ``Group.declares``, computed at load.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from ..config import Group, Member
from ..errors import BadRequest
from .catalog import Catalog

__all__ = [
    "CAPABILITIES",
    "LEARNT_TTL_S",
    "LEARN_FLOOR",
    "ContextBounds",
    "FilterResult",
    "NoCapableMember",
    "filters",
    "is_context_error",
    "known_window",
    "member_facts",
    "narrow",
    "request_needs",
    "usable_window",
]

# What a member may declare, and how a 400 says that no member offers it.
CAPABILITIES: Final[dict[str, str]] = {
    "vision": "accepts images",
    "tools": "accepts tools",
    "json_schema": "supports response_format json_schema",
    "audio": "accepts audio",
}
# Content parts that need a capability, by the part's "type", in every dialect:
# OpenAI chat (image_url, input_audio), Anthropic messages (image), Responses
# (input_image, input_audio).
_PART_NEEDS: Final[dict[str, str]] = {
    "image_url": "vision", "image": "vision", "input_image": "vision",
    "input_audio": "audio",
}


def _scan_parts(parts: Any, out: set[str]) -> None:
    if not isinstance(parts, list):
        return
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        need = _PART_NEEDS.get(kind) if isinstance(kind, str) else None
        if need is not None:
            out.add(need)
        elif "content" in part:
            # An Anthropic tool_result may carry images; a Responses message item holds
            # its parts.
            _scan_parts(part.get("content"), out)


def _structured(body: Mapping[str, Any], kind: str) -> bool:
    if kind == "responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
    elif kind == "messages":
        fmt = body.get("output_format")
    else:
        fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") == "json_schema"


def request_needs(kind: str, body: Mapping[str, Any],
                  history: list[Any] | None = None) -> frozenset[str]:
    """The capabilities the request's body needs (an empty set for a plain text one).
    ``history``: the stored conversation a Responses ``previous_response_id`` continues,
    sent upstream with the turn, so its images need vision too."""
    out: set[str] = set()
    if history:
        _scan_parts(history, out)
    if kind in ("chat", "messages", "count_tokens"):
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict):
                    _scan_parts(message.get("content"), out)
    elif kind == "responses":
        _scan_parts(body.get("input"), out)
    if body.get("tools") or body.get("functions"):
        out.add("tools")
    if _structured(body, kind):
        out.add("json_schema")
    return frozenset(out)


# No bound below this many tokens is learnt: a window that small is not a chat model's,
# and an error that says so about a short request was about something else.
LEARN_FLOOR: Final = 1024
# A learnt bound lapses this long after it was learnt (and at a config reload), so one
# misread error does not shrink a member until restart.
LEARNT_TTL_S: Final = 3600.0


class ContextBounds:
    """Per (provider, model): the smallest request size (tokens, as estimated) that the
    upstream refused as too long, and when that lapses. A request at least that large
    skips the member."""

    def __init__(self) -> None:
        self.too_long: dict[tuple[str, str], tuple[int, float]] = {}

    def learn(self, provider: str, model: str, tokens: int, known: int | None) -> bool:
        """Learn that ``tokens`` is too long for the member, unless it is under
        :data:`LEARN_FLOOR` or half its ``known`` (declared or discovered) window: an
        error about so short a request is believed to be about something else."""
        if tokens < max(LEARN_FLOOR, (known or 0) // 2):
            return False
        key = (provider, model)
        now = time.monotonic()
        held = self.too_long.get(key)
        if held is None or held[1] <= now or tokens < held[0]:
            self.too_long[key] = (tokens, now + LEARNT_TTL_S)
        return True

    def bound(self, provider: str, model: str) -> int | None:
        """The smallest size known too long (None: none, or it lapsed)."""
        held = self.too_long.get((provider, model)) if self.too_long else None
        if held is None:
            return None
        if held[1] <= time.monotonic():
            del self.too_long[(provider, model)]
            return None
        return held[0]

    def clear(self) -> None:
        """Forget every bound (a config reload: windows may have been declared anew)."""
        self.too_long.clear()


def member_facts(member: Member, catalog: Catalog
                 ) -> tuple[Collection[str] | None, int | None, str | None, str | None]:
    """(capabilities, window, where each came from): declared by the member, else
    discovered in its provider's model list, else None (anything, any size)."""
    caps: Collection[str] | None = member.capabilities
    window = member.context_window
    caps_from = "declared" if caps is not None else None
    window_from = "declared" if window is not None else None
    if caps is None or window is None:
        info = catalog.described(member.provider, member.model)
        if info is not None:
            if caps is None and info.capabilities is not None:
                caps, caps_from = info.capabilities, "discovered"
            if window is None and info.context_window is not None:
                window, window_from = info.context_window, "discovered"
    return caps, window, caps_from, window_from


def known_window(member: Member, catalog: Catalog) -> int | None:
    """The member's window as declared, else as discovered (None: unknown)."""
    if member.context_window is not None:
        return member.context_window
    info = catalog.described(member.provider, member.model)
    return info.context_window if info is not None else None


def usable_window(member: Member, catalog: Catalog, bounds: ContextBounds) -> int | None:
    """The member's known window, lowered by what a context-length error taught."""
    known = known_window(member, catalog)
    learnt = bounds.bound(member.provider, member.model)
    if learnt is None:
        return known
    return learnt - 1 if known is None else min(learnt - 1, known)


@dataclass(frozen=True, slots=True)
class FilterResult:
    """What the filter did, for the access log: what the request needed, and how many
    of the group's members could take it."""

    needs: tuple[str, ...]
    tokens: int
    kept: int
    of: int

    def log(self) -> dict[str, Any]:
        return {"needs": list(self.needs), "tokens": self.tokens, "kept": self.kept,
                "of": self.of}


def filters(group: Group, bounds: ContextBounds, catalog: Catalog) -> bool:
    """Whether the filter has anything to check for this group."""
    return group.declares or bool(bounds.too_long) or catalog.describes(group.members)


def _offers(caps: Collection[str] | None, needs: frozenset[str]) -> bool:
    return caps is None or needs.issubset(caps)


def narrow(group: Group, name: str, kind: str, body: Mapping[str, Any], tokens: int,
           bounds: ContextBounds, catalog: Catalog,
           history: list[Any] | None = None) -> tuple[Group, FilterResult]:
    """The group with only the members that can take this request, and what was kept.

    ``tokens`` is the prompt estimate plus the completion ceiling; ``history`` the
    stored conversation a Responses turn continues. Raises :class:`BadRequest` (reason
    ``no_capable_member``) naming what no member offers.
    """
    members = group.members
    caps = [member_facts(m, catalog)[0] for m in members]
    # Capabilities only matter when a member has some (not just a window, or a bound
    # learnt from an upstream): the body is not scanned otherwise.
    needs = request_needs(kind, body, history) if any(c is not None for c in caps) \
        else frozenset()
    capable = [m for m, c in zip(members, caps, strict=True) if _offers(c, needs)] \
        if needs else list(members)
    result = FilterResult(tuple(sorted(needs)), tokens, 0, len(members))
    if not capable:
        raise NoCapableMember(_missing(group, caps, name, needs), result, param="model")
    fitting = []
    largest = 0
    for m in capable:
        window = usable_window(m, catalog, bounds)
        if window is None or tokens <= window:
            fitting.append(m)
        elif window > largest:
            largest = window
    if not fitting:
        raise NoCapableMember(
            f"no member of group '{name}' has a context window for this request: about "
            f"{tokens:,} tokens (prompt estimate plus max_tokens), and the largest window "
            f"is {largest:,}. Shorten the prompt or lower max_tokens.", result,
            param="messages" if kind != "responses" else "input",
            code="context_length_exceeded")
    result = replace(result, kept=len(fitting))
    if len(fitting) == len(group.members):
        return group, result
    return replace(group, members=tuple(fitting)), result


class NoCapableMember(BadRequest):
    """No member of the group can take the request: a 400 with no upstream call."""

    def __init__(self, message: str, result: FilterResult, *, param: str,
                 code: str = "no_capable_member") -> None:
        super().__init__(message, param=param, code=code, reason="no_capable_member")
        self.result = result


def _missing(group: Group, caps: list[Collection[str] | None], name: str,
             needs: frozenset[str]) -> str:
    """Say what no member offers: one capability if one alone is missing everywhere,
    else the combination."""
    ordered = sorted(needs)
    alone = [n for n in ordered if not any(_offers(c, frozenset((n,))) for c in caps)]
    if alone:
        text = ", and none ".join(CAPABILITIES.get(n, f"offers {n}") for n in alone)
    else:
        text = "offers " + " together with ".join(ordered)
    declared = "; ".join(f"{m.provider}/{m.model}: {', '.join(sorted(c)) if c else 'none'}"
                         for m, c in zip(group.members, caps, strict=True) if c is not None)
    return f"no member of group '{name}' {text} (members' capabilities: {declared})"


# Upstream error texts that mean "the prompt is longer than this model's window":
# OpenAI's code, vLLM's and OpenAI's message, Anthropic's, Gemini's and Bedrock's.
_CONTEXT_MARKERS: Final = (
    b"context_length_exceeded", b"maximum context length", b"prompt is too long",
    b"input token count", b"exceeds the maximum number of tokens", b"input is too long",
    b"too many input tokens", b"context window",
)


def is_context_error(status: int | None, body: bytes) -> bool:
    """Whether an upstream's error answer says the request exceeds its context window."""
    if status not in (400, 413, 422) or not body:
        return False
    low = body[:4096].lower()
    return any(marker in low for marker in _CONTEXT_MARKERS)
