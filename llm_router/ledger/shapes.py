"""Strict shape checks for state read back from disk (usage snapshot and journal).

A file the router wrote is trusted only after every value in it has been checked: a
number that is not a finite, non-negative number, a string that is not a string, a list
of the wrong length, all raise :class:`ShapeError` naming where, before anything is
applied. The checks return the value so callers can read and check in one expression.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ShapeError", "count", "mapping", "money", "rows", "text", "timestamp"]


class ShapeError(ValueError):
    """Data of the wrong shape; the message starts with where (``ledger.users[2].day``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ShapeError(where, f"expected an object, got {_kind(value)}")
    return value


def rows(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ShapeError(where, f"expected a list, got {_kind(value)}")
    return value


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ShapeError(where, f"expected a string, got {_kind(value)}")
    return value


def count(value: Any, where: str) -> int:
    """A non-negative integer (a JSON boolean is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShapeError(where, f"expected a non-negative integer, got {value!r}"[:200])
    return value


def money(value: Any, where: str) -> float:
    """A finite, non-negative number (USD)."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value < 0):
        raise ShapeError(where, f"expected a non-negative number, got {value!r}"[:200])
    return float(value)


def timestamp(value: Any, where: str) -> float:
    """Unix seconds: finite and positive."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise ShapeError(where, f"expected a Unix time, got {value!r}"[:200])
    return float(value)
