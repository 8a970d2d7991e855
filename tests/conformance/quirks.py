"""Every place the conformance tests depart from the published schemas, with its reason:
the one list of whitelisted spec quirks (docs/responses.md, "Conformance", repeats it).

Answers (what the router sends back):

- :func:`completion_chunk`: the OpenAI spec has no schema for a ``/v1/completions``
  stream chunk, so a chunk is checked as a ``CreateCompletionResponse``, whose
  ``finish_reason`` is a non-null enum and ``usage`` a non-null object. OpenAI's own
  stream sends ``finish_reason: null`` until the last chunk and, with
  ``stream_options.include_usage``, ``usage: null`` on every chunk but the usage one, as
  the chat chunk schema allows. Both nulls are accepted there, nothing else.
- :data:`ANTHROPIC_EXTRA_EVENTS`: Anthropic's stream also carries ``ping`` events and
  an ``error`` event, which its streaming documentation lists but the spec's
  ``MessageStreamEvent`` does not: a ``ping`` must be ``{"type": "ping"}``, an ``error``
  is checked as the spec's ``ErrorResponse``.

- :func:`relaxed`: Anthropic's spec (Stainless's) marks every nullable field of an
  answer required, and ``tool_use``'s ``caller`` too; Anthropic's API leaves them out
  where they do not apply (``container`` without a container tool, ``stop_details``
  without a refusal, ``caller`` for a direct call), and its SDK types every one of them
  ``Optional[...] = None``. In Anthropic's schemas those fields may be absent (if
  present they are still checked).

- an Anthropic ``max_tokens`` is at least 1 (the spec's minimum is 0; Anthropic's API,
  and the router's edge check, refuse 0): drawn from 1 by
  ``tests/test_conformance_anthropic.py``.

Requests (which drawn ``/v1/responses`` bodies must be refused; :func:`responses_refused`):

- a field sent as ``null`` reads as absent. The spec allows null on most optional
  fields but not on ``user``, ``safety_identifier``, ``prompt_cache_key`` and (through
  ``CreateModelResponseProperties``) ``top_logprobs``; the router takes null there as
  absent too, as it does everywhere, rather than refuse a client that nulls every unset
  field.
- an ``integer`` is a JSON integer (``16``, not ``16.0`` or ``1.6e1``), in requests and
  answers alike (``tests/conformance/__init__.py``): the router and the SDKs read
  integers so, though plain JSON Schema takes any number without a fraction.
- an integer past 64 bits is refused: orjson, the router's parser, reads it as a float,
  which the router's checks do not take for an integer (JSON Schema does, and the spec
  bounds none of these integers).
- ``max_output_tokens`` from 1: the spec's minimum is 16 (OpenAI's own floor). A
  translated member (Claude, Gemini, a chat endpoint) honours smaller limits, so the
  router lets them through; an OpenAI ``native`` member refuses them itself (a 4xx,
  relayed).
- the router is stricter than the spec on two fields, as OpenAI's documentation is:
  ``max_tool_calls`` must be at least 0 (the spec sets no minimum), and ``metadata`` has
  at most 16 pairs, keys up to 64 characters and values up to 512 (in the spec's
  description, not its schema).
"""

from __future__ import annotations

import copy
from typing import Any, Final

from . import problems

__all__ = ["ANTHROPIC_ABSENT", "ANTHROPIC_EXTRA_EVENTS", "completion_chunk", "relaxed",
           "responses_refused"]

ANTHROPIC_EXTRA_EVENTS: Final = ("ping", "error")


# Required fields Anthropic's answers may leave out beyond the nullable ones:
# (schema, property).
ANTHROPIC_ABSENT: Final = frozenset({("ResponseToolUseBlock", "caller")})


def _nullable(schema: Any) -> bool:
    return isinstance(schema, dict) and (
        schema.get("type") == "null"
        or any(_nullable(b) for b in [*schema.get("anyOf", ()), *schema.get("oneOf", ())]))


def relaxed(vendor: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the Anthropic quirk above applied (the OpenAI spec is kept as is)."""
    if vendor != "anthropic":
        return doc
    for name, schema in doc["components"]["schemas"].items():
        if not isinstance(schema.get("required"), list):
            continue
        props = schema.get("properties", {})
        schema["required"] = [p for p in schema["required"]
                              if not _nullable(props.get(p)) and (name, p) not in ANTHROPIC_ABSENT]
    return doc


def completion_chunk(chunk: Any) -> Any:
    """A copy of a completions stream chunk with its two whitelisted nulls (a pending
    ``finish_reason``, a ``usage`` not yet sent) set to values the schema accepts, so
    everything else in the chunk is still checked."""
    chunk = copy.deepcopy(chunk)
    if not isinstance(chunk, dict):
        return chunk
    if "usage" in chunk and chunk["usage"] is None:
        del chunk["usage"]
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and "finish_reason" in choice \
                and choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    return chunk


def _without_nulls(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` less its null fields, and the null fields of its settings objects; a
    null inside ``metadata`` or ``input`` stays, for the spec to judge."""
    out = {k: v for k, v in body.items() if v is not None}
    for name in ("reasoning", "text", "stream_options"):
        if isinstance(out.get(name), dict):
            out[name] = {k: v for k, v in out[name].items() if v is not None}
    return out


def _big_integer(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_big_integer(v) for v in value.values())
    if isinstance(value, list):
        return any(_big_integer(v) for v in value)
    return isinstance(value, int) and not -2**63 <= value < 2**64


def _stricter(body: dict[str, Any]) -> list[str]:
    out = []
    calls = body.get("max_tool_calls")
    if isinstance(calls, int) and not isinstance(calls, bool) and calls < 0:
        out.append("max_tool_calls below 0")
    meta = body.get("metadata")
    if isinstance(meta, dict) and (len(meta) > 16 or any(
            len(k) > 64 or (isinstance(v, str) and len(v) > 512) for k, v in meta.items())):
        out.append("metadata past OpenAI's documented limits")
    return out


def responses_refused(body: dict[str, Any]) -> list[str]:
    """Why the router must refuse this ``POST /v1/responses`` body: what breaks the
    spec's ``CreateResponse``, less the quirks above (empty: it must be served)."""
    if _big_integer(body):
        return ["an integer past 64 bits"]
    body = _without_nulls(body)
    why = _stricter(body)
    tokens = body.get("max_output_tokens")
    if isinstance(tokens, int) and not isinstance(tokens, bool) and 1 <= tokens < 16:
        body = {**body, "max_output_tokens": 16}
    return why + problems("openai", "CreateResponse", body)
