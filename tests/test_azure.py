"""Azure OpenAI as an upstream, over real sockets: the router in front of a fake Azure
resource (llm_router.testing.azure), driven by the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from pytest_aiohttp import AiohttpServer

from llm_router.config import Entra, key_label, parse_config
from llm_router.providers import AttemptFailure
from llm_router.providers.azure import EntraTokens, tokens_for, upstream_url
from llm_router.testing.azure import FILTERED_OUTPUT, FILTERED_PROMPT, SCOPE, FakeAzure
from llm_router.testing.upstream import FakeUpstream

from .conftest import StartRouter
from .helpers import AUTH, HELLO, RELOAD_FAILED, RELOAD_OK, eventually, metric_samples

DEPLOYMENT = "my-gpt4o-deployment"
STYLES = [pytest.param("2024-10-21", id="dated"), pytest.param("v1", id="v1")]
SECRET = "entra-client-secret-value"


class Clock:
    """Monotonic seconds that tests move by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Azure:
    fake: FakeAzure
    root: str  # the resource root: an azure provider's base_url

    def provider(self, api_version: str, name: str = "az", keys: list[Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
        creds: dict[str, Any] = {"api_keys": keys if keys is not None else ["az-key-1"]}
        if "entra" in extra:
            creds = {}
        return {"name": name, "type": "azure", "base_url": self.root,
                "api_version": api_version, **creds, **extra}

    def entra(self, secret: str = SECRET) -> dict[str, str]:
        return {"tenant_id": "tid", "client_id": "cid", "client_secret": secret,
                "token_url": f"{self.root}/tid/oauth2/v2.0/token"}


MakeAzure = Callable[..., Awaitable[Azure]]


@pytest.fixture
async def make_azure(aiohttp_server: AiohttpServer) -> MakeAzure:
    """The fake upstream, its Azure resource configured with ``kw`` (FakeAzure's)."""
    async def make(**kw: Any) -> Azure:
        upstream = FakeUpstream()
        upstream.azure = FakeAzure(**kw)
        server = await aiohttp_server(upstream.app())
        return Azure(upstream.azure, str(server.make_url("")).rstrip("/"))

    return make


def streamed_text(chunks: list[Any]) -> str:
    """The text of chat chunks; Azure's filter-only chunks have choices without a delta."""
    return "".join(c.choices[0].delta.content or "" for c in chunks
                   if c.choices and c.choices[0].delta is not None)


def one_group(*providers: dict[str, Any], models: list[dict[str, Any]] | None = None
              ) -> dict[str, Any]:
    members = models or [{"provider": p["name"], "name": DEPLOYMENT} for p in providers]
    return {"providers": list(providers), "groups": [{"name": "g", "models": members}]}


# ---------------------------------------------------------------- without sockets


@pytest.mark.parametrize(("version", "route", "deployment", "url"), [
    ("2024-10-21", "chat/completions", "gpt-4o",
     "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
     "?api-version=2024-10-21"),
    ("2025-04-01-preview", "embeddings", "emb",
     "https://r.openai.azure.com/openai/deployments/emb/embeddings"
     "?api-version=2025-04-01-preview"),
    ("2024-10-21", "completions", "../../x?y",  # a client-named provider/model stays one segment
     "https://r.openai.azure.com/openai/deployments/..%2F..%2Fx%3Fy/completions"
     "?api-version=2024-10-21"),
    ("v1", "responses", "gpt-4o", "https://r.openai.azure.com/openai/v1/responses"),
], ids=["dated-chat", "dated-preview-embeddings", "dated-hostile-name", "v1-responses"])
def test_upstream_url(version: str, route: str, deployment: str, url: str) -> None:
    cfg = parse_config(f"""
providers:
  - {{name: az, type: azure, base_url: "https://r.openai.azure.com", api_version: "{version}",
     api_keys: [k]}}
groups: [{{name: g, models: [{{provider: az, name: d}}]}}]
""", env={})
    assert upstream_url(cfg.providers["az"], route, deployment) == url


# ---------------------------------------------------------------- the token cache


def entra_config(token_url: str, secret: str = SECRET) -> Entra:
    return Entra(tenant_id="tid", client_id="cid", client_secret=secret, token_url=token_url)


async def test_token_cache_refreshes_before_expiry_and_backs_off_after_failure(
        make_azure: MakeAzure) -> None:
    clock = Clock()
    az = await make_azure(clients={"cid": SECRET}, clock=clock, token_lifetime_s=3600)
    tokens = EntraTokens(clock)
    entra = entra_config(f"{az.root}/tid/oauth2/v2.0/token")
    async with aiohttp.ClientSession() as session:
        first = await tokens.token(session, entra, "az")
        assert await tokens.token(session, entra, "az") == first
        assert az.fake.token_requests == 1
        clock.t += 3600 - 300 - 1  # not yet in the last 5 minutes
        assert await tokens.token(session, entra, "az") == first
        clock.t += 2  # now it is: replaced while still valid
        second = await tokens.token(session, entra, "az")
        assert second != first and az.fake.token_requests == 2

        az.fake.clients = {"cid": "rotated"}  # the next refresh fails ...
        clock.t += 3600 - 300 + 1
        assert await tokens.token(session, entra, "az") == second  # ... the old one serves
        assert az.fake.token_requests == 3
        clock.t += 300  # expired, and still no new one
        with pytest.raises(AttemptFailure) as exc:
            await tokens.token(session, entra, "az")
        assert (exc.value.reason, exc.value.status, exc.value.retry_after) == ("token", None, "5")
        assert "invalid_client" in exc.value.message and SECRET not in exc.value.message
        assert az.fake.token_requests == 4
        with pytest.raises(AttemptFailure):  # within the back-off: not asked again
            await tokens.token(session, entra, "az")
        assert az.fake.token_requests == 4
        clock.t += 5
        az.fake.clients = {"cid": SECRET}
        assert await tokens.token(session, entra, "az") not in (first, second)
        assert az.fake.token_requests == 5


# ---------------------------------------------------------------- chat, both path styles


@pytest.mark.parametrize("version", STYLES)
async def test_chat_plain_and_streamed(make_azure: MakeAzure, start_router: StartRouter,
                                       version: str) -> None:
    az = await make_azure(api_keys={"az-key-1"})
    router = await start_router(one_group(az.provider(version)))
    client = router.openai()

    answer = await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    assert answer.model == "gpt-4o-2024-11-20"  # Azure reports the deployment's model
    assert answer.usage is not None and answer.usage.prompt_tokens > 0

    stream = await client.chat.completions.create(model="g", messages=HELLO,  # type: ignore[arg-type]
                                                  stream=True)
    chunks = [c async for c in stream]
    text = streamed_text(chunks)
    assert text == answer.choices[0].message.content
    assert chunks[0].choices == []  # Azure's prompt-filter chunk reached the client as sent
    assert [c.choices[0].finish_reason for c in chunks if c.choices and
            c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is None  # the client did not ask for usage: not shown

    plain, streamed = az.fake.requests
    expect_version = None if version == "v1" else version
    for seen in (plain, streamed):
        assert (seen.route, seen.style, seen.deployment, seen.api_version) == (
            "chat/completions", "dated" if expect_version else "v1", DEPLOYMENT,
            expect_version)
        assert seen.api_key == "az-key-1" and seen.token is None
        assert seen.body["model"] == DEPLOYMENT


async def test_stream_usage_is_accounted_past_filter_chunks(
        make_azure: MakeAzure, start_router: StartRouter) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider("2024-10-21")))
    stream = await router.openai().chat.completions.create(
        model="g", messages=HELLO, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    tokens = router.state.counters.tokens
    assert tokens[("az", key_label("az-key-1"), DEPLOYMENT)] == usage.total_tokens


async def test_tool_round_trip(make_azure: MakeAzure, start_router: StartRouter) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider("v1")))
    client = router.openai()
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "location": {"type": "string"}}}}}]
    first = await client.chat.completions.create(model="g", messages=HELLO,  # type: ignore[arg-type]
                                                 tools=tools)  # type: ignore[arg-type]
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    messages = [*HELLO, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = await client.chat.completions.create(model="g", messages=messages,  # type: ignore[arg-type]
                                                  tools=tools, stream=True)  # type: ignore[arg-type]
    text = streamed_text([c async for c in second])
    assert text
    assert az.fake.requests[-1].body["messages"][-1] == {
        "role": "tool", "tool_call_id": call.id, "content": "sunny"}


# ---------------------------------------------------------------- translated clients


@pytest.mark.parametrize("version", STYLES)
async def test_anthropic_client_streams_through_filter_chunks(
        make_azure: MakeAzure, start_router: StartRouter, version: str) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider(version)))
    direct = await router.openai().chat.completions.create(model="g", messages=HELLO,  # type: ignore[arg-type]
                                                           max_tokens=24)
    async with router.anthropic().messages.stream(model="g", max_tokens=24,
                                                  messages=HELLO) as stream:  # type: ignore[arg-type]
        events = [e.type async for e in stream]
        message = await stream.get_final_message()
    assert message.content[0].text == direct.choices[0].message.content  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"  # the fake writes max_tokens words
    assert message.usage.output_tokens == 24
    assert events.count("message_start") == 1 and "error" not in events


