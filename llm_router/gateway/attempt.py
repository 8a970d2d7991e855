"""One try at one candidate: its record, and what names it on the answer.

Shared by the attempt loop (:mod:`.proxy`) and the answer's way back (:mod:`.answer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..observe.exchange import Exchange
from ..providers import ProviderType
from .affinity import response_key
from .model_request import ModelRequest
from .routing import Candidate

__all__ = ["Attempt", "pin_response", "router_header_items", "router_headers"]


@dataclass(slots=True)
class Attempt:
    """One try at one candidate: what the relays and the accounting need about it."""

    cand: Candidate
    up: str  # the provider's wire dialect for this request (ProviderType.wire)
    ptype: ProviderType  # the provider's type: transport and wire <-> hub transforms
    sent: float = 0.0  # perf_counter when the upstream request went out
    sent_loop: float = 0.0  # the same moment on the loop's clock (deadlines run on it)
    reservation: Any = None  # the in-flight estimate on the candidate's counter
    ended: bool = False  # the upstream's terminal event was relayed: its answer is whole
    span: Any = None  # its trace span when tracing is on (tracing.Tracing)
    probe: bool = False  # a half-open circuit's one probe: released when the attempt ends


def router_headers(resp: web.StreamResponse, ex: Exchange, cand: Candidate | None) -> None:
    """The ``X-Router-*`` headers naming who answered, and after how many attempts."""
    resp.headers.extend(router_header_items(ex, cand))  # a new response: none are there yet


def router_header_items(ex: Exchange, cand: Candidate | None) -> list[tuple[str, str]]:
    """:func:`router_headers` as (name, value) pairs, for a response built with them."""
    items = [("X-Router-Group", ex.group)]
    if cand is not None:
        items += (("X-Router-Provider", cand.provider.name),
                  ("X-Router-Model", cand.member.model), ("X-Router-Key", cand.key.label))
    items.append(("X-Router-Attempts", str(ex.attempts)))
    if ex.cache:
        items.append(("X-Router-Cache", ex.cache))
    if ex.dropped_tools:
        items.append(("X-Router-Dropped-Tools", ",".join(ex.dropped_tools)))
    return items


async def pin_response(req: ModelRequest, cand: Candidate) -> bool:
    """Pin a Responses answer's id once it is known, so the turn that names it as
    ``previous_response_id`` comes back here; whether the id is known yet."""
    turn = req.turn
    if turn is None or turn.response_id is None:
        return False
    if req.affinity is not None:
        group = req.target.group
        await req.state.affinity.remember(response_key(group.name, turn.response_id).digest,
                                          cand.counter_key, group.affinity.ttl_s)
    return True
