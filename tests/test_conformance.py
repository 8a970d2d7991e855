"""A bounded, seeded property-based run of ``/v1/responses`` against the published
schema (issue 30): hypothesis draws request bodies, they go over a socket to a router in
front of the fake upstream (a translated ``chat`` member and a ``native`` one), and:

- no answer is a 5xx;
- a body that breaks a field the schema constrains gets a 4xx (as often as not a drawn
  field is broken: a value from ``tests/fuzz.py``'s ``WRONG_VALUES``);
- every 200 body validates, strictly, as the openai SDK's ``Response``, every streamed
  event as its ``ResponseStreamEvent``, and a retrieve (JSON, and replayed as events)
  likewise.

The schema is the openai SDK's own types (``openai.types.responses``), which its
generator derives from OpenAI's ``openapi.yaml``: installed with the test extra, no
download. Whitelisted spec quirks, each where it is applied: a completions stream chunk
has a null ``finish_reason`` until its last chunk (:func:`_completion_chunk_quirk`).
Routes covered: ``/v1/responses`` POST (JSON and stream) and GET (JSON and replayed
stream), ``/v1/chat/completions`` (JSON and chunks), ``/v1/completions`` (JSON and
chunks), ``/v1/embeddings``, ``/v1/models`` and ``/v1/models/{id}``.

Fixed seed (``derandomize``) and a bounded count: ``CONFORMANCE_EXAMPLES`` (default 40)
runs more, e.g. ``CONFORMANCE_EXAMPLES=2000 pytest tests/test_conformance.py -n 0``.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson
import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from .conftest import AUTH, StartRouter, Upstream, openai_provider
from .fuzz import WRONG_VALUES, mutated

EXAMPLES = int(os.environ.get("CONFORMANCE_EXAMPLES", "40"))
_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)

# Values the schema allows, per field it constrains (a dotted name nests).
ALLOWED: dict[str, st.SearchStrategy[Any]] = {
    "instructions": st.text(max_size=20),
    "user": st.text(max_size=10),
    "prompt_cache_key": st.text(max_size=10),
    "safety_identifier": st.text(max_size=10),
    "store": st.booleans(),
    "parallel_tool_calls": st.booleans(),
    "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "top_logprobs": st.integers(0, 20),
    "max_output_tokens": st.integers(1, 50),
    "truncation": st.sampled_from(["auto", "disabled"]),
    "service_tier": st.sampled_from(["auto", "default", "flex", "scale", "priority"]),
    "include": st.lists(st.sampled_from(["reasoning.encrypted_content",
                                         "message.output_text.logprobs"]), max_size=2),
    "reasoning.effort": st.sampled_from(["minimal", "low", "medium", "high"]),
    "reasoning.summary": st.sampled_from(["auto", "concise", "detailed"]),
    "text.verbosity": st.sampled_from(["low", "medium", "high"]),
    "tool_choice": st.sampled_from(["auto", "none", "required"]),
}
_INPUT = st.one_of(
    st.text(min_size=1, max_size=30),
    st.lists(st.fixed_dictionaries({
        "role": st.sampled_from(["user", "assistant", "system", "developer"]),
        "content": st.text(max_size=20)}), min_size=1, max_size=3))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A body, and whether it breaks a field the schema constrains."""
    body: dict[str, Any] = {"model": draw(st.sampled_from(["g", "n"])), "input": draw(_INPUT),
                            "stream": draw(st.booleans())}
    broken = False
    for name in draw(st.lists(st.sampled_from(sorted(ALLOWED)), max_size=5, unique=True)):
        if draw(st.integers(0, 3)) == 0:
            value, breaks = draw(st.sampled_from(WRONG_VALUES)), True
        else:
            value, breaks = draw(ALLOWED[name]), False
        head, _, rest = name.partition(".")
        if rest:
            if not isinstance(body.get(head), dict):
                body[head] = {}
            body[head][rest] = value
        else:
            body[head] = value
        # A wrong value can still be one the schema allows (null, or a boolean where
        # a boolean goes): only a value the allowed strategy could not draw counts.
        broken = broken or (breaks and value is not None
                            and not _allowed_type(name, value))
    return body, broken


def _allowed_type(name: str, value: Any) -> bool:
    if name in ("store", "parallel_tool_calls"):
        return isinstance(value, bool)
    if name in ("instructions", "user", "prompt_cache_key", "safety_identifier"):
        return isinstance(value, str)
    if name == "metadata":
        return value == {}
    if name == "include":
        return value == []
    if name == "max_output_tokens":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if name == "top_logprobs":
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 20
    if name in ("temperature", "top_p"):
        high = 2 if name == "temperature" else 1
        return isinstance(value, int | float) and not isinstance(value, bool) \
            and 0 <= value <= high
    return False