async def test_anthropic_client_tool_round_trip(make_azure: MakeAzure,
                                                start_router: StartRouter) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider("2024-10-21")))
    client = router.anthropic()
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    async with client.messages.stream(model="g", max_tokens=64, messages=HELLO,  # type: ignore[arg-type]
                                      tools=tools) as stream:  # type: ignore[arg-type]
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and use.input == {"location": "Paris"}
    second = await client.messages.create(model="g", max_tokens=64, tools=tools,  # type: ignore[arg-type]
                                          messages=[*HELLO,  # type: ignore[list-item]
                                                    {"role": "assistant",
                                                     "content": first.content},
                                                    {"role": "user", "content": [
                                                        {"type": "tool_result",
                                                         "tool_use_id": use.id,
                                                         "content": "sunny"}]}])
    assert second.stop_reason == "max_tokens" and second.content[0].text  # type: ignore[union-attr]


async def test_responses_client_through_the_chat_hub(make_azure: MakeAzure,
                                                     start_router: StartRouter) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider("2024-10-21")))
    client = router.openai()
    plain = await client.responses.create(model="g", input="hello there")
    stream = await client.responses.create(model="g", input="hello there", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == plain.output_text != ""  # type: ignore[union-attr]
    assert [r.route for r in az.fake.requests] == ["chat/completions"] * 2


async def test_responses_native_on_v1(make_azure: MakeAzure, start_router: StartRouter) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider("v1", responses="native")))
    client = router.openai()
    plain = await client.responses.create(model="g", input="hello there")
    assert plain.output_text and plain.model == "gpt-4o-2024-11-20"
    stream = await client.responses.create(model="g", input="hello there", stream=True)
    assert [e async for e in stream][-1].type == "response.completed"
    assert [(r.route, r.style, r.body["model"]) for r in az.fake.requests] == [
        ("responses", "v1", DEPLOYMENT)] * 2


