"""The Responses API's constrained fields at the edge, and the schema fixes (issue 30).

Every field OpenAI's schema constrains is declared once in
``llm_router.dialects.responses.check.FIELDS``; the table here sends a value each
declaration must refuse, over a socket to a router in front of the fake upstream, and
expects a 400 naming that field with nothing sent upstream. Then: the translated
Response's usage carries ``cache_write_tokens``; a null ``parallel_tool_calls`` is
echoed as its default; ``GET /v1/responses/{id}?stream=true`` replays the stored
response as its event stream (and bad query values are 400s); ``/v1/completions``
takes ``"prompt": null``.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from llm_router.dialects.responses.check import FIELDS

from .conftest import StartRouter, Upstream
from .helpers import AUTH
from .responses_members import chat_member

# One invalid value per declared field (a dotted name nests the value).
INVALID: dict[str, Any] = {
    "instructions": 5, "previous_response_id": 3, "user": ["u"], "prompt_cache_key": 7,
    "safety_identifier": {"a": 1}, "store": "yes", "background": 1, "stream": "true",
    "parallel_tool_calls": "no", "metadata": {"k": 1}, "temperature": 7, "top_p": -1,
    "top_logprobs": 21, "max_output_tokens": 0, "max_tool_calls": -1, "truncation": 0,
    "service_tier": "AAA", "prompt_cache_retention": "in-memory", "include": ["nope"],
    "stream_options": "x", "stream_options.include_obfuscation": "x", "reasoning": "x",
    "reasoning.effort": "extreme", "reasoning.summary": "long",
    "reasoning.generate_summary": 3, "text": [], "text.verbosity": "AAA", "tools": {},
}
# Valid edge values that must pass (the bounds are inclusive).
VALID: list[dict[str, Any]] = [
    {"temperature": 0, "top_p": 1, "top_logprobs": 20, "truncation": "auto"},
    {"temperature": 2.0, "top_p": 0.0, "top_logprobs": 0, "service_tier": "flex",
     "reasoning": {"effort": "minimal", "summary": "auto"}, "text": {"verbosity": "low"},
     "include": ["reasoning.encrypted_content"], "metadata": {"k" * 64: "v" * 512},
     "prompt_cache_key": "k", "safety_identifier": "s", "parallel_tool_calls": None},
    # The spec's spelling (and the openai SDK's), not the router's old "in-memory".
    {"prompt_cache_retention": "in_memory", "safety_identifier": "s" * 64},
]


def _nested(name: str, value: Any) -> dict[str, Any]:
    head, _, rest = name.partition(".")
    return {head: _nested(rest, value) if rest else value}


def test_every_declared_field_has_an_invalid_case() -> None:
    assert sorted(INVALID) == sorted(name for name, _ in FIELDS)


async def test_each_constrained_field_is_refused_with_a_400_naming_it(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(chat_member(upstream))
    for name, value in INVALID.items():
        body = {"model": "g", "input": "x", **_nested(name, value)}
        async with http.post(router.url + "/v1/responses", headers=AUTH, json=body) as resp:
            error = (await resp.json())["error"]
            assert resp.status == 400, (name, error)
            assert error["param"] == name and f"'{name}'" in error["message"], error
    too_many = {f"k{i}": "v" for i in range(17)}
    async with http.post(router.url + "/v1/responses", headers=AUTH,
                         json={"model": "g", "input": "x", "metadata": too_many}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "metadata"
    async with http.post(router.url + "/v1/responses", headers=AUTH,
                         json={"model": "g", "input": "x", "safety_identifier": "s" * 65}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "safety_identifier"
    # Several bad fields: the 400 names the first in FIELDS' order, whatever the body's.
    body = {"model": "g", "input": "x", "reasoning": {"effort": "extreme"}, "top_p": -1,
            "store": "yes"}
    async with http.post(router.url + "/v1/responses", headers=AUTH, json=body) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "store"
    body = {"model": "g", "input": "x", "reasoning": {"effort": "extreme"}, "top_p": -1}
    async with http.post(router.url + "/v1/responses", headers=AUTH, json=body) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "top_p"
    assert not upstream.fake.requests
    for extra in VALID:
        async with http.post(router.url + "/v1/responses", headers=AUTH,
                             json={"model": "g", "input": "x", **extra}) as resp:
            assert resp.status == 200, (extra, await resp.text())


async def test_translated_usage_and_null_echoes_match_the_schema(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(chat_member(upstream))
    body = {"model": "g", "input": "x", "parallel_tool_calls": None, "tool_choice": None,
            "store": None, "text": None, "metadata": None, "tools": None}
    async with http.post(router.url + "/v1/responses", headers=AUTH, json=body) as resp:
        answer = await resp.json()
    assert resp.status == 200
    assert answer["usage"]["input_tokens_details"] == {"cached_tokens": 0,
                                                       "cache_write_tokens": 0}
    assert answer["parallel_tool_calls"] is True and answer["tool_choice"] == "auto"
    assert answer["store"] is True and answer["metadata"] == {} and answer["tools"] == []
    # Typed string, not nullable, not required: left out when not sent, never null.
    assert not {"user", "prompt_cache_key", "safety_identifier"} & answer.keys()
    async with http.post(router.url + "/v1/responses", headers=AUTH,
                         json={**body, "stream": True}) as resp:
        events = [orjson.loads(line[6:]) for line in (await resp.read()).splitlines()
                  if line.startswith(b"data: ")]
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["input_tokens_details"]["cache_write_tokens"] == 0
    assert events[0]["response"]["parallel_tool_calls"] is True
    # usage is an object, not nullable: absent until known, not null.
    assert "usage" not in events[0]["response"] and "usage" not in events[1]["response"]


def _sse(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.splitlines() if line.startswith(b"data: ")]


async def test_retrieve_with_stream_replays_the_stored_response_as_events(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(chat_member(upstream))
    created = await router.openai().responses.create(model="g", input="hello there")
    url = f"{router.url}/v1/responses/{created.id}"
    async with http.get(url, headers=AUTH, params={"stream": "true"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = _sse(await resp.read())
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress",
                         "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    async with http.get(url, headers=AUTH) as resp:
        assert events[-1]["response"] == await resp.json()
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == created.output_text
    async with http.get(url, headers=AUTH,
                        params={"stream": "true", "starting_after": "2"}) as resp:
        later = _sse(await resp.read())
    assert later == events[3:]
    async with http.get(url, headers=AUTH, params={"stream": "false"}) as resp:
        assert (await resp.json())["id"] == created.id
    # The SDK's own retrieve(stream=True) reads the replay as a typed event stream.
    replay = await router.openai().responses.retrieve(created.id, stream=True)
    assert [e.type async for e in replay] == kinds
    for params, param in [({"stream": "abc"}, "stream"),
                          ({"starting_after": "x"}, "starting_after"),
                          ({"starting_after": "-3"}, "starting_after"),
                          ({"include_obfuscation": "maybe"}, "include_obfuscation"),
                          ({"include[]": "nope"}, "include")]:
        async with http.get(url, headers=AUTH, params=params) as resp:
            assert resp.status == 400, params
            assert (await resp.json())["error"]["param"] == param


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_take_a_null_prompt(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        stream: bool) -> None:
    router = await start_router(chat_member(upstream))
    body = {"model": "g", "prompt": None, "max_tokens": 3, "stream": stream}
    async with http.post(router.url + "/v1/completions", headers=AUTH, json=body) as resp:
        assert resp.status == 200, await resp.text()
    sent = upstream.fake.requests[-1].body
    assert sent is not None and "prompt" in sent and sent["prompt"] is None
    async with http.post(router.url + "/v1/completions", headers=AUTH,
                         json={"model": "g", "prompt": 5}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "prompt"
