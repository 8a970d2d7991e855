"""Per-user and per-key limits, spend and budgets (filled in by the teams issue).

The :class:`Ledger` lives on :class:`~llm_router.state.RouterState` as ``state.ledger``
and is persisted in the usage snapshot as the ``ledger`` section via :meth:`dump` /
:meth:`restore`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Ledger"]


class Ledger:
    """Request, token and spend counters per user and client key."""

    def dump(self) -> dict[str, Any]:
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        del data