# ---------------------------------------------------------------- other routes


@pytest.mark.parametrize("version", STYLES)
async def test_embeddings_and_completions(make_azure: MakeAzure, start_router: StartRouter,
                                          version: str) -> None:
    az = await make_azure()
    router = await start_router(one_group(
        az.provider(version), models=[{"provider": "az", "name": "text-embedding-3-small"}]))
    client = router.openai()
    emb = await client.embeddings.create(model="g", input=["one", "two"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens > 0
    done = await client.completions.create(model="az/gpt-4o-mini", prompt="Say hi")
    assert done.choices[0].text
    assert [(r.route, r.deployment) for r in az.fake.requests] == [
        ("embeddings", "text-embedding-3-small"), ("completions", "gpt-4o-mini")]


async def test_unknown_deployment_is_azures_404(make_azure: MakeAzure,
                                                start_router: StartRouter) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider("2024-10-21")))
    with pytest.raises(openai.NotFoundError) as exc:
        await router.openai().chat.completions.create(model="az/nope", messages=HELLO)  # type: ignore[arg-type]
    assert "deployment for this resource does not exist" in str(exc.value)


# ---------------------------------------------------------------- content filtering


async def test_content_filter_400_is_the_clients_error(make_azure: MakeAzure,
                                                       start_router: StartRouter,
                                                       http: aiohttp.ClientSession) -> None:
    az = await make_azure()
    router = await start_router(one_group(
        az.provider("2024-10-21", keys=["az-key-1", "az-key-2"]),
        az.provider("v1", name="az2")))
    blocked = [{"role": "user", "content": f"please {FILTERED_PROMPT}"}]
    with pytest.raises(openai.BadRequestError) as exc:
        await router.openai().chat.completions.create(model="g", messages=blocked)  # type: ignore[arg-type]
    assert exc.value.code == "content_filter"
    assert exc.value.response.headers["X-Router-Attempts"] == "1"
    assert len(az.fake.requests) == 1  # no failover to the other key or member
    with pytest.raises(anthropic.BadRequestError) as aexc:
        await router.anthropic().messages.create(model="g", max_tokens=32, messages=blocked)  # type: ignore[arg-type]
    assert "content management policy" in str(aexc.value)
    assert len(az.fake.requests) == 2
    async with http.get(router.url + "/admin/status", headers=AUTH) as resp:
        status = await resp.json()
    states = {(p["name"], k["key"]): k["state"] for p in status["providers"] for k in p["keys"]}
    assert set(states.values()) == {"ok"}  # no key was cooled or marked for it


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_content_filter_finish_reason_passes_through(
        make_azure: MakeAzure, start_router: StartRouter, stream: bool) -> None:
    az = await make_azure()
    router = await start_router(one_group(az.provider("v1")))
    client = router.openai()
    messages = [{"role": "user", "content": f"tell me {FILTERED_OUTPUT}"}]
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model="g", messages=messages, stream=True)]  # type: ignore[arg-type]
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    else:
        answer = await client.chat.completions.create(model="g", messages=messages)  # type: ignore[arg-type]
        reasons = [answer.choices[0].finish_reason]
    assert "content_filter" in reasons
    async with router.anthropic().messages.stream(model="g", max_tokens=32,
                                                  messages=messages) as astream:  # type: ignore[arg-type]
        message = await astream.get_final_message()
    assert message.stop_reason == "refusal"  # Anthropic's word for it
    response = await client.responses.create(model="g", input=f"tell me {FILTERED_OUTPUT}",
                                             stream=stream)
    if stream:
        response = [e async for e in response][-1].response  # type: ignore[union-attr]
    assert response.status == "incomplete"  # type: ignore[union-attr]
    assert response.incomplete_details.reason == "content_filter"  # type: ignore[union-attr]


