"""The usage journal: what changed since the last snapshot, on disk within a fraction of a second.

A snapshot every ``snapshot_interval_s`` alone loses everything since the last one to a
crash or ``SIGKILL`` (issue 12 measured 2,304 requests and $5 lost 5 s after a
snapshot). So every change to what the snapshot holds is also appended, as one small
event, to ``<snapshot>.journal.<seq>``:

======  ==========================================================  ====================
tag     fields                                                      emitted by
======  ==========================================================  ====================
``a``   Unix time, user, client key                                 a request admitted
``r``   Unix time, user, key, provider/model, prompt, completion,   its usage recorded
        cost USD
``q``   UTC day, provider, provider key                             an upstream attempt
``t``   provider, provider key, model, tokens                       an attempt settled
``s``   provider, provider key, model, tokens (a floor)             a new key levelled
======  ==========================================================  ====================

On the request path an event is a tuple appended to a list (well under a microsecond).
Every :data:`FLUSH_S` the list is written and fsynced by a worker thread, so a crash
loses at most that long plus one write (docs/operations.md has the measured figure).
A write that fails is cut back to where it started (the file never holds half a line
in the middle) and its events are kept for the next flush.

A snapshot *rotates* the journal: on the event loop, in one step with serialising the
snapshot, new events start going to ``seq + 1`` and the snapshot records that number.
Once the snapshot is safely on disk, files before it are deleted. At start-up the
snapshot is read, the journal files from its number on are replayed in order, and the
result is folded into a new snapshot at once. Every file is validated whole first
(:func:`read_journals`); a last line cut short by the crash is the only thing ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from .shapes import ShapeError, count, mapping, money, rows, text, timestamp

__all__ = [
    "FLUSH_S",
    "JOURNAL_VERSION",
    "Event",
    "Journal",
    "check_event",
    "journal_files",
    "read_journals",
]

log = logging.getLogger("llm_router.journal")

FLUSH_S: Final = 0.2
JOURNAL_VERSION: Final = 1
_MAX_PENDING: Final = 1_000_000  # events kept while the disk refuses them (~100 MB)

Event = tuple[Any, ...]
_FIELDS: Final[dict[str, tuple[Callable[[Any, str], Any], ...]]] = {
    "a": (timestamp, text, text),
    "r": (timestamp, text, text, text, count, count, money),
    "q": (text, text, text),
    "t": (text, text, text, count),
    "s": (text, text, text, count),
}


def check_event(raw: Any, where: str) -> Event:
    """One journal line, checked field by field; :class:`ShapeError` if anything is off."""
    items = rows(raw, where)
    fields = _FIELDS.get(items[0]) if items and isinstance(items[0], str) else None
    if fields is None:
        raise ShapeError(where, f"unknown event {str(items[:1])[:40]}")
    if len(items) != len(fields) + 1:
        raise ShapeError(where, f"event '{items[0]}' has {len(items) - 1} fields, "
                                f"expected {len(fields)}")
    for i, (check, value) in enumerate(zip(fields, items[1:], strict=True), 1):
        check(value, f"{where}[{i}]")
    return tuple(items)


def journal_files(snapshot: Path) -> list[tuple[int, Path]]:
    """The journal files beside ``snapshot``, oldest first, as (seq, path)."""
    prefix = f"{snapshot.name}.journal."
    out: list[tuple[int, Path]] = []
    # No directory (yet), or not a directory: no journal; writing will say what is wrong.
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in snapshot.parent.iterdir():
            suffix = entry.name[len(prefix):]
            if entry.name.startswith(prefix) and suffix.isdigit():
                out.append((int(suffix), entry))
    return sorted(out)


def read_journals(files: list[tuple[int, Path]]) -> list[Event]:
    """Every event of ``files``, in order, all checked before any is returned."""
    events: list[Event] = []
    for seq, path in files:
        data = path.read_bytes()
        if not data:
            continue  # created, then the process died before the header was written
        lines = data.split(b"\n")
        if lines[-1]:
            # The crash cut the last write short: that event never happened on disk.
            log.warning("journal %s: ignoring a last record cut short (%d bytes)", path.name,
                        len(lines[-1]))
        lines.pop()
        if not lines:
            continue
        where = f"{path.name} line 1"
        try:
            header = mapping(orjson.loads(lines[0]), where)
        except orjson.JSONDecodeError as exc:
            raise ShapeError(where, f"not JSON ({exc.msg})") from None
        if header.get("journal") != JOURNAL_VERSION or header.get("seq") != seq:
            raise ShapeError(where, f"expected header {{\"journal\": {JOURNAL_VERSION}, "
                                    f"\"seq\": {seq}}}, got {lines[0][:80]!r}")
        for n, line in enumerate(lines[1:], 2):
            where = f"{path.name} line {n}"
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ShapeError(where, f"not JSON ({exc.msg})") from None
            events.append(check_event(raw, where))
    return events


class Journal:
    """The events of one snapshot path since its last snapshot; see the module docstring.

    ``append`` runs on the event loop; writes happen in worker threads, one at a time.
    """

    def __init__(self, snapshot: Path, seq: int) -> None:
        self.snapshot = snapshot
        self.seq = seq  # the file new events go to
        self.pending: list[Event] = []
        self._lock = asyncio.Lock()
        self._dropped = 0

    def append(self, event: Event) -> None:
        self.pending.append(event)

    def path(self, seq: int) -> Path:
        return self.snapshot.with_name(f"{self.snapshot.name}.journal.{seq}")

    def rotate(self) -> tuple[int, list[Event]]:
        """Start file ``seq + 1``; returns the old number and its unwritten events. Call in
        the same loop step as serialising the snapshot, which then covers those events."""
        seq, events = self.seq, self.pending
        self.seq, self.pending = seq + 1, []
        return seq, events

    async def flush(self) -> None:
        """Write and fsync what is pending (raises ``OSError``; the events are kept)."""
        if not self.pending:
            return
        async with self._lock:
            # Taken under the lock: a rotation's last events for this file, written by
            # :meth:`write`, then land after these, in the order they happened.
            if not self.pending:
                return
            seq, events = self.seq, self.pending
            self.pending = []
            try:
                await asyncio.to_thread(_append, self.path(seq), seq, events)
            except BaseException:
                self._keep(seq, events)
                raise

    def _keep(self, seq: int, events: list[Event]) -> None:
        """Events whose write failed: kept, oldest first, unless a rotation covers them."""
        if seq != self.seq:
            return  # rotated meanwhile: the snapshot being written covers them
        events.extend(self.pending)
        if len(events) > _MAX_PENDING:
            self._dropped += len(events) - _MAX_PENDING
            log.error("journal: the disk has refused writes for long; %d events dropped "
                      "so far", self._dropped)
            del events[:len(events) - _MAX_PENDING]
        self.pending = events

    async def write(self, seq: int, events: list[Event]) -> None:
        if not events:
            return
        async with self._lock:
            await asyncio.to_thread(_append, self.path(seq), seq, events)

    async def remove_before(self, seq: int) -> None:
        """Delete the files a snapshot now covers (after that snapshot is on disk)."""
        async with self._lock:
            await asyncio.to_thread(_remove, self.snapshot, seq)


def _append(path: Path, seq: int, events: list[Event]) -> None:
    data = b"".join([orjson.dumps(e) + b"\n" for e in events])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        if start == 0:
            data = orjson.dumps({"journal": JOURNAL_VERSION, "seq": seq}) + b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            # Never leave half a line followed by later appends: cut back and retry later.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
    if start == 0:
        _fsync_dir(path.parent)  # the new file's name must survive a crash too


def _remove(snapshot: Path, before: int) -> None:
    for seq, path in journal_files(snapshot):
        if seq < before:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
