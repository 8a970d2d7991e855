"""The team the user, limit and budget tests configure: alice an admin, bob a user with a
laptop key and a CI key, groups g and h on one fake upstream."""

from __future__ import annotations

from typing import Any

from llm_router.config import sha256_hex

from .conftest import Router, Upstream
from .helpers import HELLO, openai_provider

ALICE, BOB, BOB_CI = "sk-alice-laptop", "sk-bob-laptop", "sk-bob-ci"


def team(up: Upstream, *, bob: dict[str, Any] | None = None, ci: dict[str, Any] | None = None,
         **top: Any) -> dict[str, Any]:
    """Groups g (real-model) and h (other-model); alice is an admin, bob a user."""
    return {
        "providers": [openai_provider("up", up)],
        "groups": [{"name": "g", "models": [{"provider": "up", "name": "real-model"}]},
                   {"name": "h", "models": [{"provider": "up", "name": "other-model"}]}],
        "users": [
            {"name": "alice", "role": "admin",
             "keys": [{"sha256": sha256_hex(ALICE), "name": "laptop"}]},
            {"name": "bob", "keys": [{"sha256": sha256_hex(BOB), "name": "laptop"},
                                     {"key": BOB_CI, "name": "ci", **(ci or {})}],
             **(bob or {})},
        ],
        **top,
    }


async def chat(router: Router, key: str, model: str = "g", **kw: Any) -> Any:
    return await router.openai(key).chat.completions.create(
        model=model, messages=HELLO, **kw)  # type: ignore[arg-type]
