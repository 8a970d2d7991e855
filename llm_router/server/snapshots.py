"""Usage snapshots and their journal: load at start-up, journal continuously, snapshot on a
schedule and after draining.

With ``usage.snapshot_path`` the selection counters (section ``counters``) and the
limits/spend ledger (section ``ledger``) are loaded before the listener opens, with the
journal replayed on top (:mod:`journal`), and folded into a fresh snapshot at once: that
first write is also the proof that the directory is writable, and start-up fails
(:class:`SnapshotError`) when it is not. From then on every change is journalled and
flushed every ``journal.FLUSH_S``; a snapshot is written every ``snapshot_interval_s``
and once more at shutdown, after in-flight requests have drained (this runs in the
app's ``cleanup_ctx``, which aiohttp exits only after that). Snapshots are serialised on
the event loop, where nothing changes underneath, and written (temp file, fsync, rename)
in a worker thread, so the loop never blocks on the disk.

Write failures are counted (``llm_router_snapshot_errors_total``), the time of the last
good snapshot is exported (``llm_router_snapshot_last_success_timestamp_seconds``), and
after :data:`MAX_FAILURES` consecutive failures of either kind the router reports not
ready until a write succeeds again. A final snapshot that fails makes the process exit 1.

A reload may change the settings. A new interval applies at once. A new path is written
from then on (it is *not* read: the live counters are newer than any file), with a
journal of its own; the old files are left as they were. Removing the path stops
snapshots and the journal; the last files stay on disk.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from aiohttp import web

from ..config import Config
from ..gateway.router_state import RouterState
from ..gateway.routing import counter_keys
from ..ledger.journal import FLUSH_S, Event, Journal, journal_files
from ..ledger.usage import SnapshotError, SnapshotStore
from .handlers import STATE
from .workers import worker_path

__all__ = ["MAX_FAILURES", "UsageSnapshots", "usage_snapshots"]

log = logging.getLogger("llm_router.snapshots")

MAX_FAILURES: Final = 3  # consecutive failed writes (snapshot or journal) before not-ready


class UsageSnapshots:
    """Keeps ``state.snapshot`` and its journal in step with the config and on disk."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        self._lock = asyncio.Lock()  # one snapshot at a time, in order
        self._wake = asyncio.Event()
        self._closing = False
        self._save_now = False
        self._snapshot_failures = 0
        self._journal_failures = 0
        self._claim: int | None = None  # the open, locked PATH.lock while we own PATH
        path = state.config.usage.snapshot_path
        state.snapshot = self._store(path) if path else None

    def _store(self, path: str) -> SnapshotStore:
        store = SnapshotStore(worker_path(path))
        s = self.state
        # Through the state, not bound methods, so a replaced counters object is followed.
        store.register("counters", lambda: s.counters.dump(), lambda d: s.counters.restore(d),
                       type(s.counters).validate)
        store.register("ledger", lambda: s.ledger.dump(), lambda d: s.ledger.restore(d),
                       type(s.ledger).validate)
        store.on_replay(self._replay)
        return store

    def _replay(self, event: Event) -> None:
        if event[0] in ("a", "r"):
            self.state.ledger.replay(event)
        else:
            self.state.counters.replay(event)

    def _attach_journal(self, store: SnapshotStore | None) -> None:
        journal = Journal(store.path, store.journal_seq) if store is not None else None
        self.state.journal = self.state.ledger.journal = self.state.counters.journal = journal

    def load(self) -> None:
        """Restore the file and its journal, if any, and fold them into a new snapshot
        (blocking, but before the listener opens). :class:`SnapshotError` if that write
        fails: a router that cannot keep its counters must not start."""
        store = self.state.snapshot
        if store is None:
            return
        self._claim = _claim(store.path)
        try:
            self._load(store)
        except BaseException:
            self._release()
            raise

    def _load(self, store: SnapshotStore) -> None:
        if store.load():
            # Keys added to the config while the router was down join level too.
            state = self.state
            state.level_new_keys(counter_keys(state.config) - state.counters.tokens.keys())
        self._attach_journal(store)
        journal = self.state.journal
        assert journal is not None
        try:
            store.write(store.render())
        except OSError as exc:
            raise SnapshotError(f"cannot write the usage snapshot {store.path} "
                                f"(usage.snapshot_path): {exc}") from None
        self._succeeded()
        for seq, path in journal_files(store.path):
            if seq < journal.seq:  # replayed, and folded into the snapshot just written
                path.unlink(missing_ok=True)

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
                self._release()
                self._attach_journal(None)
                self._snapshot_failures = self._journal_failures = 0
                self.state.snapshot_failing = False
            else:
                log.info("usage snapshots now go to %s (written now from the live counters, "
                         "not read)%s", after.snapshot_path,
                         f"; {before.snapshot_path} is left as it was"
                         if before.snapshot_path else "")
                store = self.state.snapshot = self._store(after.snapshot_path)
                self._release()
                try:
                    self._claim = _claim(store.path)
                except SnapshotError as exc:  # a reload cannot be refused from here: say it
                    log.error("%s", exc)
                # Journal files a past run left there belong to the file about to be
                # replaced: start after them (the save below deletes them).
                files = journal_files(store.path)
                store.journal_seq = files[-1][0] + 1 if files else 1
                self._attach_journal(store)
                self._save_now = True
        self._wake.set()  # re-arm the timer with the new interval

    async def save(self) -> bool:
        """Write the snapshot now; False (and a log line) if there is none or it failed."""
        async with self._lock:
            store, journal = self.state.snapshot, self.state.journal
            if store is None or journal is None:
                return False
            # One loop step: the snapshot covers exactly the events before the rotation.
            seq, events = journal.rotate()
            store.journal_seq = journal.seq
            try:
                data = store.render()
            except Exception:  # a section that failed to dump: a bug, but keep serving
                log.exception("cannot serialise usage snapshot %s", store.path)
                journal.pending[:0] = events
                self._failed()
                return False
            try:
                # The old file gets its last events too, in case this snapshot fails.
                await journal.write(seq, events)
                journalled = True
            except OSError as exc:
                log.error("cannot write usage journal %s: %s", journal.path(seq), exc)
                journalled = False
            try:
                await asyncio.to_thread(store.write, data)
            except OSError as exc:
                log.error("cannot write usage snapshot %s: %s; will try again in %g s (the "
                          "journal keeps every change since the last good one)",
                          store.path, exc, self.state.config.usage.snapshot_interval_s)
                if not journalled:  # on disk nowhere: they go first in the next file
                    journal.pending[:0] = events
                self._failed()
                return False
            self._succeeded()
            try:
                await journal.remove_before(journal.seq)
            except OSError as exc:  # harmless: replay starts at the snapshot's number
                log.warning("cannot delete old usage journal files: %s", exc)
            return True

    def _succeeded(self) -> None:
        self._snapshot_failures = 0
        self.state.metrics.snapshot_last_success.set(time.time())
        self._update_readiness()

    def _failed(self) -> None:
        self._snapshot_failures += 1
        self.state.metrics.snapshot_errors.inc()
        self._update_readiness()

    def _update_readiness(self) -> None:
        failing = max(self._snapshot_failures, self._journal_failures) >= MAX_FAILURES
        if failing and not self.state.snapshot_failing:
            log.error("usage persistence failed %d times in a row: reporting not ready until "
                      "a write succeeds", MAX_FAILURES)
        elif self.state.snapshot_failing and not failing:
            log.info("usage persistence works again: ready")
        self.state.snapshot_failing = failing

    async def flush_journal(self) -> None:
        """Write what the journal holds; a failure is counted and retried next time."""
        journal = self.state.journal
        if journal is None:
            return
        try:
            await journal.flush()
        except OSError as exc:
            self._journal_failures += 1
            self.state.metrics.snapshot_errors.inc()
            if self._journal_failures == 1:  # once per failing spell, not 5 times a second
                log.error("cannot write usage journal %s: %s; retrying every %g s",
                          journal.path(journal.seq), exc, FLUSH_S)
            self._update_readiness()
            return
        if self._journal_failures:
            log.info("usage journal writes work again")
            self._journal_failures = 0
            self._update_readiness()

    async def run_journal(self) -> None:
        """Flush the journal every ``FLUSH_S`` until :meth:`close`."""
        while not self._closing:
            await asyncio.sleep(FLUSH_S)
            await self.flush_journal()

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

    async def close(self, *tasks: asyncio.Task[None]) -> None:
        """Stop the schedule and the journal (letting writes in progress finish: a
        cancelled write could land twice), then the final save. A final save that fails
        marks the process to exit 1."""
        self._closing = True
        self._wake.set()
        await asyncio.gather(*tasks)
        store = self.state.snapshot
        if store is None:
            self._release()
            return
        if await self.save():
            log.info("usage snapshot written to %s", store.path)
        else:
            self.state.final_snapshot_failed = True
            log.error("the final usage snapshot %s could not be written: counters since the "
                      "last good snapshot survive only in its journal, if that was written",
                      store.path)
        self._release()

    def _release(self) -> None:
        if self._claim is not None:
            os.close(self._claim)  # closing the descriptor drops the lock
            self._claim = None


def _claim(path: Path) -> int:
    """Hold ``PATH.lock`` while this router owns the snapshot at ``PATH``: a second router
    on the same path would overwrite the first one's spend (last writer wins) and delete
    its journal. Refuses the start; after a reload to a taken path it is only logged."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SnapshotError(f"cannot write the usage snapshot {path} "
                            f"(usage.snapshot_path): {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SnapshotError(f"usage snapshot {path} is in use by another llm-router (pid "
                            f"{holder}): give each process its own usage.snapshot_path, or "
                            "share limits and spend through state.redis_url") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


async def usage_snapshots(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: load the snapshot, journal and save it on a schedule, save it at
    shutdown."""
    state = app[STATE]
    snaps = UsageSnapshots(state)
    snaps.load()
    state.swap_listeners.append(snaps.follow)
    task = asyncio.create_task(snaps.run(), name="usage-snapshots")
    journal = asyncio.create_task(snaps.run_journal(), name="usage-journal")
    yield
    await snaps.close(task, journal)
    state.swap_listeners.remove(snaps.follow)
