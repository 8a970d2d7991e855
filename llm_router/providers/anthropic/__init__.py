"""``type: anthropic``: Anthropic's Messages API, and hub <-> Messages translation."""

from __future__ import annotations

from typing import Final

from .api import AnthropicProvider

__all__ = ["PROVIDER"]

PROVIDER: Final = AnthropicProvider()
