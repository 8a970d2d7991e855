"""The three kinds of member behind group g that the /v1/responses tests route to: an
OpenAI-compatible server without a Responses API (``chat_member``, translated to Chat
Completions), an Anthropic provider (``anthropic_member``) and a ``responses: native``
member (``native_member``)."""

from __future__ import annotations

from typing import Any

from .conftest import Upstream
from .helpers import openai_provider

PRICE = {"input": 1.0, "output": 2.0}


def chat_member(up: Upstream) -> dict[str, Any]:
    return {"providers": [openai_provider("oa", up)],
            "groups": [{"name": "g", "models": [{"provider": "oa", "name": "gpt-up"}]}],
            "pricing": {"gpt-up": PRICE}}


def anthropic_member(up: Upstream) -> dict[str, Any]:
    return {"providers": [{"name": "an", "type": "anthropic", "base_url": up.root,
                           "api_keys": ["sk-ant"]}],
            "groups": [{"name": "g", "models": [{"provider": "an", "name": "claude-up"}]}]}


def native_member(up: Upstream, keys: list[str] | None = None) -> dict[str, Any]:
    return {"providers": [openai_provider("nat", up, keys, responses="native")],
            "groups": [{"name": "g", "models": [{"provider": "nat", "name": "gpt-native"}]}],
            "pricing": {"gpt-native": PRICE}}