# ---------------------------------------------------------------- throttling


async def test_throttled_key_fails_over_and_cools_for_retry_after_ms(
        make_azure: MakeAzure, start_router: StartRouter, http: aiohttp.ClientSession) -> None:
    az = await make_azure()
    provider = az.provider("2024-10-21", keys=[{"key": "az-key-1", "name": "one"},
                                               {"key": "az-key-2", "name": "two"}])
    router = await start_router({**one_group(provider), "circuit": {"cooldown_max_s": 60}})
    az.fake.throttle(times=1, retry_after_ms=1500, retry_after_s=40)
    answer = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    assert answer.headers["X-Router-Attempts"] == "2"
    first, second = az.fake.requests
    assert first.api_key != second.api_key
    throttled = "one" if first.api_key == "az-key-1" else "two"
    async with http.get(router.url + "/admin/status", headers=AUTH) as resp:
        keys = {k["key"]: k for k in (await resp.json())["providers"][0]["keys"]}
    assert keys[throttled]["state"] == "cooldown"
    # retry-after-ms (1.5 s) is the wait, not retry-after's whole seconds (40)
    assert 0 < keys[throttled]["seconds_left"] <= 1.5


# ---------------------------------------------------------------- Entra ID


async def test_entra_token_expiring_mid_run_is_fetched_once_for_many_requests(
        make_azure: MakeAzure, start_router: StartRouter) -> None:
    clock = Clock()
    az = await make_azure(clients={"cid": SECRET}, clock=clock)
    router = await start_router(one_group(az.provider("v1", entra=az.entra())))
    assert router.state.session is not None
    tokens_for(router.state.session).clock = clock
    client = router.openai()
    await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert az.fake.token_requests == 1
    first_token = az.fake.requests[0].token
    assert first_token and az.fake.requests[0].api_key is None

    clock.t += 3600  # past expires_in (3599): the fake now refuses the first token
    az.fake.hold_tokens()
    many = [asyncio.create_task(client.chat.completions.create(model="g", messages=HELLO))  # type: ignore[arg-type]
            for _ in range(8)]

    async def all_waiting() -> bool:
        return router.state.inflight == 8 and az.fake.token_requests >= 2

    await eventually(all_waiting)
    az.fake.release_tokens()
    answers = await asyncio.gather(*many)
    assert all(a.choices[0].message.content for a in answers)
    assert az.fake.token_requests == 2  # one refresh, however many requests waited on it
    later = {r.token for r in az.fake.requests[1:]}
    assert len(later) == 1 and first_token not in later


