"""A bounded, seeded property-based run of the OpenAI routes against OpenAI's published
schema (issue 30): ``tests/conformance/openai.json``, extracted from the spec's
``openapi.yaml`` (2.3.0) by ``tests/conformance/extract.py``, read offline.

``/v1/responses``: hypothesis draws request bodies (each field's allowed values drawn
from the spec's own schema of that field by hypothesis-jsonschema; one time in four a
value from ``tests/fuzz.py``'s ``WRONG_VALUES`` instead), they go over a socket to a
router in front of the fake upstream (a translated ``chat`` member and a ``native``
one), and:

- no answer is a 5xx, and every 4xx body is the spec's ``ErrorResponse``;
- a body the spec's ``CreateResponse`` refuses gets a 4xx, and one it accepts a 200
  (less the whitelisted quirks, ``tests/conformance/quirks.py``);
- every 200 body validates as ``Response``, every streamed event as
  ``ResponseStreamEvent``, and so does a retrieve (JSON, and replayed as events).

The other routes (chat and its chunks, completions and their chunks, embeddings,
models, a model) get a valid body per route and seeded mutations of it: no 5xx, every
200 body and chunk validates.

Fixed seed (``derandomize``) and a bounded count: ``CONFORMANCE_EXAMPLES`` (default 40)
runs more, e.g. ``CONFORMANCE_EXAMPLES=2000 pytest tests/test_conformance.py -n 0``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Any, Final

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator

from llm_router.dialects.responses.check import FIELDS, check_body
from llm_router.errors import BadRequest

from .conformance import VENDORS, document, problems
from .conformance.extract import refs
from .conformance.quirks import completion_chunk, responses_refused
from .conftest import StartRouter, Upstream
from .fuzz import WRONG_VALUES, mutated
from .helpers import AUTH, openai_provider

EXAMPLES: Final = int(os.environ.get("CONFORMANCE_EXAMPLES", "40"))
_SETTINGS: Final = settings(max_examples=EXAMPLES, derandomize=True, database=None,
                            deadline=None, suppress_health_check=list(HealthCheck))


def field_schema(name: str, root: str = "CreateResponse") -> dict[str, Any]:
    """The spec's schema of a (dotted) field of ``root``, through ``allOf``s, ``$ref``s
    and a nullable ``anyOf``'s object branch."""
    schemas = document("openai")["components"]["schemas"]

    def props(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return props(schemas[node["$ref"].rsplit("/", 1)[1]])
        out: dict[str, Any] = dict(node.get("properties", {}))
        for part in node.get("allOf", []) + [b for b in node.get("anyOf", [])
                                              if b.get("type") != "null"]:
            out.update(props(part))
        return out

    node: dict[str, Any] = {"$ref": f"#/components/schemas/{root}"}
    for step in name.split("."):
        node = props(node)[step]
    return node


@functools.cache
def _spec_values(name: str) -> st.SearchStrategy[Any]:
    """hypothesis-jsonschema's strategy for the spec's schema of field ``name``."""
    schemas = document("openai")["components"]["schemas"]

    def inline(node: Any) -> Any:  # these fields' schemas are not recursive
        if isinstance(node, list):
            return [inline(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return inline(schemas[node["$ref"].rsplit("/", 1)[1]])
        return {k: inline(v) for k, v in node.items() if k != "discriminator"}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_schema(inline(field_schema(name)))


# The fields drawn, each from its schema in the spec. hypothesis-jsonschema 0.23 draws
# scalars and lists well but fails on objects under current hypothesis, and cannot draw
# the recursive ``input`` and ``tools`` schemas at all: those are drawn by hand below.
SPEC_FIELDS: Final = (
    "instructions", "user", "prompt_cache_key", "safety_identifier", "store",
    "parallel_tool_calls", "temperature", "top_p", "top_logprobs", "max_output_tokens",
    "max_tool_calls", "truncation", "service_tier", "prompt_cache_retention", "include",
    "reasoning.effort", "reasoning.summary", "text.verbosity", "tool_choice")
HAND_FIELDS: Final[dict[str, st.SearchStrategy[Any]]] = {
    "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
}
_INPUT = st.one_of(
    st.text(min_size=1, max_size=30),
    st.lists(st.fixed_dictionaries({
        "role": st.sampled_from(["user", "assistant", "system", "developer"]),
        "content": st.text(max_size=20)}), min_size=1, max_size=3))


@functools.cache
def _allowed(name: str) -> st.SearchStrategy[Any]:
    if name in HAND_FIELDS:
        return HAND_FIELDS[name]
    if name == "tool_choice":  # the string modes: a function choice needs tools
        return st.sampled_from(["auto", "none"])
    # The spec bounds no integer: keep them within what JSON parsers take (64 bits).
    return _spec_values(name).filter(lambda v: not isinstance(v, int) or abs(v) < 2**62)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A body: some fields at a value their schema allows, some at a wrong one."""
    body: dict[str, Any] = {"model": draw(st.sampled_from(["g", "n"])), "input": draw(_INPUT),
                            "stream": draw(st.booleans())}
    names = sorted((*SPEC_FIELDS, *HAND_FIELDS))
    for name in draw(st.lists(st.sampled_from(names), max_size=5, unique=True)):
        wrong = draw(st.integers(0, 3)) == 0
        value = draw(st.sampled_from(WRONG_VALUES)) if wrong else draw(_allowed(name))
        head, _, rest = name.partition(".")
        if rest:
            if not isinstance(body.get(head), dict):
                body[head] = {}
            body[head][rest] = value
        else:
            body[head] = value
    return body


def _events(raw: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in raw.splitlines()
            if line.startswith(b"data: ") and line != b"data: [DONE]"]


def _conforms(name: str, instance: Any, context: Any) -> None:
    found = problems("openai", name, instance)
    assert not found, f"{found[:5]}\nfor {json.dumps(context)[:1500]}"


class _Client:
    """A blocking HTTP client over urllib (stdlib): status and body, never a raise."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, path: str, body: dict[str, Any] | None = None,
             query: dict[str, str] | None = None, method: str | None = None
             ) -> tuple[int, bytes]:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(
            url, data=None if body is None else json.dumps(body).encode(), method=method,
            headers={**AUTH, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        assert status < 500, (path, body, raw[:1000])
        if status >= 400:
            _conforms("ErrorResponse", orjson.loads(raw), (path, body))
        return status, raw


def _check_responses(client: _Client, body: dict[str, Any]) -> None:
    status, raw = client.call("/v1/responses", body)
    refused = responses_refused(body)
    if refused:
        assert 400 <= status < 500, (refused, body, status, raw[:500])
        return
    assert status == 200, (body, raw[:500])
    if body.get("stream"):
        events = _events(raw)
        assert events, body
        for event in events:
            _conforms("ResponseStreamEvent", event, body)
        final = events[-1]["response"]
    else:
        final = orjson.loads(raw)
    _conforms("Response", final, body)
    if final.get("store") is False:
        return
    status, raw = client.call(f"/v1/responses/{final['id']}")
    assert status == 200
    _conforms("Response", orjson.loads(raw), body)
    status, raw = client.call(f"/v1/responses/{final['id']}", query={"stream": "true"})
    assert status == 200
    for event in _events(raw):
        _conforms("ResponseStreamEvent", event, body)


def _run_responses(base: str) -> None:
    client = _Client(base)

    @_SETTINGS
    @given(bodies())
    def one(body: dict[str, Any]) -> None:
        _check_responses(client, body)
    one()
    # A delete: the spec gives its 200 no body schema; afterwards the id is unknown.
    raw = client.call("/v1/responses", {"model": "g", "input": "hi"})[1]
    response_id = orjson.loads(raw)["id"]
    assert client.call(f"/v1/responses/{response_id}", method="DELETE")[0] == 200
    assert client.call(f"/v1/responses/{response_id}")[0] == 404


async def test_responses_answers_conform_to_the_published_schema(
        start_router: StartRouter, upstream: Upstream) -> None:
    config = {"providers": [openai_provider("oa", upstream),
                            openai_provider("nat", upstream, responses="native")],
              "groups": [{"name": "g", "models": [{"provider": "oa", "name": "gpt-up"}]},
                         {"name": "n", "models": [{"provider": "nat", "name": "gpt-n"}]}]}
    router = await start_router(config)
    # The router serves on this loop; the seeded run drives it from a thread over sockets.
    await asyncio.to_thread(_run_responses, router.url)


# The other routes: a valid body per route, then seeded mutations of it (tests/fuzz.py).
SEEDS: Final[dict[str, dict[str, Any]]] = {
    "/v1/chat/completions": {
        "model": "g", "max_tokens": 8, "temperature": 0.5, "stream": False,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    "/v1/completions": {"model": "g", "prompt": ["say", "this"], "max_tokens": 5,
                        "stream": False, "stream_options": {"include_usage": True}},
    "/v1/embeddings": {"model": "g", "input": ["one", "two"]},
}


def _check_openai_route(client: _Client, path: str, body: dict[str, Any]) -> None:
    status, raw = client.call(path, body)
    if status != 200:
        return
    operation = document("openai")["operations"][f"POST {path}"]
    if body.get("stream") is True and path != "/v1/embeddings":
        events = _events(raw)
        assert events, (path, body)
        for event in events:
            if path == "/v1/completions":  # no chunk schema: quirks.completion_chunk
                _conforms(operation["response"], completion_chunk(event), body)
            else:
                _conforms(operation["stream"], event, body)
    else:
        _conforms(operation["response"], orjson.loads(raw), body)


def _run_openai_routes(base: str) -> None:
    client = _Client(base)
    status, raw = client.call("/v1/models")
    assert status == 200
    listed = orjson.loads(raw)
    _conforms("ListModelsResponse", listed, "/v1/models")
    for entry in listed["data"]:
        status, raw = client.call(f"/v1/models/{entry['id']}")
        assert status == 200
        _conforms("Model", orjson.loads(raw), entry)

    @_SETTINGS
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


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_extracted_schemas_are_whole_and_valid_json_schema(vendor: str) -> None:
    """Every schema is valid 2020-12, every ``$ref`` lands on an extracted component,
    every operation names one, and the source is noted (extract.py wrote it)."""
    doc = document(vendor)
    assert {"spec_version", "sha256", "upstream", "package"} <= doc["source"].keys()
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        for ref in refs(schema):
            assert ref.rsplit("/", 1)[1] in schemas, (name, ref)
    for operation in doc["operations"].values():
        for name in operation.values():
            assert name is None or name in schemas


def _enums(node: Any) -> list[Any]:
    """The enum values a field's schema lists (through anyOf/oneOf branches)."""
    values = list(node.get("enum", ()))
    for branch in [*node.get("anyOf", ()), *node.get("oneOf", ())]:
        values += _enums(branch)
    if "$ref" in node:
        values += _enums(document("openai")["components"]["schemas"][
            node["$ref"].rsplit("/", 1)[1]])
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        values += _enums(node["items"])
    return values


@pytest.mark.parametrize("name", [n for n, _ in FIELDS if _enums(field_schema(n))])
def test_the_edge_takes_exactly_the_enum_values_the_spec_lists(name: str) -> None:
    """No drift between check.py's enums and the spec's: each value the spec lists is
    taken, and a value it does not list is refused (naming the field)."""
    values = _enums(field_schema(name))
    many = field_schema(name).get("type") == "array" or any(
        b.get("type") == "array" for b in field_schema(name).get("anyOf", ()))
    for value in values:
        check_body(_nested(name, [value] if many else value))
    with pytest.raises(BadRequest) as refused:
        check_body(_nested(name, ["not-a-value"] if many else "not-a-value"))
    assert refused.value.param == name


def _nested(name: str, value: Any) -> dict[str, Any]:
    head, _, rest = name.partition(".")
    return {head: _nested(rest, value) if rest else value}
