"""Fleet-wide traffic for the status page, through the state store's shared map.

Each router process (a replica, or a worker of ``serve --workers N``) keeps its own
:class:`~.traffic.Traffic` ring. With a shared state store (Redis), every process also
publishes its ring's export every :data:`PUBLISH_S` seconds under its own name, with a
TTL, and lists itself in a small directory entry; ``GET /admin/status`` on any process
adds up the exports it finds (:func:`~.traffic.merge_activity`).

How far off it can be (README, "Status page"): another process's figures are as old as
its last publication, at most :data:`PUBLISH_S` plus the store's latency, so the last
second or two of the fleet's minute can be short; a process that stopped drops out
within :data:`ENTRY_TTL_S`. The directory is read, changed and written back without a
lock: two processes writing it at once can drop one of them for one period, after which
it lists itself again. Without a shared store nothing is published and the page shows
this process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

from ..gateway.router_state import RouterState
from ..observe.traffic import Traffic

__all__ = ["ENTRY_TTL_S", "FLEET", "PUBLISH_S", "FleetTraffic", "SharedMap", "share_traffic"]

log = logging.getLogger("llm_router.status")

PUBLISH_S: Final = 2.0
ENTRY_TTL_S: Final = 10.0  # a process silent this long is no longer counted
_DIRECTORY: Final = "status:processes"
_ENTRY: Final = "status:traffic:"


class SharedMap(Protocol):
    """The state store's shared key-value hook (``StateStore.get``/``put``)."""

    async def get(self, name: str) -> bytes | None: ...

    async def put(self, name: str, value: bytes, ttl_s: float) -> None: ...


class FleetTraffic:
    """Publishes this process's traffic and reads every process's."""

    def __init__(self, shared: SharedMap, traffic: Traffic) -> None:
        self.shared = shared
        self.traffic = traffic
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.inflight = 0  # set by the publisher from the router state
        self._warned = False

    def _document(self) -> dict[str, Any]:
        return {"name": self.name, "at": time.time(), "inflight": self.inflight,
                "traffic": self.traffic.export()}

    async def publish(self) -> None:
        """Write this process's export and list it in the directory."""
        now = time.time()
        await self.shared.put(_ENTRY + self.name, orjson.dumps(self._document()), ENTRY_TTL_S)
        names = await self._directory(now)
        names[self.name] = now
        await self.shared.put(_DIRECTORY, orjson.dumps(names), ENTRY_TTL_S * 3)

    async def read(self) -> list[dict[str, Any]]:
        """Every live process's document; this process's is taken fresh, not from the map."""
        names = await self._directory(time.time())
        names.pop(self.name, None)
        raws = await asyncio.gather(*(self.shared.get(_ENTRY + n) for n in names))
        docs = [self._document()]
        for raw in raws:
            if raw is None:
                continue  # expired: the process stopped publishing
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                doc = orjson.loads(raw)
                if isinstance(doc, dict) and isinstance(doc.get("traffic"), dict):
                    docs.append(doc)
        return docs

    async def _directory(self, now: float) -> dict[str, float]:
        raw = await self.shared.get(_DIRECTORY)
        try:
            names = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            names = {}
        if not isinstance(names, dict):
            return {}
        return {str(n): float(at) for n, at in names.items()
                if isinstance(at, (int, float)) and at > now - ENTRY_TTL_S}

    async def run(self, inflight: Callable[[], int]) -> None:
        """Publish every :data:`PUBLISH_S` until cancelled; ``inflight()`` reads the
        process's in-flight count. A failing store is logged once and retried."""
        while True:
            self.inflight = inflight()
            try:
                await self.publish()
                self._warned = False
            except Exception as exc:  # the store's own errors: it answers locally when down
                if not self._warned:
                    log.warning("status: cannot publish this process's traffic to the shared "
                                "store (%s); the page shows the processes it can read", exc)
                    self._warned = True
            await asyncio.sleep(PUBLISH_S)


FLEET: Final = web.AppKey("fleet_traffic", FleetTraffic)


def share_traffic(app: web.Application, state: RouterState) -> None:
    """With a shared state store, publish this process's traffic while the app runs (a
    ``cleanup_ctx``) and let ``GET /admin/status`` read the fleet's."""
    if state.store.backend == "memory":
        return
    fleet = app[FLEET] = FleetTraffic(state.store, state.traffic)

    async def publisher(app: web.Application) -> AsyncIterator[None]:
        del app
        task = asyncio.create_task(fleet.run(lambda: state.inflight), name="status-publisher")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(publisher)