async def test_entra_token_refused_before_expiry_is_dropped_and_fetched_again(
        make_azure: MakeAzure, start_router: StartRouter) -> None:
    """A token Azure refuses while it is still within its lifetime (revoked) does not
    serve every request until it expires: the 401 drops it, the call goes once more
    with a new token, and the client never sees the 401."""
    az = await make_azure(clients={"cid": SECRET})
    router = await start_router(one_group(az.provider("v1", entra=az.entra())))
    client = router.openai()
    await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    first = az.fake.requests[-1].token
    az.fake.revoke_tokens()
    answer = await client.chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    assert answer.parse().choices[0].message.content
    assert answer.headers["X-Router-Attempts"] == "1"  # the same attempt, not a failover
    assert az.fake.token_requests == 2
    second = az.fake.requests[-1].token
    assert second and second != first
    await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert az.fake.token_requests == 2 and az.fake.requests[-1].token == second


async def test_entra_identity_refused_twice_fails_as_a_401_without_a_token_storm(
        make_azure: MakeAzure, start_router: StartRouter) -> None:
    """When even a fresh token is refused, the attempt fails (one retry, not a loop)."""
    az = await make_azure(clients={"cid": SECRET})
    router = await start_router(one_group(az.provider("v1", entra=az.entra())))
    az.fake.refuse_tokens = True
    with pytest.raises(openai.APIStatusError) as refused:
        await router.openai().chat.completions.create(
            model="g", messages=HELLO)  # type: ignore[arg-type]
    assert refused.value.status_code == 502  # every key refused: an admin must act
    assert az.fake.token_requests == 2  # the first token, and one fresh one: no loop