def _events(raw: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in raw.splitlines()
            if line.startswith(b"data: ") and line != b"data: [DONE]"]


class _Client:
    """A blocking HTTP client over urllib (stdlib): status and body, never a raise."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, path: str, body: dict[str, Any] | None = None,
             query: dict[str, str] | None = None) -> tuple[int, bytes]:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(
            url, data=None if body is None else json.dumps(body).encode(),
            headers={**AUTH, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def _check_exchange(client: _Client, body: dict[str, Any], broken: bool) -> None:
    status, raw = client.call("/v1/responses", body)
    assert status < 500, (body, raw)
    if broken:
        assert 400 <= status < 500, (body, raw)
    if status != 200:
        return
    if body.get("stream"):
        events = _events(raw)
        assert events, body
        for event in events:
            _EVENT.validate_python(event, strict=True)
        final = events[-1]["response"]
    else:
        final = orjson.loads(raw)
    Response.model_validate(final, strict=True)
    if final.get("store") is False:
        return
    status, raw = client.call(f"/v1/responses/{final['id']}")
    assert status == 200
    Response.model_validate(orjson.loads(raw), strict=True)
    status, raw = client.call(f"/v1/responses/{final['id']}", query={"stream": "true"})
    assert status == 200
    for event in _events(raw):
        _EVENT.validate_python(event, strict=True)


def _run(base: str) -> None:
    client = _Client(base)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(bodies())
    def one(case: tuple[dict[str, Any], bool]) -> None:
        _check_exchange(client, *case)
    one()


async def test_responses_answers_conform_to_the_published_schema(
        start_router: StartRouter, upstream: Upstream) -> None:
    config = {"providers": [openai_provider("oa", upstream),
                            openai_provider("nat", upstream, responses="native")],
              "groups": [{"name": "g", "models": [{"provider": "oa", "name": "gpt-up"}]},
                         {"name": "n", "models": [{"provider": "nat", "name": "gpt-n"}]}]}
    router = await start_router(config)
    # The router serves on this loop; the seeded run drives it from a thread over sockets.
    await asyncio.to_thread(_run, router.url)


# The other routes: a valid body per route, then seeded mutations of it (tests/fuzz.py).
SEEDS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "g", "max_tokens": 8, "temperature": 0.5, "stream": False,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    "/v1/completions": {"model": "g", "prompt": ["say", "this"], "max_tokens": 5,
                        "stream": False},
    "/v1/embeddings": {"model": "g", "input": ["one", "two"]},
}
_SCHEMAS: dict[str, tuple[type[pydantic.BaseModel], type[pydantic.BaseModel] | None]] = {
    "/v1/chat/completions": (ChatCompletion, ChatCompletionChunk),
    "/v1/completions": (Completion, Completion),  # a completions chunk is a Completion
    "/v1/embeddings": (CreateEmbeddingResponse, None),
}


def _completion_chunk_quirk(event: dict[str, Any]) -> None:
    """Whitelisted spec quirk: the spec has no completions chunk schema (a chunk is a
    CreateCompletionResponse), whose ``finish_reason`` is a non-null enum; OpenAI's own
    stream sends null until the last chunk, as the router and every upstream do."""
    for choice in event.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason") is None:
            choice["finish_reason"] = "stop"


def _check_openai_route(client: _Client, path: str, body: dict[str, Any]) -> None:
    status, raw = client.call(path, body)
    assert status < 500, (path, body, raw)
    if status != 200:
        return
    whole, chunk = _SCHEMAS[path]
    if body.get("stream") is True and chunk is not None:
        for event in _events(raw):
            if path == "/v1/completions":
                _completion_chunk_quirk(event)
            chunk.model_validate(event, strict=True)
    else:
        whole.model_validate(orjson.loads(raw), strict=True)


def _run_openai_routes(base: str) -> None:
    client = _Client(base)
    status, raw = client.call("/v1/models")
    assert status == 200
    listed = orjson.loads(raw)
    assert listed["object"] == "list"
    for entry in listed["data"]:
        Model.model_validate(entry, strict=True)
        status, raw = client.call(f"/v1/models/{entry['id']}")
        assert status == 200
        Model.model_validate(orjson.loads(raw), strict=True)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(SEEDS)), st.randoms(use_true_random=False),
           st.booleans(), st.booleans())
    def one(path: str, rng: Any, stream: bool, mutate: bool) -> None:
        body = {**SEEDS[path], "stream": stream} if "stream" in SEEDS[path] else SEEDS[path]
        _check_openai_route(client, path, mutated(rng, body) if mutate else body)
    one()


async def test_openai_routes_answer_what_the_published_schema_says(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router({
        "providers": [openai_provider("oa", upstream)],
        "groups": [{"name": "g", "models": [{"provider": "oa", "name": "gpt-up"}]}]})
    await asyncio.to_thread(_run_openai_routes, router.url)
