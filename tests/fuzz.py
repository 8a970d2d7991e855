"""A small seeded mutator of JSON request bodies, for the fuzz tests of the model routes.

:func:`mutated` takes a valid body and breaks it the ways a careless or hostile client
does: a value of the wrong type at any depth, a field removed, an unknown field added,
a value wrapped in a list or a list flattened, or the right type with an odd value
(empty, zero, negative, huge). The same seed gives the same bodies, so
a failure names a case that can be replayed.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Final

__all__ = ["WRONG_VALUES", "messages_body", "mutated"]

# Values that are wrong somewhere: every JSON type, empties, extremes, nested junk.
WRONG_VALUES: Final[tuple[Any, ...]] = (
    None, True, False, 0, -1, 1.5, -2.5e300, 2**70, "", "five", "x" * 3000, "\u0000\ud7ff",
    [], [1], [None], ["a", 2], {}, {"type": 1}, {"type": "text", "text": 1},
    [{"type": "text", "text": {"a": 1}}], {"a": {"b": [1, {"c": None}]}},
    [{"type": "image", "source": 5}], [{"type": "tool_result", "content": 3}],
)


def _same_type(rng: random.Random, value: Any) -> Any:
    """A value of the same JSON type as ``value`` that is odd in its own way."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice((0, -1, 2**63 - 1))
    if isinstance(value, float):
        return rng.choice((0.0, -1.0, 1e308))
    if isinstance(value, str):
        return rng.choice(("", " ", "\u0000", "x" * 3000, "\u00e9\U0001f600"))
    if isinstance(value, list):
        return rng.choice(([], value * 2))
    return {}


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``value`` (keys and indexes), the root excluded."""
    out: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = (list(value.items()) if isinstance(value, dict)
                                    else list(enumerate(value)) if isinstance(value, list)
                                    else [])
    for key, child in items:
        out.append((*path, key))
        out.extend(_nodes(child, (*path, key)))
    return out


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        body = body[step]
    return body


def _mutate_once(rng: random.Random, body: dict[str, Any]) -> None:
    paths = _nodes(body)
    if not paths:
        return
    path = rng.choice(paths)
    parent, last = _parent(body, path), path[-1]
    how = rng.randrange(7)
    if how <= 1:  # the most telling break: a wrong type
        parent[last] = copy.deepcopy(rng.choice(WRONG_VALUES))
    elif how == 2:  # the right type, an odd value: empty, zero, negative, huge
        parent[last] = _same_type(rng, parent[last])
    elif how == 3:
        del parent[last]
    elif how == 4 and isinstance(parent, dict):
        parent[f"junk_{rng.randrange(100)}"] = copy.deepcopy(rng.choice(WRONG_VALUES))
    elif isinstance(parent[last], list) and parent[last]:
        parent[last] = parent[last][0]
    else:
        parent[last] = [parent[last]]


def mutated(rng: random.Random, seed_body: dict[str, Any], most: int = 2) -> dict[str, Any]:
    """A copy of ``seed_body`` with one to ``most`` random breaks."""
    body = copy.deepcopy(seed_body)
    for _ in range(rng.randint(1, most)):
        _mutate_once(rng, body)
    return body


_ANTHROPIC_IMAGE: Final = {"type": "image", "source": {
    "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def messages_body(*, server_tool: bool = False, image_in_result: bool = False
                  ) -> dict[str, Any]:
    """A valid Anthropic Messages body using most of the request's features (system
    blocks, a tool, an image, a tool round trip) for model ``oa``: the seed of the
    Messages fuzz and conformance runs. ``server_tool`` adds Anthropic's web search,
    ``image_in_result`` an image inside the tool result: the fuzz run sends both, the
    conformance run, which needs each seed answered 200 by every member, neither."""
    lookup = {"name": "lookup", "description": "find things",
              "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
    result: list[dict[str, Any]] = [{"type": "text", "text": "cats purr"}]
    if image_in_result:
        result.append(_ANTHROPIC_IMAGE)
    return {
        "model": "oa", "max_tokens": 32, "temperature": 0.5, "top_p": 0.9,
        "stop_sequences": ["END"], "system": [{"type": "text", "text": "Be brief."}],
        "metadata": {"user_id": "u1"},
        "tools": [lookup] + ([{"type": "web_search_20250305", "name": "web_search"}]
                             if server_tool else []),
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look up cats"},
                                         _ANTHROPIC_IMAGE]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "looking"},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                 "input": {"q": "cats"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
                 "content": result},
                {"type": "text", "text": "thanks"}]},
        ],
    }
