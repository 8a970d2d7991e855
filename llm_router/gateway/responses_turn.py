"""One ``POST /v1/responses`` request: its conversation, which members may serve it, and
how its answer reaches the client and the store.

The proxy's attempt loop is the same as for every route; a :class:`ResponsesTurn` (on
``ModelRequest.turn``) answers the few questions that differ: which candidates may serve
(a ``native`` conversation goes back to the provider and key that hold it; hosted tools
need a ``native`` member), what to send each kind of member (the body untouched for
``responses: native``, else the hub's Chat Completions, which the provider type turns
into its wire), how to turn the answer back (``response`` object or events), and what
to remember (:mod:`llm_router.dialects.responses.store`).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from ..config import Provider
from ..dialects.responses import translate as responses_in
from ..dialects.responses.check import check_body
from ..dialects.responses.store import ResponseStore, StoredResponse
from ..dialects.responses.stream import ChatStreamToResponses, EventWriter
from ..dialects.responses.translate import ResponseFrame
from ..errors import BadRequest, RouterError, echoed
from ..hub.sse import event_fields, json_object
from ..hub.stream import STREAM_ERROR, Relay, Usage, split_events
from ..providers import ProviderType
from .routing import Candidate, CandidateSet, Target

__all__ = ["NATIVE", "ResponsesTurn"]

NATIVE: Final = "responses"  # the provider dialect of a ``responses: native`` member
_HUB: Final = "openai"
_TERMINAL: Final = frozenset({"response.completed", "response.incomplete"})
_FAILED: Final = frozenset({"response.failed", "error"})


# Tool types named in x-router-dropped-tools at most (the header stays small).
_MAX_DROPPED: Final = 16


class ResponsesTurn:
    """The Responses-specific facts of one request (built once, before any attempt)."""

    __slots__ = ("_declared", "_relay", "_remembered", "body", "dropped", "frame", "history",
                 "history_bytes", "hosted", "inputs", "origin", "owner", "previous_id",
                 "refused", "response_id", "store")

    def __init__(self, body: dict[str, Any], model: str, store: ResponseStore, owner: str,
                 previous: StoredResponse | None) -> None:
        self.body = body
        self.history: list[dict[str, Any]] = previous.items if previous else []
        # The body read once: its input as items, and the tools it offers.
        self.inputs = responses_in.input_items(body)
        self._declared = responses_in.declared_tools(body, self.history, self.inputs)
        self.frame = ResponseFrame(body, model, namespaced=responses_in.namespaced_tools(
            body, self.history, self._declared))
        self.store = store
        self.owner = owner
        self.previous_id: str | None = body.get("previous_response_id")
        # Sent upstream with this turn: counts toward its prompt estimate.
        self.history_bytes = len(orjson.dumps(self.history)) if self.history else 0
        self.origin = previous.origin if previous else None
        self.refused = responses_in.refusal(body, self.inputs)  # what a chat member cannot serve
        # Hosted tools: a chat member goes without them when its provider drops them.
        self.hosted = responses_in.hosted_tools(body, self.history, self._declared)
        self.dropped: tuple[str, ...] = ()  # the tool types the answering member went without
        self._relay: _ResponsesRelay | None = None
        self._remembered = False
        self.response_id: str | None = None  # the answer's id, once known (affinity pins it)

    @classmethod
    async def begin(cls, body: dict[str, Any], model: str, store: ResponseStore,
                    owner: str) -> ResponsesTurn:
        """Check the Responses-only fields and load the conversation it continues."""
        check_body(body)
        previous = None
        prev_id = body.get("previous_response_id")
        if prev_id:
            previous = await store.get(prev_id)
            if previous is None or previous.owner != owner:
                raise BadRequest(f"Previous response with id '{echoed(prev_id)}' not found: the "
                                 "router keeps responses for a limited time (and not those "
                                 "created with store: false).",
                                 param="previous_response_id",
                                 code="previous_response_not_found")
        return cls(body, model, store, owner, previous)

    # ------------------------------------------------------------ who may serve it

    def check_target(self, target: Target, providers: dict[str, Provider] | Any) -> None:
        """400 before any attempt when no member of the target could serve this turn."""
        members = target.group.members
        if self.origin is not None:
            prov, key, model = self.origin
            if not any(m.provider == prov and m.model == model for m in members):
                raise BadRequest(f"previous_response_id '{self.previous_id}' was answered "
                                 f"by '{prov}/{model}', which '{target.name}' does not "
                                 f"include; its conversation is held there (send "
                                 f"model '{prov}/{model}', or a group that includes it).",
                                 param="previous_response_id",
                                 code="previous_response_elsewhere")
            del key
        elif (self.refused is not None or self.hosted) and \
                not any(self._may_serve(providers[m.provider]) for m in members):
            # (With nothing refused and no hosted tool, every member may serve.)
            param, why = self.refused if self.refused is not None else self.hosted[0][::2]
            raise BadRequest(why, param=param, code="unsupported_parameter")

    def _may_serve(self, provider: Provider) -> bool:
        """Whether a member of this provider can serve the turn's fields and tools."""
        if provider.responses == "native":
            return True
        if self.refused is not None:
            return False
        return not self.hosted or provider.responses_unsupported_tools == "drop"

    def narrow(self, cands: CandidateSet) -> None:
        """Leave only the candidates that may serve this turn (``total`` then counts
        only those that are eligible now: the others were never in the running)."""
        if self.origin is not None:
            cands.eligible = [c for c in cands.eligible if c.counter_key == self.origin]
        elif self.refused is not None or self.hosted:
            native = [c for c in cands.eligible if c.provider.responses == "native"]
            # A hosted tool works on a native member: one that can run it is preferred to
            # a chat member that would go without it.
            cands.eligible = native or [c for c in cands.eligible
                                        if self._may_serve(c.provider)]
        else:
            return
        cands.total = len(cands.eligible)

    def explain(self, err: RouterError) -> None:
        """A failure of a pinned conversation says why no other member was tried."""
        if self.origin is None:
            return
        prov, key, model = self.origin
        err.message = (f"previous_response_id '{self.previous_id}' continues a conversation "
                       f"held by provider '{prov}' (key '{key}', model '{model}'), and only "
                       f"it can continue it; it could not answer: {err.message}")
        err.args = (err.message,)

    # ------------------------------------------------------------ what to send

    @staticmethod
    def dialect(ptype: ProviderType, provider: Provider, model: str) -> str:
        """The wire a member speaks to this turn: ``responses`` for a native member."""
        return ptype.wire(provider, NATIVE, model)

    def upstream_request(self, ptype: ProviderType, provider: Provider, up: str, model: str,
                         stream: bool) -> tuple[str, dict[str, Any]]:
        """(path, body) for one member: the body itself, or translated."""
        body = self.body
        if up == NATIVE:
            self.dropped = ()
            out = dict(body)
            out["model"] = model
            if self.history:
                # A conversation the router kept: sent whole (without the router's item
                # ids, which this upstream never issued) instead of by reference.
                out.pop("previous_response_id", None)
                out["input"] = [_without_ids(i) for i in self.history] + self.inputs
            return "responses", out
        chat = responses_in.responses_to_chat(body, model, self.history, inputs=self.inputs,
                                              declared=self._declared,
                                              namespaced=self.frame.namespaced)
        self.dropped = tuple(dict.fromkeys(kind for _, kind, _ in self.hosted))[:_MAX_DROPPED] \
            if self.hosted else ()
        if up == _HUB:
            return "chat/completions", chat
        return ptype.request(chat, provider, stream)

    # ------------------------------------------------------------ the answer

    async def answer(self, up: str, ptype: ProviderType, raw: bytes,
                     cand: Candidate) -> tuple[bytes, Usage]:
        """The client's body and the usage for a non-streamed upstream answer; raises
        ValueError (or KeyError/TypeError) when the upstream sent no valid answer."""
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        if up == NATIVE:
            await self._remember(doc, cand)
            return raw, Usage.from_responses(doc.get("usage"))
        # Usage is read in the wire's own dialect, before translation (hub.usage).
        usage = ptype.usage(doc) if up != _HUB else Usage.from_openai(doc.get("usage"))
        if up != _HUB:
            doc = ptype.answer(doc, self.frame.model)
            response = responses_in.chat_to_response(doc, self.frame)
        else:  # the counts just read are the answer's own
            response = responses_in.chat_to_response(doc, self.frame, usage)
        await self._remember(response, cand)
        return orjson.dumps(response), usage

    def relay(self, up: str, ptype: ProviderType) -> _ResponsesRelay:
        """The stream relay for a member of dialect ``up`` (kept to store its answer)."""
        if up == NATIVE:
            self._relay = _NativeRelay(self.frame)
        else:
            wire = ptype.stream(self.frame.model, True) if up != _HUB else None
            self._relay = _TranslatedRelay(self.frame, wire)
        return self._relay

    def fail_event(self, message: str) -> bytes:
        """The in-band end of a committed stream: through the relay that has been
        writing it (its numbering and items), or a minimal created/failed pair."""
        relay = self._relay if self._relay is not None else _NativeRelay(self.frame)
        return relay.fail(message)

    async def after_events(self, cand: Candidate) -> None:
        """Store a streamed answer as soon as it is complete, before its last event
        goes out, so a follow-up sent on that event finds it."""
        relay = self._relay
        if relay is not None and relay.final is not None and not self._remembered:
            await self._remember(relay.final, cand)

    async def _remember(self, response: dict[str, Any], cand: Candidate) -> None:
        self._remembered = True
        rid = response.get("id")
        self.response_id = rid if isinstance(rid, str) else None
        if self.body.get("store") is False or response.get("status") not in (
                "completed", "incomplete"):
            return
        if cand.provider.responses == "native":
            entry = StoredResponse(response, self.owner, [], cand.counter_key)
        else:
            items = [*self.history, *self.inputs, *response.get("output", ())]
            entry = StoredResponse(response, self.owner, items)
        await self.store.put(entry)


