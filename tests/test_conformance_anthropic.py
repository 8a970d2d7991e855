"""A bounded, seeded run of the Anthropic routes against Anthropic's published schema
(issue 30): ``tests/conformance/anthropic.json``, extracted from Anthropic's OpenAPI spec
by ``tests/conformance/extract.py``, read offline.

``/v1/messages`` (JSON and stream) and ``/v1/messages/count_tokens`` get valid bodies
and seeded mutations of them (``tests/fuzz.py``), sent over sockets to a router whose
groups translate (an OpenAI member behind the fake upstream), pass through (an
Anthropic member behind it) or answer themselves (``mock``). Every answer is below 500;
every 4xx body is the spec's ``ErrorResponse``; an unmutated body gets a 200; every 200
body validates as ``Message`` / ``CountMessageTokensResponse`` and every streamed event
as ``MessageStreamEvent`` (less the whitelisted ``ping`` and ``error`` events,
``tests/conformance/quirks.py``). Then bodies whose scalar fields are drawn from the
spec's ``CreateMessageParams`` (hypothesis-jsonschema) must each get a 200 that conforms.

``CONFORMANCE_EXAMPLES`` (default 40) runs more.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import urllib.error
import urllib.request
import warnings
from typing import Any, Final

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from .conformance import document, problems
from .conformance.quirks import ANTHROPIC_EXTRA_EVENTS
from .conftest import StartRouter, Upstream
from .fuzz import messages_body, mutated
from .helpers import ROUTER_KEY, openai_provider

EXAMPLES: Final = int(os.environ.get("CONFORMANCE_EXAMPLES", "40"))
HEADERS: Final = {"x-api-key": ROUTER_KEY, "anthropic-version": "2023-06-01",
                  "Content-Type": "application/json"}

MESSAGES: Final[dict[str, Any]] = messages_body()
SEEDS: Final[dict[str, list[dict[str, Any]]]] = {
    "/v1/messages": [MESSAGES, {**MESSAGES, "stream": True},
                     {"model": "oa", "max_tokens": 8, "system": "s", "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]}],
    "/v1/messages/count_tokens": [{k: v for k, v in MESSAGES.items() if k != "max_tokens"}],
}
_ANSWER: Final = {"/v1/messages": "Message",
                  "/v1/messages/count_tokens": "CountMessageTokensResponse"}


def _config(upstream: Upstream) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", upstream),
                      {"name": "claude", "type": "anthropic", "base_url": upstream.root,
                       "api_keys": ["sk-claude"]},
                      {"name": "local", "type": "mock"}],
        "groups": [{"name": "oa", "models": [{"provider": "up", "name": "m"}]},
                   {"name": "an", "models": [{"provider": "claude", "name": "c"}]},
                   {"name": "mk", "models": [{"provider": "local", "name": "l"}]}]}


def _conforms(name: str, instance: Any, context: Any) -> None:
    found = problems("anthropic", name, instance)
    assert not found, f"{found[:5]}\nfor {json.dumps(context)[:1500]}"


def _call(base: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers=HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _events(raw: bytes) -> list[Any]:
    return [orjson.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:")]


def _check(base: str, path: str, body: dict[str, Any], mutant: bool) -> None:
    status, raw = _call(base, path, body)
    assert status < 500, (path, body, raw[:1000])
    if status >= 400:
        assert mutant, (path, body, raw[:1000])
        _conforms("ErrorResponse", orjson.loads(raw), body)
        return
    if body.get("stream") is True and path == "/v1/messages":
        events = _events(raw)
        assert events, body
        for event in events:
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "ping":
                assert event == {"type": "ping"}, event
            elif kind == "error":
                _conforms("ErrorResponse", event, body)
            else:
                _conforms("MessageStreamEvent", event, body)
    else:
        _conforms(_ANSWER[path], orjson.loads(raw), body)


def _run(base: str) -> None:
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(SEEDS)), st.sampled_from(["oa", "an", "mk"]),
           st.randoms(use_true_random=False), st.booleans())
    def one(path: str, group: str, rng: Any, mutate: bool) -> None:
        body = {**rng.choice(SEEDS[path]), "model": group}
        _check(base, path, mutated(rng, body) if mutate else body, mutate)
    one()


async def test_anthropic_routes_answer_what_the_published_schema_says(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    await asyncio.to_thread(_run, router.url)


def test_the_whitelisted_extra_events_are_not_in_the_spec() -> None:
    """The quirk stays needed: were ``ping`` or ``error`` in ``MessageStreamEvent``, the
    whitelist would hide nothing and should go."""
    for kind in ANTHROPIC_EXTRA_EVENTS:
        assert problems("anthropic", "MessageStreamEvent", {"type": kind})


@functools.cache
def _spec_values(name: str) -> st.SearchStrategy[Any]:
    schema = document("anthropic")["components"]["schemas"]["CreateMessageParams"][
        "properties"][name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = from_schema(schema)
    # max_tokens from 1 (whitelisted, quirks.py), and to 64: every streamed event is
    # validated, and the fake upstream writes as many tokens as allowed (up to 4096).
    return values.map(lambda v: min(max(v, 1), 64)) if name == "max_tokens" else values


# CreateMessageParams' fields without a $ref (hypothesis-jsonschema draws no objects
# under current hypothesis; ``system``'s blocks and the rest come from the seeds above).
SPEC_FIELDS: Final = ("max_tokens", "temperature", "top_p", "top_k", "service_tier",
                      "stop_sequences", "container", "inference_geo")


@st.composite
def spec_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(st.sampled_from(["oa", "an", "mk"])),
                            "max_tokens": 16, "stream": draw(st.booleans()),
                            "messages": [{"role": "user", "content": "hi"}]}
    for name in draw(st.lists(st.sampled_from(SPEC_FIELDS), max_size=4, unique=True)):
        body[name] = draw(_spec_values(name).filter(
            lambda v: not isinstance(v, int) or v < 2**62))
    return body


def _run_spec(base: str) -> None:
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(spec_bodies())
    def one(body: dict[str, Any]) -> None:
        assert not problems("anthropic", "CreateMessageParams", body)
        _check(base, "/v1/messages", body, mutant=False)
    one()


async def test_bodies_the_spec_allows_are_served_and_conform(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(_config(upstream))
    await asyncio.to_thread(_run_spec, router.url)
