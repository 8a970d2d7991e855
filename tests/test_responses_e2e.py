"""POST /v1/responses end to end: the real openai SDK → router → fake upstreams.

Three kinds of member: an OpenAI-compatible server without a Responses API (translated
to Chat Completions), an Anthropic provider (translated on to Messages), and a
``responses: native`` member (the body passed through to the fake's own /v1/responses).
The fake records what it received, so each test checks both ends.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from llm_router.config import ConfigError, parse_config
from llm_router.testing.upstream import Fault

from .conftest import StartRouter, Upstream
from .helpers import AUTH, ROUTER_KEY, metric_samples, openai_provider, total
from .responses_members import anthropic_member, chat_member, native_member

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                          "required": ["location"]}}


async def test_create_through_a_chat_member_translates_both_ways(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(chat_member(upstream))
    client = router.openai()
    raw = await client.responses.with_raw_response.create(
        model="g", input="hello there", instructions="be brief", max_output_tokens=5,
        metadata={"ticket": "7"})
    r = raw.parse()
    assert raw.headers["X-Router-Provider"] == "oa"
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == "lorem ipsum dolor sit amet" and r.metadata == {"ticket": "7"}
    assert r.usage is not None and r.usage.output_tokens == 5
    assert r.usage.total_tokens == r.usage.input_tokens + 5
    sent = upstream.fake.requests[-1]
    assert sent.path == "/v1/chat/completions" and sent.body is not None
    assert sent.body["messages"] == [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": "hello there"}]
    assert sent.body["model"] == "gpt-up" and sent.body["max_tokens"] == 5
    cost = float(raw.headers["X-Router-Cost-USD"])
    assert cost == pytest.approx((r.usage.input_tokens * 1.0 + 5 * 2.0) / 1e6)
    samples = await metric_samples(router.url)
    assert any(k.startswith("llm_router_requests_total{") and "route=/v1/responses" in k
               and "status=200" in k for k in samples)


async def test_stream_through_a_chat_member_is_the_full_event_sequence(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(chat_member(upstream))
    client = router.openai()
    async with client.responses.stream(model="g", input="hello there") as stream:
        events = [e async for e in stream]
        final = await stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert final.status == "completed"
    assert final.output_text == "".join(e.delta for e in events
                                        if e.type == "response.output_text.delta")
    assert final.usage is not None and final.usage.output_tokens == 16
    assert (await client.responses.retrieve(final.id)).output_text == final.output_text


async def test_tools_and_previous_response_id_continue_a_translated_conversation(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(chat_member(upstream))
    client = router.openai()
    first = await client.responses.create(model="g", input="weather in Paris?",
                                          tools=[WEATHER])  # type: ignore[list-item]
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"location": "Paris"}'
    second = await client.responses.create(
        model="g", previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.status == "completed" and second.output_text
    assert second.previous_response_id == first.id
    sent = upstream.fake.requests[-1].body
    assert sent is not None
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id,
                                   "content": "sunny"}
    # The stream helper parses streamed function calls too.
    async with client.responses.stream(model="g", input="weather?",
                                       tools=[WEATHER]) as stream:  # type: ignore[list-item]
        async for _ in stream:
            pass
        streamed = await stream.get_final_response()
    assert [(o.type, o.arguments) for o in streamed.output] == [  # type: ignore[union-attr]
        ("function_call", '{"location": "Paris"}')]


async def test_anthropic_member_serves_responses_through_messages(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(anthropic_member(upstream))
    client = router.openai()
    r = await client.responses.create(model="g", input="hi", instructions="be brief",
                                      max_output_tokens=3)
    assert r.output_text == "lorem ipsum dolor" and r.status == "incomplete"
    sent = upstream.fake.requests[-1]
    assert sent.path == "/v1/messages" and sent.body is not None
    assert sent.body["system"] == "be brief" and sent.body["max_tokens"] == 3
    async with client.responses.stream(model="g", input="hi", tools=[WEATHER]  # type: ignore[list-item]
                                       ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == '{"location": "Paris"}'  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.input_tokens > 0


async def test_native_member_gets_the_body_untouched_and_follow_ups_return_to_its_key(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(native_member(upstream, ["sk-a", "sk-b"]))
    client = router.openai()
    first = await client.responses.create(model="g", input="hi", store=True,
                                          reasoning={"effort": "low"})
    sent = upstream.fake.requests[-1]
    assert sent.path == "/v1/responses" and sent.body is not None
    assert sent.body["input"] == "hi" and sent.body["reasoning"] == {"effort": "low"}
    assert sent.body["model"] == "gpt-native"
    owner_key = sent.api_key
    previous = first.id
    # The fake only knows a response under the key that created it: each follow-up must
    # go back there, although inverse weight would otherwise spread them over both keys.
    for _ in range(4):
        nxt = await client.responses.create(model="g", input="more",
                                            previous_response_id=previous)
        assert upstream.fake.requests[-1].api_key == owner_key
        previous = nxt.id
    async with client.responses.stream(model="g", input="more",
                                       previous_response_id=previous) as stream:
        kinds = [e.type async for e in stream]
        final = await stream.get_final_response()
    assert upstream.fake.requests[-1].api_key == owner_key
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.usage is not None and final.usage.output_tokens == 16
    # Usage is read from the native answers: the body's, and response.completed's.
    raw = await client.responses.with_raw_response.create(model="g", input="hi")
    usage = raw.parse().usage
    assert usage is not None
    assert float(raw.headers["X-Router-Cost-USD"]) == pytest.approx(
        (usage.input_tokens * 1.0 + usage.output_tokens * 2.0) / 1e6)
    samples = await metric_samples(router.url)
    completion = total(samples, "llm_router_tokens_total", provider="nat", kind="completion")
    assert completion == 16 * 7  # six answers and one stream of 16 tokens each


async def test_a_pinned_native_conversation_fails_clearly_when_its_key_is_down(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(native_member(upstream, ["sk-a", "sk-b"]))
    client = router.openai()
    first = await client.responses.create(model="g", input="hi")
    owner_key = upstream.fake.requests[-1].api_key
    upstream.fake.add_fault(Fault(status=500, times=None, key=owner_key))
    seen = len(upstream.fake.requests)
    async with http.post(router.url + "/v1/responses", headers=AUTH, json={
            "model": "g", "input": "more", "previous_response_id": first.id}) as resp:
        assert resp.status == 502
        body = await resp.json()
        assert resp.headers["X-Router-Attempts"] == "1"
    assert first.id in body["error"]["message"] and "only it" in body["error"]["message"]
    # No silent answer from the other key, which does not hold the conversation.
    assert [r.api_key for r in upstream.fake.requests[seen:]] == [owner_key]


async def test_hosted_tools_and_background_are_refused_on_chat_members_only(
        start_router: StartRouter, make_upstream: Any) -> None:
    chat_up, native_up = await make_upstream(), await make_upstream()
    router = await start_router({
        "providers": [openai_provider("oa", chat_up, responses_unsupported_tools="refuse"),
                      openai_provider("nat", native_up, responses="native")],
        "groups": [{"name": "chat-only", "models": [{"provider": "oa", "name": "m"}]},
                   {"name": "mixed", "models": [{"provider": "oa", "name": "m"},
                                                {"provider": "nat", "name": "m"}]}]})
    client = router.openai()
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="chat-only", input="news?",
                                      tools=[{"type": "web_search"}])
    assert info.value.body["param"] == "tools[0]"  # type: ignore[index]
    assert "web_search" in info.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="chat-only", input="x", background=True)
    assert info.value.body["param"] == "background"  # type: ignore[index]
    assert not chat_up.fake.requests
    for _ in range(3):  # the mixed group sends them to its native member every time
        r = await client.responses.with_raw_response.create(
            model="mixed", input="news?", tools=[{"type": "web_search"}])
        assert r.headers["X-Router-Provider"] == "nat"
    assert native_up.fake.requests[-1].body["tools"] == [{"type": "web_search"}]  # type: ignore[index]


async def test_store_false_keeps_nothing_and_delete_forgets(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(chat_member(upstream))
    client = router.openai()
    unstored = await client.responses.create(model="g", input="hi", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="g", input="more",
                                      previous_response_id=unstored.id)
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]
    kept = await client.responses.create(model="g", input="hi")
    assert (await client.responses.retrieve(kept.id)).id == kept.id
    await client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(kept.id)


async def test_responses_belong_to_the_user_who_created_them(
        start_router: StartRouter, upstream: Upstream) -> None:
    config = chat_member(upstream)
    config["users"] = [{"name": "alice", "keys": [{"key": "sk-alice"}]},
                       {"name": "bob", "keys": [{"key": "sk-bob"}]}]
    router = await start_router(config)
    mine = await router.openai("sk-alice").responses.create(model="g", input="secret")
    bob = router.openai("sk-bob")
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(mine.id)
    with pytest.raises(openai.BadRequestError):
        await bob.responses.create(model="g", input="x", previous_response_id=mine.id)


async def test_bad_responses_requests_get_clear_400s(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(chat_member(upstream))
    for body, param in [({"model": "g"}, "input"),
                        ({"model": "g", "input": 5}, "input"),
                        ({"model": "g", "input": "x", "previous_response_id": 3},
                         "previous_response_id"),
                        ({"model": "g", "input": "x", "store": "yes"}, "store"),
                        ({"model": "g", "input": "x", "previous_response_id": "resp_nope"},
                         "previous_response_id")]:
        async with http.post(router.url + "/v1/responses", headers=AUTH, json=body) as resp:
            assert resp.status == 400, body
            assert (await resp.json())["error"]["param"] == param
    assert not upstream.fake.requests


async def test_a_wrongly_typed_input_is_named_with_what_is_wrong(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(chat_member(upstream))
    wrong: Any = 5
    with pytest.raises(openai.BadRequestError) as info:
        await router.openai().responses.create(model="g", input=wrong)
    assert info.value.body == {  # type: ignore[comparison-overlap]
        "message": "'input' must be a string or a list of input items, not a number.",
        "type": "invalid_request_error", "param": "input", "code": None}
    with pytest.raises(openai.BadRequestError) as missing:
        await router.openai().responses.create(model="g", input=None)  # type: ignore[arg-type]
    assert missing.value.body["message"].startswith("'input' is required")  # type: ignore[index]


async def test_errors_echo_a_bounded_part_of_what_was_sent(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(chat_member(upstream))
    huge = "resp_" + "a" * 100_000
    with pytest.raises(openai.BadRequestError) as info:
        await router.openai().responses.create(model="g", input="x", previous_response_id=huge)
    message = info.value.body["message"]  # type: ignore[index]
    assert len(message) < 500 and huge[:200] in message and "100,005 characters" in message
    for path in ("/v1/responses/" + huge[:5000], "/v1/models/" + huge[:5000]):
        async with http.get(router.url + path, headers=AUTH) as resp:
            assert resp.status == 404
            assert len(await resp.read()) < 1000
    async with http.post(router.url + "/v1/chat/completions", headers=AUTH,
                         json={"model": huge, "messages": [{"role": "user", "content": "x"}]}
                         ) as resp:
        assert resp.status == 400  # longer than a model name may be
        assert len(await resp.read()) < 1000


async def test_models_retrieve_answers_for_usable_ids_only(
        start_router: StartRouter, upstream: Upstream) -> None:
    config = chat_member(upstream)
    config["users"] = [{"name": "u", "keys": [{"key": "sk-u"}], "models": ["g"]}]
    router = await start_router(config)
    client = router.openai("sk-u")
    model = await client.models.retrieve("g")
    assert (model.id, model.object, model.owned_by) == ("g", "model", "llm-router")
    for other in ("oa/gpt-up", "nope"):
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve(other)
    admin = await start_router({**chat_member(upstream), "api_key": ROUTER_KEY},
                               name="admin.yaml")
    direct = await admin.openai().models.retrieve("oa/gpt-up")
    assert direct.owned_by == "oa"


async def test_a_stream_cut_mid_way_ends_with_response_failed(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(chat_member(upstream))
    upstream.fake.add_fault(Fault(status=0, cut_after_chunks=4))
    async with http.post(router.url + "/v1/responses",
                         headers={**AUTH, "Accept-Encoding": "identity"},
                         json={"model": "g", "input": "hi", "stream": True}) as resp:
        assert resp.status == 200
        raw = await resp.read()
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.failed"
    assert "interrupted" in events[-1]["response"]["error"]["message"]
    # Not kept: a failed answer cannot be continued.
    async with http.get(router.url + f"/v1/responses/{events[0]['response']['id']}",
                        headers=AUTH) as resp:
        assert resp.status == 404


def test_config_declares_the_responses_mode_and_the_store_limits() -> None:
    base = ("providers:\n  - {name: p, type: %s, base_url: 'http://h/v1', api_keys: [k], "
            "responses: %s}\ngroups: [{name: g, models: [{provider: p, name: m}]}]\n")
    cfg = parse_config(base % ("openai", "native") + "responses: {store_max_entries: 5, "
                       "store_max_bytes: 1000, store_ttl_s: 60}\n", env={})
    assert cfg.providers["p"].responses == "native"
    assert (cfg.responses.store_max_entries, cfg.responses.store_max_bytes,
            cfg.responses.store_ttl_s) == (5, 1000, 60)
    assert parse_config(base.replace(", responses: %s", "") % "openai",
                        env={}).providers["p"].responses == "chat"
    for ptype, mode, fragment in [("openai", "nativ", "did you mean 'native'"),
                                  ("anthropic", "native", "anthropic providers have no")]:
        with pytest.raises(ConfigError) as info:
            parse_config(base.replace("http://h/v1", "http://h") % (ptype, mode), env={})
        assert any(p.startswith("providers[0].responses") and fragment in p
                   for p in info.value.problems), info.value.problems


@pytest.fixture
async def erring_upstream(aiohttp_server: Any) -> str:
    """Streams that report an error in-band after some text: Anthropic's ``event: error``,
    and an OpenAI-compatible error chunk followed by ``[DONE]``."""
    async def messages(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = {"type": "message_start", "message": {
            "id": "m1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "usage": {"input_tokens": 5, "output_tokens": 1}}}
        for name, data in [("message_start", start),
                           ("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text",
                                                                      "text": ""}}),
                           ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta",
                                                              "text": "hi"}}),
                           ("error", {"type": "error", "error": {
                               "type": "overloaded_error", "message": "Overloaded"}})]:
            await resp.write(b"event: %b\ndata: %b\n\n" % (name.encode(), orjson.dumps(data)))
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in [{"choices": [{"index": 0, "delta": {"content": "hi"}}]},
                      {"error": {"message": "backend crashed", "type": "server_error"}}]:
            await resp.write(b"data: %b\n\n" % orjson.dumps(chunk))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def test_in_band_upstream_errors_end_the_stream_with_one_response_failed(
        start_router: StartRouter, erring_upstream: str, http: aiohttp.ClientSession) -> None:
    router = await start_router({
        "providers": [
            {"name": "an", "type": "anthropic", "base_url": erring_upstream, "api_keys": ["a"]},
            {"name": "oa", "type": "openai", "base_url": erring_upstream + "/v1",
             "api_keys": ["o"]}],
        "groups": [{"name": "an", "models": [{"provider": "an", "name": "m"}]},
                   {"name": "oa", "models": [{"provider": "oa", "name": "m"}]}]})
    for group, why in (("an", "Overloaded"), ("oa", "backend crashed")):
        async with http.post(router.url + "/v1/responses",
                             headers={**AUTH, "Accept-Encoding": "identity"},
                             json={"model": group, "input": "hi", "stream": True}) as resp:
            raw = await resp.read()
        events = [orjson.loads(line[6:]) for line in raw.split(b"\n")
                  if line.startswith(b"data: ")]
        kinds = [e["type"] for e in events]
        assert kinds.count("response.failed") == 1 and kinds[-1] == "response.failed", kinds
        assert "response.completed" not in kinds
        assert why in events[-1]["response"]["error"]["message"]
    samples = await metric_samples(router.url)
    errors = total(samples, "llm_router_upstream_errors_total", reason="stream_error")
    assert errors == 2
    # What the Anthropic stream reported before failing (5 input tokens) is counted.
    prompt = total(samples, "llm_router_tokens_total", provider="an", kind="prompt")
    assert prompt == 5


async def test_a_cut_follow_up_counts_its_conversation_in_the_prompt_estimate(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(chat_member(upstream))
    first = await router.openai().responses.create(model="g", input="x" * 8000)

    async def prompt_tokens() -> float:
        samples = await metric_samples(router.url)
        return total(samples, "llm_router_tokens_total", kind="prompt")

    before = await prompt_tokens()
    upstream.fake.add_fault(Fault(status=0, cut_after_chunks=2))  # cut before any usage
    async with http.post(router.url + "/v1/responses", headers=AUTH, json={
            "model": "g", "input": "more", "stream": True,
            "previous_response_id": first.id}) as resp:
        await resp.read()
    # The 8,000 characters went upstream again with the follow-up: about 2,000 tokens.
    assert 2000 <= await prompt_tokens() - before < 2300


async def test_a_held_response_never_shows_a_configured_secret(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    config = chat_member(upstream)
    config["providers"] = [openai_provider("oa", upstream, ["sk-upstream-secret"])]
    router = await start_router(config)
    made = await router.openai().responses.create(
        model="g", input="hi", metadata={"note": "key sk-upstream-secret leaked"})
    assert made.metadata == {"note": "key [redacted] leaked"}
    async with http.get(router.url + f"/v1/responses/{made.id}",
                        headers={**AUTH, "Accept-Encoding": "identity"}) as resp:
        held = await resp.read()
    assert b"sk-upstream-secret" not in held and b"[redacted]" in held
