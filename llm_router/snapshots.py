"""Usage snapshots on a schedule: load at start-up, save every interval and after draining.

With ``usage.snapshot_path`` the selection counters (section ``counters``) and the
limits/spend ledger (section ``ledger``) are loaded before the listener opens, saved every
``usage.snapshot_interval_s`` and once more at shutdown, after in-flight requests have
drained (this runs in the app's ``cleanup_ctx``, which aiohttp exits only after that).
The sections are serialised on the event loop, where they cannot change underneath, and
the file is written (temp file, fsync, rename) in a worker thread, so the loop never
blocks on the disk.

A reload may change the settings. A new interval applies at once. A new path is written
from then on (it is *not* read: the live counters are newer than any file); the old
file is left as it was. Removing the path stops snapshots; the last file stays on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .config import Config
from .handlers import STATE
from .routing import counter_keys
from .state import RouterState
from .usage import SnapshotStore

__all__ = ["UsageSnapshots", "usage_snapshots"]

log = logging.getLogger("llm_router.snapshots")


class UsageSnapshots:
    """Keeps ``state.snapshot`` in step with the config and writes it on a schedule."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        self._lock = asyncio.Lock()  # one write at a time, in order
        self._wake = asyncio.Event()
        self._closing = False
        self._save_now = False
        path = state.config.usage.snapshot_path
        state.snapshot = self._store(path) if path else None

    def _store(self, path: str) -> SnapshotStore:
        store = SnapshotStore(path)
        s = self.state
        # Through the state, not bound methods, so a replaced counters object is followed.
        store.register("counters", lambda: s.counters.dump(), lambda d: s.counters.restore(d))
        store.register("ledger", lambda: s.ledger.dump(), lambda d: s.ledger.restore(d))
        return store

    def load(self) -> None:
        """Restore the file, if any (blocking, but before the listener opens)."""
        store = self.state.snapshot
        if store is not None and store.load():
            log.info("usage snapshot restored from %s (%d counters)", store.path,
                     len(self.state.counters.tokens))
            # Keys added to the config while the router was down join level too.
            state = self.state
            state.level_new_keys(counter_keys(state.config) - state.counters.tokens.keys())

    def follow(self, old: Config, new: Config) -> None:
        """Swap listener: adopt changed ``usage`` settings from a reload."""
        before, after = old.usage, new.usage
        if before == after:
            return
        if before.snapshot_path != after.snapshot_path:
            if after.snapshot_path is None:
                log.warning("usage.snapshot_path removed: counters will no longer survive a "
                            "restart; %s is left as it was", before.snapshot_path)
                self.state.snapshot = None
            else:
                log.info("usage snapshots now go to %s (written now from the live counters, "
                         "not read)%s", after.snapshot_path,
                         f"; {before.snapshot_path} is left as it was"
                         if before.snapshot_path else "")
                self.state.snapshot = self._store(after.snapshot_path)
                self._save_now = True
        self._wake.set()  # re-arm the timer with the new interval

    async def save(self) -> bool:
        """Write the snapshot now; False (and a log line) if there is none or it failed."""
        async with self._lock:
            store = self.state.snapshot
            if store is None:
                return False
            try:
                data = store.render()
                await asyncio.to_thread(store.write, data)
            except Exception:  # a full disk, a read-only volume, a section that failed to dump
                log.exception("cannot write usage snapshot %s; will try again", store.path)
                return False
            return True

    async def run(self) -> None:
        """Save every ``snapshot_interval_s`` until :meth:`close`."""
        while not self._closing:
            self._wake.clear()
            usage = self.state.config.usage
            timeout = usage.snapshot_interval_s if self.state.snapshot is not None else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                due = self._save_now
            except TimeoutError:
                due = True
            if self._closing:
                return
            if due:
                self._save_now = False
                await self.save()

    async def close(self, task: asyncio.Task[None]) -> None:
        """Stop the schedule (letting a write in progress finish), then the final save."""
        self._closing = True
        self._wake.set()
        await task
        store = self.state.snapshot
        if store is not None and await self.save():
            log.info("usage snapshot written to %s", store.path)


async def usage_snapshots(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: load the snapshot, save it on a schedule, save it at shutdown."""
    state = app[STATE]
    snaps = UsageSnapshots(state)
    snaps.load()
    state.swap_listeners.append(snaps.follow)
    task = asyncio.create_task(snaps.run(), name="usage-snapshots")
    yield
    await snaps.close(task)
    state.swap_listeners.remove(snaps.follow)
