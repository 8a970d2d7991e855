"""``type: openai``: any OpenAI-compatible API. Its wire is the hub."""

from __future__ import annotations

from typing import Final

from .api import OpenAIProvider

__all__ = ["PROVIDER"]

PROVIDER: Final = OpenAIProvider()
