"""Seeded fuzzing of the model routes over sockets: no malformed body gets a 5xx.

Each route gets a fixed number of bodies mutated from valid ones (``tests/fuzz.py``,
fixed seed), sent to groups whose members translate (an openai member behind
``/v1/messages`` and ``/v1/responses``, an anthropic member behind
``/v1/chat/completions``), pass through (the other way round) or answer themselves
(mock). Every answer must be below 500, every error in the route's shape
(Anthropic's on ``/v1/messages*``, OpenAI's elsewhere), and nothing may be logged at
ERROR: a traceback per bad request would let anyone flood the log.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any, Final

import aiohttp
import pytest

from .conftest import StartRouter, Upstream
from .fuzz import messages_body, mutated
from .helpers import AUTH, openai_provider

EXAMPLES: Final = 300  # per route: well under a second each on loopback
SEED: Final = 23

MESSAGES: Final[dict[str, Any]] = messages_body(server_tool=True, image_in_result=True)
RESPONSES: Final[dict[str, Any]] = {
    "model": "oa", "instructions": "Be brief.", "max_output_tokens": 32, "temperature": 0.2,
    "store": True, "metadata": {"team": "a"}, "text": {"format": {"type": "text"}},
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
    "input": [
        {"role": "system", "content": "be brief"},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "hi"},
                     {"type": "input_image", "image_url": "data:image/png;base64,iVBO"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ],
}

CHAT: Final[dict[str, Any]] = {
    "model": "oa", "max_tokens": 32, "temperature": 0.5, "stop": ["END"], "user": "u1",
    "tools": [{"type": "function", "function": {"name": "lookup", "description": "find",
                                                "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "lookup"}},
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "look up cats"},
                                     {"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,iVBO"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"q\": \"cats\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cats purr"},
    ],
}

# route: (valid bodies to break, the groups to send them to, is the error Anthropic's)
ROUTES: Final[dict[str, tuple[list[dict[str, Any]], tuple[str, ...], bool]]] = {
    "/v1/messages": ([MESSAGES, {**MESSAGES, "stream": True},
                      {"model": "oa", "max_tokens": 8, "system": "s",
                       "messages": [{"role": "user", "content": "hi"}]}],
                     ("oa", "an", "mk"), True),
    "/v1/messages/count_tokens": ([{k: v for k, v in MESSAGES.items() if k != "max_tokens"}],
                                  ("oa", "an", "mk"), True),
    "/v1/chat/completions": ([CHAT, {**CHAT, "stream": True,
                                      "stream_options": {"include_usage": True}}],
                             ("oa", "an", "mk"), False),
    "/v1/responses": ([RESPONSES, {**RESPONSES, "stream": True},
                       {"model": "oa", "input": "hello"}],
                      ("oa", "mk"), False),
}


def _config(up: Upstream) -> dict[str, Any]:
    return {
        "providers": [openai_provider("up", up),
                      {"name": "claude", "type": "anthropic", "base_url": up.root,
                       "api_keys": ["sk-claude"]},
                      {"name": "local", "type": "mock"}],
        "groups": [{"name": "oa", "models": [{"provider": "up", "name": "m"}]},
                   {"name": "an", "models": [{"provider": "claude", "name": "c"}]},
                   {"name": "mk", "models": [{"provider": "local", "name": "l"}]}],
    }


def _assert_error_shape(doc: Any, anthropic: bool) -> None:
    if anthropic:
        assert doc.keys() == {"type", "error"} and doc["type"] == "error"
        assert doc["error"].keys() == {"type", "message"}
    else:
        assert doc.keys() == {"error"}
        assert doc["error"].keys() == {"message", "type", "param", "code"}
    assert isinstance(doc["error"]["type"], str) and doc["error"]["message"]


@pytest.mark.parametrize("route", list(ROUTES), ids=lambda r: r.strip("/").replace("/", "_"))
async def test_fuzzed_bodies_get_no_5xx_and_errors_in_the_route_shape(
        route: str, start_router: StartRouter, upstream: Upstream,
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    router = await start_router(_config(upstream))
    seeds, groups, anthropic = ROUTES[route]
    rng = random.Random(f"{SEED}{route}")
    caplog.set_level(logging.WARNING)
    statuses: dict[int, int] = {}
    for n in range(EXAMPLES):
        body = mutated(rng, {**rng.choice(seeds), "model": rng.choice(groups)})
        # json, not orjson: it writes what orjson refuses (ints past 64 bits, lone
        # surrogates), which clients can send too.
        async with http.post(router.url + route, headers=AUTH,
                             data=json.dumps(body)) as resp:
            raw = await resp.read()
            case = f"example {n}: {json.dumps(body)[:2000]}"
            assert resp.status < 500, f"{resp.status} {raw[:500]!r} for {case}"
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status >= 400:
                _assert_error_shape(json.loads(raw), anthropic)
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records
              if r.levelno >= logging.ERROR]
    assert not errors
    # The fuzz reached both sides: some bodies were refused, some still served.
    assert statuses.get(200) and statuses.get(400), statuses
