"""``type: mock``: answers in-process from the fake upstream's generators."""

from __future__ import annotations

from typing import Final

from .api import MockProvider

__all__ = ["PROVIDER"]

PROVIDER: Final = MockProvider()
