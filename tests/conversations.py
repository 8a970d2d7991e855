"""Prompt-cache affinity's test conversations: a group of three keys (a1 and a2 at weight 1,
b1 at weight 2) on one fake upstream, and a chat whose history grows turn by turn as a
client keeps it."""

from __future__ import annotations

from typing import Any

from .conftest import Router, Upstream
from .helpers import openai_provider

SYSTEM = "You plan trips. Answer in one short paragraph. " * 8
PRICE = {"input": 1.0, "output": 2.0, "cached_input": 0.1}


def group_config(up: Upstream, affinity: Any = None) -> dict[str, Any]:
    """Keys a1 and a2 at weight 1 and b1 at weight 2, all on one fake."""
    group: dict[str, Any] = {"name": "g", "models": [{"provider": "a", "name": "m", "weight": 1},
                                                     {"provider": "b", "name": "m", "weight": 2}]}
    if affinity is not None:
        group["affinity"] = affinity
    return {"providers": [openai_provider("a", up, ["sk-a1", "sk-a2"]),
                          openai_provider("b", up, ["sk-b1"])],
            "groups": [group], "pricing": {"m": PRICE}}


class Conversation:
    """One chat, its history growing turn by turn as a client keeps it."""

    def __init__(self, n: int) -> None:
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"Trip {n}. {SYSTEM}"},  # shares no prefix
            {"role": "user", "content": f"Plan trip {n}."}]

    async def turn(self, router: Router, **extra: Any) -> Any:
        raw = await router.openai().chat.completions.with_raw_response.create(
            model="g", messages=self.messages, max_tokens=8, **extra)  # type: ignore[arg-type]
        answer = raw.parse()
        self.messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                          {"role": "user", "content": "And then?"}]
        return raw


async def warm(router: Router) -> None:
    """One request on each of the three keys (zero-load keys are the lowest, so three new
    conversations take one each): a lowest of zero would leave no slack to stay within."""
    for n in range(3):
        await router.openai().chat.completions.create(  # type: ignore[call-overload]
            model="g", messages=[{"role": "user", "content": f"warm-up {n} " + SYSTEM}])


def keys_per_turn(up: Upstream, opening: str) -> list[str | None]:
    return [r.api_key for r in up.fake.requests if r.body is not None
            and r.body["messages"][1:2] == [{"role": "user", "content": opening}]]
