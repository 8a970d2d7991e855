"""Prompt-cache affinity: which key a request is remembered by, the pin store, the pick rule.

The end-to-end behaviour (real SDKs, real sockets) is in tests/test_affinity_e2e.py.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from llm_router.config import Affinity, Member, Provider, ProviderKey
from llm_router.gateway.affinity import (
    AffinityKey,
    MemoryAffinityStore,
    RecentLoad,
    affinity_key,
    derived_cache_key,
    pick_with_affinity,
    prefix_digest,
    spilled,
)
from llm_router.gateway.routing import Candidate, PickContext
from llm_router.ledger.usage import UsageCounters

AUTO = Affinity()
SESSION = Affinity(mode="session")
SYSTEM = "You are a careful assistant. " * 20
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def _chat_turns() -> list[dict[str, Any]]:
    """Three turns of one OpenAI chat conversation, as a client sends them."""
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": "Plan a trip to Lyon."}]
    turns = [{"model": "g", "tools": TOOLS, "messages": list(history)}]
    for n in range(2):
        history += [{"role": "assistant", "content": f"answer {n}"},
                    {"role": "user", "content": f"follow-up {n}"}]
        turns.append({"model": "g", "tools": TOOLS, "messages": list(history)})
    return turns


def test_turns_of_one_conversation_share_a_key() -> None:
    keys = {affinity_key(body, {}, "g", AUTO) for body in _chat_turns()}
    assert len(keys) == 1
    (key,) = keys
    assert key is not None and key.source == "prefix" and len(key.digest) == 16


def test_openai_and_anthropic_forms_of_a_conversation_hash_alike() -> None:
    openai_body = _chat_turns()[1]
    anthropic_body = {
        "model": "g", "max_tokens": 100, "system": [{"type": "text", "text": SYSTEM,
                                                     "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "text",
                                                   "text": "Plan a trip to Lyon."}]},
                     {"role": "assistant", "content": "answer 0"},
                     {"role": "user", "content": "follow-up 0"}]}
    assert prefix_digest(openai_body, "g", 8192) == prefix_digest(anthropic_body, "g", 8192)


def test_another_opening_system_or_group_gives_another_key() -> None:
    base = _chat_turns()[0]
    other_question = {**base, "messages": [base["messages"][0],
                                           {"role": "user", "content": "Plan a trip to Nice."}]}
    other_system = {**base, "messages": [{"role": "system", "content": "Be terse."},
                                         base["messages"][1]]}
    digests = {prefix_digest(b, "g", 8192) for b in (base, other_question, other_system)}
    assert len(digests) == 3
    assert prefix_digest(base, "g", 8192) != prefix_digest(base, "h", 8192)


def test_only_the_tail_of_a_long_opening_is_hashed() -> None:
    def opening(system: str, question: str = "hi") -> dict[str, Any]:
        return {"messages": [{"role": "system", "content": system},
                             {"role": "user", "content": question}]}

    # Beyond prefix_bytes from the end, a difference no longer counts (the length does)...
    early_a, early_b = opening("A" + "x" * 5000), opening("B" + "x" * 5000)
    assert prefix_digest(early_a, "g", 4096) == prefix_digest(early_b, "g", 4096)
    assert prefix_digest(early_a, "g", 8192) != prefix_digest(early_b, "g", 8192)
    assert prefix_digest(opening("x" * 5002), "g", 4096) != prefix_digest(early_a, "g", 4096)
    # ...while the first user message, what tells conversations apart, always does.
    assert prefix_digest(opening("x" * 50_000, "trip to Lyon"), "g", 64) != prefix_digest(
        opening("x" * 50_000, "trip to Nice"), "g", 64)


_LONG_SYSTEM = "You are a careful assistant. Follow the house rules. " * 200  # 10,600 chars
# Digests as releases before this one computed them. They name pins in Redis, which
# replicas of two releases share during an upgrade, and the prompt_cache_key sent
# upstream, so a faster digest must give the same bytes: (body, group, prefix_bytes).
_KNOWN_DIGESTS: list[tuple[dict[str, Any], str, int, str]] = [
    ({"messages": [{"role": "user", "content": "Say something short."}]}, "ab", 8192,
     "48ed2bad860b988a24750efcfef48fd7"),
    ({"tools": [{"type": "function", "function": {"name": "get_weather"}},
                {"type": "web_search"}],
      "messages": [{"role": "developer", "content": "Be terse."},
                   {"role": "user", "content": "Plan a trip to Lyon."},
                   {"role": "assistant", "content": "Sure."}]}, "g", 8192,
     "765f09baded3457dc436fd8912d57e2e"),
    ({"system": [{"type": "text", "text": "Be terse."}],
      "messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                {"type": "image"}]}]}, "g", 8192,
     "f4baed92e9a63a5d2493bd9a3e093656"),
    ({"instructions": "Be terse.", "input": "Say something short."}, "g", 8192,
     "0563f9da5988c3aa94b62b06ebc224e2"),
    ({"input": [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "function_call_output"}]}, "g", 8192,
     "05b10e46f982b81aeb859a3ea4c3e20e"),
    # Not ASCII: within the budget in characters, then over it in bytes.
    ({"messages": [{"role": "user", "content": "Grüße aus Köln, 東京"}]}, "gruppe-ü", 8192,
     "416c54650d584ec2afc86d976af96f18"),
    ({"messages": [{"role": "user", "content": "é" * 40}]}, "g", 64,
     "dc52fa202d0f54aff5171876579fefcb"),
    # Parts and separators of exactly the budget (cut), and one character under it.
    ({"messages": [{"role": "user", "content": "x" * 59}]}, "g", 64,
     "c66d614a1e3bdf95aa1494852ce1edbf"),
    ({"messages": [{"role": "user", "content": "x" * 58}]}, "g", 64,
     "cdce32f53868fdffa088084e0aedfa05"),
    ({"messages": [{"role": "system", "content": _LONG_SYSTEM},
                   {"role": "user", "content": "Plan a trip to Lyon."}]}, "g", 8192,
     "42a8ac40fc82a0f243b2d36b80e88203"),
]


def test_digests_stay_those_of_earlier_releases() -> None:
    for body, group, prefix_bytes, digest in _KNOWN_DIGESTS:
        assert prefix_digest(body, group, prefix_bytes) == bytes.fromhex(digest), body
        key = affinity_key(body, {}, group, Affinity(prefix_bytes=prefix_bytes))
        assert key is not None and key.digest.hex() == digest and key.source == "prefix"
    session = affinity_key({}, {"X-Router-Session": "sess-1"}, "g", AUTO)
    assert session is not None and session.digest.hex() == "27c5e3f9668c7b771e3a4bcfcc3a5e5d"
    assert type(session) is AffinityKey and session.source == "session"


def test_explicit_keys_beat_the_hash_in_their_order() -> None:
    body: dict[str, Any] = {**_chat_turns()[0], "prompt_cache_key": "pck",
                            "previous_response_id": "resp_1", "metadata": {"user_id": "u1"}}
    headers = {"X-Router-Session": "sess"}
    order = []
    while True:
        key = affinity_key(body, headers, "g", AUTO)
        assert key is not None
        order.append(key.source)
        if key.source == "prompt_cache_key":
            del body["prompt_cache_key"]
        elif key.source == "session":
            headers = {}
        elif key.source == "previous_response_id":
            del body["previous_response_id"]
        elif key.source == "user_id":
            del body["metadata"]
        else:
            break
    assert order == ["prompt_cache_key", "session", "previous_response_id", "user_id", "prefix"]


def test_session_mode_uses_explicit_keys_only() -> None:
    body = _chat_turns()[0]
    assert affinity_key(body, {}, "g", SESSION) is None
    key = affinity_key(body, {"X-Router-Session": "s1"}, "g", SESSION)
    assert key is not None and key.source == "session"
    assert key == affinity_key({"messages": []}, {"X-Router-Session": "s1"}, "g", SESSION)


def test_a_body_with_nothing_to_hash_has_no_key() -> None:
    assert affinity_key({"model": "g", "messages": []}, {}, "g", AUTO) is None


def test_derived_cache_key_names_the_digest_not_the_prompt() -> None:
    key = affinity_key(_chat_turns()[0], {}, "g", AUTO)
    assert key is not None
    derived = derived_cache_key(key)
    assert derived == "llmr-" + key.digest.hex() and "Lyon" not in derived


async def test_store_forgets_a_pin_after_its_ttl() -> None:
    store = MemoryAffinityStore()
    await store.remember(b"k", ("p", "key", "m"), ttl_s=0.05)
    assert await store.lookup(b"k") == ("p", "key", "m")
    await asyncio.sleep(0.2)
    assert await store.lookup(b"k") is None
    assert len(store) == 0


async def test_store_is_bounded_and_evicts_the_least_recently_pinned() -> None:
    store = MemoryAffinityStore(max_pins=2)
    for name in (b"a", b"b", b"c"):
        await store.remember(name, ("p", name.decode(), "m"), ttl_s=60)
    assert len(store) == 2
    assert await store.lookup(b"a") is None
    await store.remember(b"b", ("p", "b", "m"), ttl_s=60)  # used again: now the youngest
    await store.remember(b"d", ("p", "d", "m"), ttl_s=60)
    assert await store.lookup(b"b") == ("p", "b", "m") and await store.lookup(b"c") is None


# ---------------------------------------------------------------- the pick rule

def _candidates(*weights: float) -> list[Candidate]:
    provider = Provider("p", "openai", "http://x", tuple(
        ProviderKey(f"sk-{i}", f"k{i}") for i in range(len(weights))))
    return [Candidate(Member("p", "m", w), provider, provider.keys[i], 0)
            for i, w in enumerate(weights)]


def _ctx(tokens: dict[int, int], cands: list[Candidate]) -> PickContext:
    counters = UsageCounters()
    for i, n in tokens.items():
        counters.tokens[cands[i].counter_key] = n
    return PickContext(counters)


def test_pin_within_slack_of_the_lowest_is_kept() -> None:
    cands = _candidates(1, 1, 2)
    # tokens x weight: 1,250 / 1,000 / 1,200: the pin is at 1.25x the lowest.
    ctx = _ctx({0: 1250, 1: 1000, 2: 600}, cands)
    assert pick_with_affinity(cands, cands[0].counter_key, ctx, 0.25) == (cands[0], "hit")
    assert pick_with_affinity(cands, cands[2].counter_key, ctx, 0.25) == (cands[2], "hit")


def test_pin_beyond_slack_moves_to_the_lowest() -> None:
    cands = _candidates(1, 1, 2)
    ctx = _ctx({0: 1300, 1: 1000, 2: 600}, cands)
    assert pick_with_affinity(cands, cands[0].counter_key, ctx, 0.25) == (cands[1], "moved")
    assert pick_with_affinity(cands, cands[0].counter_key, ctx, 0.5) == (cands[0], "hit")


def test_pin_that_is_not_a_candidate_moves_and_no_pin_is_new() -> None:
    cands = _candidates(1, 1)
    ctx = _ctx({0: 10, 1: 5}, cands)
    assert pick_with_affinity(cands, ("p", "gone", "m"), ctx, 0.25) == (cands[1], "moved")
    assert pick_with_affinity(cands, None, ctx, 0.25) == (cands[1], "new")


def test_a_pin_ahead_by_less_than_this_request_is_kept() -> None:
    # Counters still small: a relative bound alone would move the pin on every turn.
    cands = _candidates(1, 1)
    ctx = _ctx({0: 300, 1: 0}, cands)
    assert pick_with_affinity(cands, cands[0].counter_key, ctx, 0.25, 300) == (cands[0], "hit")
    assert pick_with_affinity(cands, cands[0].counter_key, ctx, 0.25, 299) == (cands[1],
                                                                              "moved")


def test_weight_zero_stays_preferred() -> None:
    cands = _candidates(0, 1)
    ctx = _ctx({0: 10_000, 1: 0}, cands)
    assert pick_with_affinity(cands, cands[0].counter_key, ctx, 0.0) == (cands[0], "hit")
    assert pick_with_affinity(cands, cands[1].counter_key, ctx, 10.0) == (cands[0], "moved")


def test_one_candidate_gets_the_result_the_bounds_give_it() -> None:
    # One eligible candidate is always the one picked; what affinity_total counts still
    # follows the bounds, as for a group of several (a negative slack, a burst).
    cand = _candidates(1)
    key = cand[0].counter_key
    ctx = _ctx({0: 1000}, cand)
    assert pick_with_affinity(cand, None, ctx, 0.25) == (cand[0], "new")
    assert pick_with_affinity(cand, ("p", "gone", "m"), ctx, 0.25) == (cand[0], "moved")
    assert pick_with_affinity(cand, key, ctx, 0.25) == (cand[0], "hit")
    assert pick_with_affinity(cand, key, ctx, 0.0, 0) == (cand[0], "hit")
    assert pick_with_affinity(cand, key, ctx, -0.5, 100) == (cand[0], "moved")
    assert pick_with_affinity(cand, key, ctx, -0.5, 500) == (cand[0], "hit")
    ctx.counters.inflight[key] = 50
    # (a negative estimate, which the router never passes: the same arithmetic)
    cand_out, result = pick_with_affinity(cand, key, ctx, 0.25, -10)
    assert cand_out is cand[0] and spilled(result)
    # With the recent window: the same reads as a group's pick, whatever the result.
    recent = RecentLoad(window_s=60.0, start=0.0)
    assert pick_with_affinity(cand, key, ctx, 0.25, 100, recent, 1.0) == (cand[0], "hit")
    assert abs(recent.tokens(key, 1000, 1.0) - 1000 * (1 - math.exp(-1 / 60)) * 60) < 1e-6


# ---------------------------------------------------------------- bursts and recent load

def test_a_burst_in_flight_on_the_pin_spills_to_the_least_busy_key() -> None:
    cands = _candidates(1, 2)  # shares 2/3 and 1/3
    # Huge, level counters: a slack of lifetime totals would keep the pin for ever.
    ctx = _ctx({0: 2_000_000, 1: 1_000_000}, cands)
    pinned = cands[0].counter_key
    inflight = ctx.counters.inflight
    inflight[pinned] = 300  # three requests of 100 ahead of an idle key: the grace
    assert pick_with_affinity(cands, pinned, ctx, 0.25, 100) == (cands[0], "hit")
    inflight[pinned] = 301
    cand, result = pick_with_affinity(cands, pinned, ctx, 0.25, 100)
    assert cand is cands[1] and spilled(result)
    inflight[cands[1].counter_key] = 500  # x weight 2: the pin may hold 1,000 + 300
    assert pick_with_affinity(cands, pinned, ctx, 0.25, 100)[0] is cands[0]


def test_recent_load_decays_and_takes_growth_as_spread_over_the_interval() -> None:
    recent = RecentLoad(window_s=60.0, start=0.0)
    key = ("p", "k", "m")
    assert recent.tokens(key, 0, 0.0) == 0.0
    assert recent.tokens(key, 0, 100.0) == 0.0
    # 600 tokens over 1 ms: nearly all of it is recent.
    assert abs(recent.tokens(key, 600, 100.001) - 600) < 0.01
    # One window later, 1/e of it; a counter that went back is a new baseline.
    assert abs(recent.tokens(key, 600, 160.001) - 600 / math.e) < 0.01
    assert abs(recent.tokens(key, 10, 160.001) - 600 / math.e) < 0.01
    # A key first read late counts its total as grown since start: an hour's tokens
    # weigh a minute's worth.
    late = recent.tokens(("p", "other", "m"), 3600, 3600.0)
    assert abs(late - 3600 * 60 / 3600) < 0.01


def test_the_slack_is_measured_against_recent_load_not_lifetime_totals() -> None:
    cands = _candidates(1, 1)
    ctx = _ctx({0: 1_000_000, 1: 1_000_000}, cands)
    recent = RecentLoad(window_s=60.0, start=0.0)
    pinned = cands[0].counter_key
    # Long ago both keys served a million tokens (read at t=0: all of it old by t=600).
    assert pick_with_affinity(cands, pinned, ctx, 0.25, 100, recent, 0.0)[1] == "hit"
    ctx.counters.tokens[pinned] += 5_000  # lately the pin served 5,000, the other none
    assert pick_with_affinity(cands, pinned, ctx, 0.25, 100, recent, 600.0) == (cands[1],
                                                                                "moved")
    # Against lifetime totals that is well within a quarter: the old rule kept it.
    assert pick_with_affinity(cands, pinned, ctx, 0.25, 100) == (cands[0], "hit")
