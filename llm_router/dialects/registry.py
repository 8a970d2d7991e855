"""The inbound dialects, by name: what a client speaks, and how it reaches the hub.

A dialect here is also a *wire* the router can pass through untouched: when a
provider's wire is the client's dialect, only :meth:`ClientDialect.passthrough`,
:meth:`~ClientDialect.body_usage` and :meth:`~ClientDialect.answer_events` are used.
The Responses API is served through :mod:`llm_router.gateway.responses_turn` (it keeps
conversations), so it has no entry here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final, Protocol

from ..hub.stream import Relay, Usage
from . import anthropic_wire, openai

__all__ = ["DIALECTS", "ClientDialect"]


class ClientDialect(Protocol):
    """One inbound dialect. ``None`` from a ``*hub*`` method means "the hub itself":
    pass on what the provider produced."""

    def path(self, kind: str) -> str:
        """A route kind's path below the API root, for an upstream of this dialect."""
        ...

    def to_hub(self, kind: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        """A request body in this dialect as a hub request for ``model`` (a new dict;
        ``body`` stays untouched)."""
        ...

    def from_hub(self, doc: dict[str, Any], requested_model: str) -> bytes | None:
        """A hub ``chat.completion`` as this dialect's answer body."""
        ...

    def from_hub_stream(self, requested_model: str, include_usage: bool) -> Relay | None:
        """The transform of hub chunk events into this dialect's events."""
        ...

    def error_from_hub(self, status: int, body: bytes) -> bytes | None:
        """A hub (OpenAI) error body as this dialect's."""
        ...

    def passthrough(self, include_usage: bool) -> Relay:
        """A stream of this dialect passed on untouched, read for usage and its end."""
        ...

    def body_usage(self, doc: dict[str, Any]) -> Usage:
        """The token counts of a whole answer in this dialect."""
        ...

    def answer_events(self, kind: str, doc: dict[str, Any]) -> bytes | None:
        """A whole answer in this dialect as the events it would have streamed; None if
        it is not an answer of that kind."""
        ...


DIALECTS: Final[MappingProxyType[str, ClientDialect]] = MappingProxyType({
    "openai": openai.DIALECT,
    "anthropic": anthropic_wire.DIALECT,
})
