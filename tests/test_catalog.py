"""The model catalog: aliases, and what coding agents send, end to end over sockets.

Aliases map a glob over the client's model name to a group or provider/model
(docs/catalog.md). The recorded requests of Codex CLI and Claude Code
(tests/fixtures/) are replayed against the router in front of a fake upstream, so the
bodies the real clients send are what these tests serve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from llm_router.config import ConfigError, parse_config
from llm_router.config.aliases import AliasTable, ambiguous_pairs, common_name
from llm_router.testing.upstream import Fault

from .conftest import StartRouter, Upstream
from .helpers import AUTH, ROUTER_KEY, eventually, metric_samples, openai_provider

FIXTURES = Path(__file__).parent / "fixtures"
CODEX = json.loads((FIXTURES / "codex_0.171_responses_request.json").read_text())
# Claude Code's first request, as two releases sent it (docs/coding-agents.md).
CLAUDE_CODE = {version: json.loads((FIXTURES / f"claude_code_{version}_messages_request.json")
                                   .read_text()) for version in ("2.1.197", "2.1.332")}


def two_groups(up: Upstream, **extra: Any) -> dict[str, Any]:
    """Groups 'fast' (provider a) and 'smart' (provider b), both on the fake upstream."""
    return {"providers": [openai_provider("a", up), openai_provider("b", up)],
            "groups": [{"name": "fast", "models": [{"provider": "a", "name": "small"}]},
                       {"name": "smart", "models": [{"provider": "b", "name": "large"}]}],
            **extra}


# ------------------------------------------------------------------ the glob rules


@pytest.mark.parametrize(("a", "b", "overlaps"), [
    ("claude-*", "claude-opus-*", True),
    ("a*b", "a*c", False),
    ("*haiku*", "claude-*", True),
    ("gpt-5?", "gpt-5", False),
    ("x?z", "x*", True),
    ("*a*", "*b*", True),
    ("?", "", False),
], ids=lambda v: str(v))
def test_common_name_is_matched_by_both_patterns_or_none_exists(
        a: str, b: str, overlaps: bool) -> None:
    import fnmatch

    for first, second in ((a, b), (b, a)):
        name = common_name(first, second)
        assert (name is not None) == overlaps
        if name is not None:
            assert fnmatch.fnmatchcase(name, first) and fnmatch.fnmatchcase(name, second)


def test_most_literal_characters_win_then_fewest_stars_then_file_order() -> None:
    table = AliasTable({"claude-*": "x", "claude-opus-*": "smart", "*haiku*": "fast",
                        "c*-*": "y", "claude-sonnet": "exact"})
    assert table.match("claude-opus-4-8").target == "smart"  # type: ignore[union-attr]
    assert table.match("claude-3-5-haiku").target == "x"  # type: ignore[union-attr]
    assert table.match("claude-sonnet").target == "exact"  # type: ignore[union-attr]
    assert table.match("mistral") is None
    assert ambiguous_pairs({"ab*": "x", "*ab": "y", "*ab*": "x"}) == [("ab*", "*ab", "ab")]


# ------------------------------------------------------------------ check


def test_check_refuses_an_alias_to_nothing_and_warns_of_ambiguity_and_dead_patterns(
        ) -> None:
    base = {"api_key": "k", "providers": [{"name": "local", "type": "mock"}],
            "groups": [{"name": "fast", "models": [{"provider": "local", "name": "m"}]}]}
    with pytest.raises(ConfigError) as err:
        parse_config(json.dumps({**base, "aliases": {"gpt-*": "fsat", "o*": "lcal/x"}}),
                     fmt="json", env={})
    text = str(err.value)
    assert "aliases.gpt-*" in text and "did you mean 'fast'" in text
    assert "aliases.o*" in text and "unknown provider 'lcal'" in text
    cfg = parse_config(json.dumps({
        **base, "aliases": {"ab*": "fast", "*ab": "local/m", "fast": "local/m"},
        "users": [{"name": "u", "keys": [{"key": "uk"}],
                   "aliases": {"x*": "fast", "*x": "local/m"}}]}), fmt="json", env={})
    assert any("'ab*' and '*ab' are equally specific and both match 'ab'" in w
               for w in cfg.warnings)
    assert any(w.startswith("users[0].aliases") and "'x*' and '*x'" in w for w in cfg.warnings)
    assert any("aliases.fast: never used" in w for w in cfg.warnings)
    long = "m" * 257  # a client's model name is at most 256 bytes: never asked for
    cfg = parse_config(json.dumps({**base, "aliases": {long: "fast", long + "*": "fast"}}),
                       fmt="json", env={})
    assert [w for w in cfg.warnings if "never used" in w] == [
        f"aliases.{long}: never used: it is 257 bytes long, and a client's model name is at "
        "most 256 bytes"]


# ------------------------------------------------------------------ over sockets


async def test_alias_serves_its_group_and_a_group_name_is_never_aliased(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(two_groups(upstream, aliases={
        "claude-*": "fast", "claude-opus-*": "smart", "fast": "smart"}))
    client = router.openai()
    for asked, group, upstream_model in (("claude-opus-4-8", "smart", "large"),
                                         ("claude-3-5-haiku", "fast", "small"),
                                         ("fast", "fast", "small")):
        raw = await client.chat.completions.with_raw_response.create(
            model=asked, messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["X-Router-Group"] == group
        assert upstream.fake.requests[-1].body["model"] == upstream_model  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="gemini-pro",
                                             messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"


async def test_a_users_aliases_win_over_the_top_level_ones(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(two_groups(upstream, aliases={"claude-*": "fast"}, users=[
        {"name": "ann", "keys": [{"key": "sk-ann"}], "aliases": {"claude-*": "smart"}},
        {"name": "bob", "keys": [{"key": "sk-bob"}]}]))
    for key, group in (("sk-ann", "smart"), ("sk-bob", "fast")):
        raw = await router.openai(key).chat.completions.with_raw_response.create(
            model="claude-opus-4-8", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["X-Router-Group"] == group


async def test_allowlist_and_budget_apply_to_the_alias_target(
        start_router: StartRouter, upstream: Upstream) -> None:
    cfg = two_groups(upstream, aliases={"claude-opus-*": "smart", "claude-*": "fast",
                                        "free-*": "b/unpriced"},
                     pricing={"small": {"input": 1.0, "output": 1.0},
                              "large": {"input": 1.0, "output": 1.0}},
                     users=[{"name": "ann", "keys": [{"key": "sk-ann"}], "models": ["fast",
                                                                                    "b/*"],
                             "budget": {"usd": 5.0}}])
    router = await start_router(cfg)
    client = router.openai("sk-ann")
    raw = await client.chat.completions.with_raw_response.create(
        model="claude-haiku", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["X-Router-Group"] == "fast"
    assert float(raw.headers["X-Router-Cost-USD"]) > 0  # priced as its target
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.chat.completions.create(model="claude-opus-4-8",
                                             messages=[{"role": "user", "content": "hi"}])
    assert "'smart'" in denied.value.message
    with pytest.raises(openai.PermissionDeniedError) as unpriced:
        await client.chat.completions.create(model="free-model",
                                             messages=[{"role": "user", "content": "hi"}])
    assert unpriced.value.code == "model_not_priced"


async def test_translated_answers_name_the_model_the_client_asked_for(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(two_groups(upstream, aliases={"claude-*": "fast"}))
    message = await router.anthropic().messages.create(
        model="claude-opus-4-8", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "claude-opus-4-8"
    async with router.anthropic().messages.stream(
            model="claude-opus-4-8", max_tokens=16,
            messages=[{"role": "user", "content": "hi"}]) as stream:
        final = await stream.get_final_message()
    assert final.model == "claude-opus-4-8"
    response = await router.openai().responses.create(model="claude-opus-4-8", input="hi")
    assert response.model == "claude-opus-4-8"


async def test_models_list_and_retrieve_know_aliases(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(two_groups(upstream, aliases={"sonnet": "smart",
                                                              "claude-*": "fast"}))
    client = router.openai()
    ids = [m.id async for m in client.models.list()]
    assert ids[:3] == ["fast", "smart", "sonnet"]
    assert "claude-*" not in ids  # a glob is no model name
    assert (await client.models.retrieve("claude-opus-4-8")).id == "claude-opus-4-8"
    assert (await client.models.retrieve("sonnet")).owned_by == "llm-router"


async def test_access_log_and_metrics_carry_both_names(
        start_router: StartRouter, upstream: Upstream, caplog: pytest.LogCaptureFixture
        ) -> None:
    router = await start_router(two_groups(upstream, aliases={"claude-*": "fast"}))
    with caplog.at_level("INFO", logger="llm_router.access"):
        await router.openai().chat.completions.create(
            model="claude-opus-4-8", messages=[{"role": "user", "content": "hi"}])
    lines = [r.getMessage() for r in caplog.records if r.name == "llm_router.access"]
    assert lines, "no access line"
    line = lines[-1]
    if line.startswith("{"):
        fields = json.loads(line)
        assert (fields["group"], fields["asked"], fields["alias"]) == (
            "fast", "claude-opus-4-8", "claude-*")
    else:
        assert "group=fast" in line and "asked=claude-opus-4-8" in line
        assert 'alias="claude-*"' in line
    samples = await metric_samples(router.url)
    assert samples["llm_router_alias_requests_total{alias=claude-*,target=fast}"] == 1


# ------------------------------------------------------------------ coding agents


async def test_codex_request_streams_to_completed_through_a_chat_member(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """Codex CLI 0.171's real body: function tools, a namespace of functions (five in
    this recording), web_search with web access off, reasoning, include, store: false,
    prompt_cache_key and client_metadata."""
    router = await start_router(two_groups(upstream, aliases={"gpt-5*": "fast"}))
    body = CODEX["body"]
    assert body["model"] == "gpt-5-codex" and body["stream"] is True
    async with http.post(router.url + "/v1/responses", json=body,
                         headers={**AUTH, **CODEX["headers"]}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Router-Dropped-Tools"] == "web_search"
        text = await resp.text()
    events = [line.removeprefix("event: ") for line in text.splitlines()
              if line.startswith("event: ")]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    sent = upstream.fake.requests[-1].body
    assert sent is not None
    names = [t["function"]["name"] for t in sent["tools"]]
    namespace = next(t for t in body["tools"] if t["type"] == "namespace")
    flat = [f"{namespace['name']}__{t['name']}" for t in namespace["tools"]]
    assert len(flat) >= 5 and set(flat) <= set(names)
    assert all(t["type"] == "function" for t in sent["tools"])
    assert len(names) == len(set(names))


async def test_a_call_to_a_namespaced_tool_comes_back_with_its_namespace(
        start_router: StartRouter, upstream: Upstream) -> None:
    router = await start_router(two_groups(upstream))
    tools: Any = [{"type": "namespace", "name": "crm", "description": "the CRM",
                   "tools": [{"type": "function", "name": "find", "description": "find one",
                              "parameters": {"type": "object", "properties": {}}}]}]
    client = router.openai()
    response = await client.responses.create(model="fast", input="find ann", tools=tools)
    calls = [o for o in response.output if o.type == "function_call"]
    assert [(c.name, getattr(c, "namespace", None)) for c in calls] == [("find", "crm")]
    assert upstream.fake.requests[-1].body["tools"][0]["function"]["name"] == "crm__find"  # type: ignore[index]
    done: list[Any] = []
    async with client.responses.stream(model="fast", input="find ann", tools=tools) as stream:
        async for event in stream:
            if event.type == "response.output_item.done":
                done.append(event.item)
    assert [(i.name, getattr(i, "namespace", None)) for i in done
            if i.type == "function_call"] == [("find", "crm")]
    # The next turn sends the call back with its namespace: the upstream sees its chat name.
    follow = [{"type": "function_call", "call_id": calls[0].call_id, "name": "find",
               "namespace": "crm", "arguments": "{}"},
              {"type": "function_call_output", "call_id": calls[0].call_id, "output": "ann"}]
    await client.responses.create(model="fast", input=follow, tools=tools)
    messages = upstream.fake.requests[-1].body["messages"]  # type: ignore[index]
    assert messages[0]["tool_calls"][0]["function"]["name"] == "crm__find"


async def test_refuse_keeps_the_400_for_hosted_tools(
        start_router: StartRouter, upstream: Upstream) -> None:
    cfg = two_groups(upstream)
    cfg["providers"][0]["responses_unsupported_tools"] = "refuse"
    router = await start_router(cfg)
    with pytest.raises(openai.BadRequestError) as err:
        await router.openai().responses.create(
            model="fast", input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert err.value.code == "unsupported_parameter" and err.value.param == "tools[0]"


@pytest.mark.parametrize("version", sorted(CLAUDE_CODE))
async def test_claude_code_request_is_served_with_no_model_flag(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession,
        version: str) -> None:
    """Claude Code's real first request (2.1.197: claude-opus-4-8, thinking, betas;
    2.1.332: claude-opus-5-5, a ``defer_loading`` tool, ``thinking.display``), sent by
    its alias to a chat member: the answer names the model asked for, the member gets
    every tool."""
    recorded = CLAUDE_CODE[version]
    body = recorded["body"]
    router = await start_router(two_groups(upstream, aliases={"claude-*": "fast"}))
    async with http.post(router.url + recorded["path"], json=body,
                         headers={"x-api-key": ROUTER_KEY, **recorded["headers"]}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Router-Group"] == "fast"
        text = await resp.text()
    assert "event: message_stop" in text
    assert f'"model":"{body["model"]}"' in text
    sent = upstream.fake.requests[-1].body
    assert isinstance(sent, dict) and sent["model"] == "small"
    assert [t["function"]["name"] for t in sent["tools"]] == [t["name"] for t in body["tools"]]


# ------------------------------------------------------------------ discovery


async def _catalog(router: Any, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(router.url + "/admin/status", headers=AUTH) as resp:
        assert resp.status == 200
        status = await resp.json()
    return {p["name"]: p["catalog"] for p in status["providers"]}


async def _model_ids(router: Any) -> list[str]:
    return [m.id async for m in router.openai().models.list()]


def discovering(up: Upstream, refresh_s: float = 600) -> dict[str, Any]:
    return {"providers": [
        openai_provider("oa", up, discover=True),
        {"name": "an", "type": "anthropic", "base_url": up.root, "api_keys": ["sk-an"],
         "discover": {"refresh_s": refresh_s}},
        {"name": "gem", "type": "gemini", "base_url": up.root, "api_keys": ["gk-1"],
         "discover": True},
        openai_provider("quiet", up)],
        "groups": [{"name": "g", "models": [{"provider": "oa", "name": "my-deployment"}]}]}


async def test_discovered_models_are_listed_and_unlisted_ones_refused_upstream_unasked(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.fake.max_models_page = 2  # Anthropic's list comes in three pages
    router = await start_router(discovering(upstream))
    await eventually(lambda: _all_listed(router, http, ("oa", "an", "gem")))
    catalog = await _catalog(router, http)
    assert catalog["quiet"] is None  # does not discover
    assert catalog["an"]["models"] == 5 and catalog["an"]["last_error"] is None
    ids = await _model_ids(router)
    assert {"oa/gpt-4o-mini", "an/claude-sonnet-4-5", "an/claude-3-opus-latest",
            "gem/gemini-2.5-flash"} <= set(ids)
    client = router.openai()
    asked = len(upstream.fake.requests)
    for model in ("oa/gpt-5-invented", "an/claude-invented", "gem/gemini-invented"):
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model=model,
                                                 messages=[{"role": "user", "content": "hi"}])
        assert err.value.code == "model_not_found" and "does not list" in err.value.message
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve(model)
    assert len(upstream.fake.requests) == asked  # refused without an upstream call
    # Listed models, a model the config names (not listed), and a provider that does not
    # discover are served.
    for model in ("oa/gpt-4o-mini", "an/claude-sonnet-4-5", "g", "quiet/anything"):
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    # A listed model keeps its own selection counters; an invented name on a provider
    # that does not discover is folded into 'other' (bounded state).
    async with http.get(router.url + "/admin/status", headers=AUTH) as resp:
        providers = {p["name"]: p for p in (await resp.json())["providers"]}
    assert "gpt-4o-mini" in providers["oa"]["keys"][0]["tokens"]
    assert set(providers["quiet"]["keys"][0]["tokens"]) == {"other"}


async def _all_listed(router: Any, http: aiohttp.ClientSession, names: tuple[str, ...]
                      ) -> bool:
    catalog = await _catalog(router, http)
    return all(catalog[n] and catalog[n]["models"] for n in names)


async def test_a_failed_refresh_keeps_the_last_good_list(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    router = await start_router(discovering(upstream, refresh_s=1))
    await eventually(lambda: _all_listed(router, http, ("an",)))
    upstream.fake.add_fault(Fault(status=503, times=None, path="/v1/models"))

    async def failed() -> bool:
        return bool((await _catalog(router, http))["an"]["last_error"])

    await eventually(failed, timeout=10)
    catalog = (await _catalog(router, http))["an"]
    assert catalog["models"] == 5 and "503" in catalog["last_error"]
    assert "an/claude-sonnet-4-5" in await _model_ids(router)
    with pytest.raises(openai.NotFoundError):
        await router.openai().chat.completions.create(
            model="an/claude-invented", messages=[{"role": "user", "content": "hi"}])
    upstream.fake.clear_faults()


async def test_until_a_listing_succeeds_requests_pass_through(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    upstream.fake.add_fault(Fault(status=500, times=None, path="/v1/models"))
    router = await start_router({"providers": [openai_provider("oa", upstream, discover=True)],
                                 "groups": [{"name": "g", "models": [{"provider": "oa",
                                                                      "name": "m"}]}]})

    async def failed() -> bool:
        return bool((await _catalog(router, http))["oa"]["last_error"])

    await eventually(failed)
    assert (await _catalog(router, http))["oa"]["models"] is None
    answer = await router.openai().chat.completions.create(
        model="oa/anything", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content


async def test_codex_default_model_request_with_additional_tools_items(
        start_router: StartRouter, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    """Codex CLI 0.171 with no model configured asks for its default (gpt-6.2-sol) and
    sends its tools as an ``additional_tools`` input item: namespaces of functions and a
    ``custom`` (grammar) tool."""
    recorded = json.loads((FIXTURES / "codex_0.171_default_model_request.json").read_text())
    body = recorded["body"]
    assert body["model"] == "gpt-6.2-sol" and "tools" not in body
    assert body["input"][0]["type"] == "additional_tools"
    router = await start_router(two_groups(upstream, aliases={"gpt-*": "fast"}))
    async with http.post(router.url + "/v1/responses", json=body,
                         headers={**AUTH, **recorded["headers"]}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Router-Group"] == "fast"
        assert resp.headers["X-Router-Dropped-Tools"] == "custom"
        text = await resp.text()
    assert text.rstrip().splitlines()[-2] == "event: response.completed"
    sent = upstream.fake.requests[-1].body
    assert sent is not None
    names = {t["function"]["name"] for t in sent["tools"]}
    assert {"functions__wait", "clock__sleep", "collaboration__spawn_agent"} <= names
    assert "functions__exec" not in names  # the custom tool a chat member cannot run
    assert all(m["role"] != "additional_tools" for m in sent["messages"])