def _without_ids(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("type") in ("message", "function_call", None):
        return {k: v for k, v in item.items() if k not in ("id", "status")}
    return item


class _ResponsesRelay:
    """Stream relay for a Responses client (see relay.Relay); ``final`` is the complete
    ``response`` object once the upstream finished."""

    __slots__ = ("done", "failure", "final", "usage")

    def __init__(self) -> None:
        self.usage = Usage()
        self.done = False
        self.failure: str | None = None
        self.final: dict[str, Any] | None = None

    def feed(self, raw: bytes) -> bytes:
        raise NotImplementedError

    def fail(self, message: str) -> bytes:
        raise NotImplementedError


class _TranslatedRelay(_ResponsesRelay):
    """Hub (chat) upstream stream, or another wire through its provider's stream
    transform, → Responses events."""

    __slots__ = ("_t", "_wire")

    def __init__(self, frame: ResponseFrame, wire: Relay | None) -> None:
        super().__init__()
        self._t = ChatStreamToResponses(frame)
        self._wire = wire  # the provider's wire → hub transform; None for the hub itself

    def feed(self, raw: bytes) -> bytes:
        if self._t.ended:
            return b""
        if self._wire is None:
            return self._chat_event(raw)
        chat = self._wire.feed(raw)
        # The provider's transform speaks chat SSE; its events go through the chat path.
        out = b"".join(self._chat_event(e) for e in split_events(chat)) if chat else b""
        # Read from the wire's own transform: some wires report input tokens first, so
        # a stream cut later still counts them.
        self.usage = self._wire.usage
        return out

    def _chat_event(self, raw: bytes) -> bytes:
        _, data = event_fields(raw)
        if self._t.ended:
            return b""  # an in-band error already ended it; [DONE] does not undo that
        if data == b"[DONE]":
            out = self._t.finish()
            self._settle()
            return out
        chunk = json_object(data)
        if chunk is None:
            return b""
        out = self._t.feed(chunk)
        if self._wire is None and chunk.get("usage") is not None:  # most chunks have none
            self.usage = self._t.usage
        if chunk.get("error"):  # the translator turned it into response.failed
            self.failure = STREAM_ERROR
            self.final = self._t.final
        return out

    def _settle(self) -> None:
        if self._wire is None:
            self.usage = self._t.usage
        self.final = self._t.final
        self.done = True

    def fail(self, message: str) -> bytes:
        out = self._t.error(message)
        self.final = self.final or self._t.final
        return out


class _NativeRelay(_ResponsesRelay):
    """A native upstream's Responses events, passed on as sent; read for usage, the
    final object, and the numbering an in-band failure of the router's must continue."""

    __slots__ = ("_frame", "_id", "_w")

    def __init__(self, frame: ResponseFrame) -> None:
        super().__init__()
        self._frame = frame
        self._w = EventWriter()
        self._id: str | None = None  # the upstream's response id, from response.created

    def feed(self, raw: bytes) -> bytes:
        if self.done or self.failure is not None:
            return b""
        event, data = event_fields(raw)
        doc = json_object(data)
        if doc is None:
            return raw
        kind = event or doc.get("type")
        seq = doc.get("sequence_number")
        if isinstance(seq, int):
            self._w.next_sequence = seq + 1
        response = doc.get("response")
        if isinstance(response, dict):
            self._id = self._id or response.get("id")
            if response.get("usage") is not None:
                self.usage = Usage.from_responses(response["usage"])
        if kind in _TERMINAL:
            self.done = True
            self.final = response if isinstance(response, dict) else None
        elif kind in _FAILED:
            self.failure = STREAM_ERROR
        return raw

    def fail(self, message: str) -> bytes:
        if self.done or self.failure is not None:
            return b""
        self.failure = STREAM_ERROR
        out = b""
        if self._id is None:  # nothing went out yet: the grammar needs a created first
            out = self._w.event("response.created",
                                {"response": self._frame.response("in_progress", [])})
        else:
            self._frame.id = self._id
        failed = self._frame.response("failed", [], error={"code": "server_error",
                                                           "message": message})
        return out + self._w.event("response.failed", {"response": failed})
