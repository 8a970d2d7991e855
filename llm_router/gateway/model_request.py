"""One model request, as the attempt loop sees it: everything fixed before the first attempt.

``proxy.forward`` reads and checks the request once, then builds one
:class:`ModelRequest`; every later step (attempts, relays, in-band errors) takes it
instead of a row of parameters. A new client dialect or a new per-request fact adds a
field here, not a parameter to each function of the attempt path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import Config
from ..observe.exchange import Exchange
from .affinity import AffinityKey
from .cached_answer import Fill
from .downstream import Downstream
from .responses_turn import ResponsesTurn
from .router_state import RouterState
from .routing import GroupPlan, Preferences, Target

__all__ = ["ModelRequest"]


@dataclass(slots=True)
class ModelRequest:
    """What one request brings to its attempts; set once, shared by all of them.

    Read-only by convention: not ``frozen``, because a frozen dataclass's ``__init__``
    costs about 1 µs more per request (``object.__setattr__`` per field) for nothing the
    tests would catch.

    What the request *did* (attempts, usage, status) is written to ``ex``, not here.
    """

    http: web.Request
    state: RouterState
    cfg: Config  # the config this request started with, even if a reload swaps it
    ex: Exchange
    target: Target
    plan: GroupPlan  # group_plan(cfg, target, ex.kind), for the attempt loop
    prefs: Preferences
    body: dict[str, Any]  # parsed once; forwarded untouched but for the router's fields
    include_usage: bool  # the client asked for a usage chunk (stream_options)
    coding: str | None  # negotiated Content-Encoding of the answer, None for identity
    estimate: int  # tokens reserved on a candidate until the real usage is known
    down: Downstream | None  # the client's stream; None for a non-streamed answer
    turn: ResponsesTurn | None = None  # POST /v1/responses: its conversation and store
    affinity: AffinityKey | None = None  # what the first pick and the pin go by (affinity.py)
    # Set by the first pick when a burst spilled past the pinned key: the answer leaves
    # the pin where it is, so the next calm turn goes back to the cached key.
    keep_pin: bool = False
    fill: Fill | None = None  # a response-cache miss: keep the answer if it is whole
    # The pin lookup asked with the admission (affinity.SharedAffinityStore.lookup_soon);
    # None: the first pick looks it up itself.
    pin_asked: asyncio.Future[Any] | None = None

    @property
    def stream(self) -> bool:
        return self.down is not None
