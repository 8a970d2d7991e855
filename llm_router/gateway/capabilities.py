"""Capability-aware selection: which members of a group can take this request at all.

A member may declare ``capabilities`` (``vision``, ``tools``, ``json_schema``,
``audio``) and a ``context_window`` in tokens; a member that declares nothing can do
anything. Before a strategy picks, :func:`narrow` keeps the members that offer what the
request needs (:func:`request_needs`) and whose window fits the request's prompt estimate
plus its ``max_tokens``. Weights then apply among those. None left is the client's 400,
naming what no member offers, and no upstream is called.

An upstream's context-length error (:func:`is_context_error`) teaches the router a
bound: :class:`ContextBounds` keeps, per (provider, model), the smallest request size
known to be too long, so the next request that large skips the member without trying.

A group whose members declare nothing, while nothing has been learnt, is not filtered:
:func:`filters` reads ``Group.declares``, computed at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from ..config import Group, Member
from ..errors import BadRequest

__all__ = [
    "CAPABILITIES",
    "ContextBounds",
    "FilterResult",
    "NoCapableMember",
    "filters",
    "is_context_error",
    "narrow",
    "request_needs",
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


def request_needs(kind: str, body: Mapping[str, Any]) -> frozenset[str]:
    """The capabilities the request's body needs (an empty set for a plain text one)."""
    out: set[str] = set()
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


class ContextBounds:
    """Per (provider, model): the smallest request size (tokens, as estimated) that the
    upstream refused as too long. A request at least that large skips the member."""

    def __init__(self) -> None:
        self.too_long: dict[tuple[str, str], int] = {}

    def learn(self, provider: str, model: str, tokens: int) -> None:
        key = (provider, model)
        known = self.too_long.get(key)
        if known is None or tokens < known:
            self.too_long[key] = tokens

    def window(self, member: Member) -> int | None:
        """The member's usable window: its declared one, lowered by what was learnt."""
        learnt = self.too_long.get((member.provider, member.model)) if self.too_long else None
        if learnt is None:
            return member.context_window
        bound = learnt - 1
        return bound if member.context_window is None else min(bound, member.context_window)


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


def filters(group: Group, bounds: ContextBounds) -> bool:
    """Whether the filter has anything to check for this group."""
    return group.declares or bool(bounds.too_long)


def _offers(member: Member, needs: frozenset[str]) -> bool:
    caps = member.capabilities
    return caps is None or needs.issubset(caps)


def narrow(group: Group, name: str, kind: str, body: Mapping[str, Any], tokens: int,
           bounds: ContextBounds) -> tuple[Group, FilterResult]:
    """The group with only the members that can take this request, and what was kept.

    ``tokens`` is the prompt estimate plus the completion ceiling. Raises
    :class:`BadRequest` (reason ``no_capable_member``) naming what no member offers.
    """
    # Capabilities only matter when a member lists some (not just a window, or a bound
    # learnt from an upstream): the body is not scanned otherwise.
    needs = request_needs(kind, body) if any(m.capabilities is not None
                                             for m in group.members) else frozenset()
    capable = [m for m in group.members if _offers(m, needs)] if needs else list(group.members)
    result = FilterResult(tuple(sorted(needs)), tokens, 0, len(group.members))
    if not capable:
        raise NoCapableMember(_missing(group, name, needs), result, param="model")
    fitting = []
    largest = 0
    for m in capable:
        window = bounds.window(m)
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


def _missing(group: Group, name: str, needs: frozenset[str]) -> str:
    """Say what no member offers: one capability if one alone is missing everywhere,
    else the combination."""
    ordered = sorted(needs)
    alone = [n for n in ordered if not any(_offers(m, frozenset((n,))) for m in group.members)]
    if alone:
        text = ", and none ".join(CAPABILITIES.get(n, f"offers {n}") for n in alone)
    else:
        text = "offers " + " together with ".join(ordered)
    declared = "; ".join(f"{m.provider}/{m.model}: "
                         f"{', '.join(sorted(m.capabilities)) if m.capabilities else 'none'}"
                         for m in group.members if m.capabilities is not None)
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