async def test_entra_client_secret_from_a_file_rotates_without_restart(
        make_azure: MakeAzure, start_router: StartRouter, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """``client_secret_file``: the app's secret from a mounted Secret. Rotated as Entra
    rotates: the new secret is written to the file (the config reloads), then the old one
    is withdrawn in Entra with its tokens, and the next token is asked for with the new
    secret, with no restart."""
    secret = tmp_path / "entra-secret"
    secret.write_text("first-entra-secret\n")
    az = await make_azure(clients={"cid": "first-entra-secret"})
    entra = {**az.entra(), "client_secret_file": str(secret)}
    del entra["client_secret"]
    router = await start_router(one_group(az.provider("v1", entra=entra)))
    client = router.openai()
    await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert az.fake.token_requests == 1
    tmp = tmp_path / "entra-secret.tmp"
    tmp.write_text("second-entra-secret\n")
    os.rename(tmp, secret)  # the Secret volume updated

    async def reloaded() -> bool:
        return (await metric_samples(router.url)).get(RELOAD_OK, 0) == 1

    await eventually(reloaded)
    az.fake.clients = {"cid": "second-entra-secret"}  # the old secret removed in Entra
    az.fake.revoke_tokens()  # with the tokens it got
    await client.chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert az.fake.token_requests == 2
    assert (await metric_samples(router.url))[RELOAD_FAILED] == 0


async def test_entra_failure_cools_the_key_and_fails_over_without_leaking_the_secret(
        make_azure: MakeAzure, start_router: StartRouter, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    az = await make_azure(clients={"cid": "the-right-secret"})
    router = await start_router(one_group(
        az.provider("v1", name="entra", entra=az.entra(SECRET)),
        az.provider("2024-10-21", name="keyed"),
        models=[{"provider": "entra", "name": DEPLOYMENT, "weight": 0},
                {"provider": "keyed", "name": DEPLOYMENT}]))
    caplog.set_level(logging.DEBUG)
    answer = await router.openai().chat.completions.with_raw_response.create(
        model="g", messages=HELLO)  # type: ignore[arg-type]
    assert answer.headers["X-Router-Provider"] == "keyed"
    assert answer.headers["X-Router-Attempts"] == "2"
    assert az.fake.token_requests == 1
    # While it cools, the entra key is not tried again (and Entra not asked again).
    await router.openai().chat.completions.create(model="g", messages=HELLO)  # type: ignore[arg-type]
    assert az.fake.token_requests == 1
    async with http.get(router.url + "/admin/status", headers=AUTH) as resp:
        text = await resp.text()
        status = await resp.json()
    keys = {p["name"]: p["keys"] for p in status["providers"]}
    assert [(k["key"], k["state"]) for k in keys["entra"]] == [("entra", "cooldown")]
    assert keys["entra"][0]["last_error"]["reason"] == "token"
    assert SECRET not in text and SECRET not in caplog.text


# ---------------------------------------------------------------- the fake itself


async def test_fake_upstream_command_speaks_azure_to_the_sdks_azure_client() -> None:
    """`llm-router fake-upstream` serves Azure's paths: checked with the openai SDK's own
    AzureOpenAI client (dated paths) and a v1 client, not with the router's code."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_router", "fake-upstream", "--port", "0",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        root = line.strip().rsplit(" ", 1)[1]
        dated = openai.AsyncAzureOpenAI(azure_endpoint=root, api_key="any-key",
                                        api_version="2024-10-21", max_retries=0)
        v1 = openai.AsyncOpenAI(base_url=f"{root}/openai/v1/", api_key="unused",
                                default_headers={"api-key": "any-key"}, max_retries=0)
        async with dated, v1:
            answer = await dated.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
            assert answer.choices[0].message.content
            emb = await v1.embeddings.create(model="text-embedding-3-small", input="hi")
            assert emb.data[0].embedding
            response = await v1.responses.create(model="gpt-4o-mini", input="hi")
            assert response.output_text
            wrong = openai.AsyncAzureOpenAI(azure_endpoint=root, api_key="any-key",
                                            api_version="2023-01-01", max_retries=0)
            async with wrong:
                with pytest.raises(openai.NotFoundError, match="Resource not found"):
                    await wrong.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
            with pytest.raises(openai.NotFoundError, match="deployment for this resource does not"):
                await v1.chat.completions.create(model="no-such-deployment", messages=HELLO)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as http, http.post(
                f"{root}/tenant/oauth2/v2.0/token", data={
                    "grant_type": "client_credentials", "client_id": "c",
                    "client_secret": "s", "scope": SCOPE}) as resp:
            token = await resp.json()
        assert resp.status == 200 and token["token_type"] == "Bearer"
        assert token["expires_in"] > 0
        bearer = openai.AsyncAzureOpenAI(azure_endpoint=root, api_version="2024-10-21",
                                         azure_ad_token=token["access_token"], max_retries=0)
        async with bearer:
            assert (await bearer.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO)).choices  # type: ignore[arg-type]
    finally:
        proc.terminate()
        await proc.wait()


async def test_fake_refuses_what_azure_refuses(make_azure: MakeAzure) -> None:
    az = await make_azure(api_keys={"good-key"}, clients={"cid": SECRET})
    chat = f"{az.root}/openai/deployments/{DEPLOYMENT}/chat/completions"
    body = {"messages": HELLO}
    async with aiohttp.ClientSession() as http:
        async def status(url: str, **kw: Any) -> tuple[int, Any]:
            async with http.post(url, **kw) as resp:
                return resp.status, await resp.json()

        ok = {"api-key": "good-key"}
        assert (await status(chat + "?api-version=2024-10-21", json=body, headers=ok))[0] == 200
        assert await status(chat, json=body, headers=ok) == (404, {"error": {
            "code": "404", "message": "Resource not found"}})  # no api-version
        assert (await status(chat + "?api-version=2024-10-21", json=body,
                             headers={"api-key": "bad"}))[0] == 401
        assert (await status(chat + "?api-version=2024-10-21", json=body))[0] == 401
        token_url = f"{az.root}/tid/oauth2/v2.0/token"
        form = {"grant_type": "client_credentials", "client_id": "cid",
                "client_secret": "wrong", "scope": SCOPE}
        code, doc = await status(token_url, data=form)
        assert (code, doc["error"]) == (401, "invalid_client")
        code, doc = await status(token_url, data={**form, "client_secret": SECRET,
                                                  "scope": "https://other/.default"})
        assert (code, doc["error"]) == (400, "invalid_scope")
        assert az.fake.token_requests == 2
