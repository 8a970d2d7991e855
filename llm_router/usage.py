"""Selection counters: tokens served per (provider, key, model), in-flight estimates, quotas.

The counters are keyed by identity — provider name, key label, upstream model — never
by a position in the config, so a reload swaps the config and they carry over. With
``usage.snapshot_path`` they are written to disk (see :class:`SnapshotStore`), together
with any other section a component registers (limits, budgets), in one versioned JSON
document replaced atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = [
    "SNAPSHOT_VERSION",
    "CounterKey",
    "Reservation",
    "SnapshotStore",
    "UsageCounters",
    "utc_day",
]

log = logging.getLogger("llm_router.usage")

SNAPSHOT_VERSION: Final = 1
CounterKey = tuple[str, str, str]  # (provider, key label, upstream model)

_DEFAULT_COMPLETION_ESTIMATE: Final = 64.0
_EWMA_ALPHA: Final = 0.2
_MAX_LEARNT: Final = 4096


def utc_day(now: float | None = None) -> str:
    """The UTC calendar day, ``YYYY-MM-DD``: quotas reset when it changes."""
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


def _next_midnight(now: float) -> float:
    """Unix time of the UTC midnight after ``now`` (days are 86,400 s in Unix time)."""
    return (now // 86400 + 1) * 86400


@dataclass(slots=True)
class Reservation:
    """An in-flight request counted toward its candidate at an estimate until it settles."""

    key: CounterKey
    estimate: int
    group: str = ""  # what the client asked for: completion lengths are learnt per group
    settled: bool = False


class UsageCounters:
    """Tokens per (provider, key, model), plus in-flight estimates and daily request counts.

    Everything here runs on the event loop thread, so plain dicts suffice.
    """

    def __init__(self) -> None:
        self.tokens: dict[CounterKey, int] = {}
        self.inflight: dict[CounterKey, int] = {}
        now = time.time()
        self._day = utc_day(now)
        # Until then the day cannot change: _roll_day runs on every request, and a
        # datetime plus strftime each time showed in profiles.
        self._day_ends = _next_midnight(now)
        self._requests_today: dict[tuple[str, str], int] = {}
        self._completion_ewma: dict[str, float] = {}  # per requested group or provider/model

    # -- selection reads
    def load(self, key: CounterKey) -> int:
        """What selection weighs: tokens served plus estimates of requests in flight."""
        return self.tokens.get(key, 0) + self.inflight.get(key, 0)

    def requests_today(self, provider: str, key_label: str) -> int:
        self._roll_day()
        return self._requests_today.get((provider, key_label), 0)

    # -- request lifecycle
    def estimate(self, group: str, prompt_estimate: int, max_tokens: int | None) -> int:
        """Tokens a request will probably use: its prompt plus the completion length
        learnt for its group (the pick is not made yet, so the group is what is known)."""
        completion = self._completion_ewma.get(group, _DEFAULT_COMPLETION_ESTIMATE)
        if max_tokens is not None:
            completion = min(completion, float(max_tokens))
        return max(1, prompt_estimate + int(completion))

    def reserve(self, key: CounterKey, estimate: int, group: str = "") -> Reservation:
        """Count a request about to be sent; also charges the key's daily request quota."""
        self.inflight[key] = self.inflight.get(key, 0) + estimate
        self._roll_day()
        pk = (key[0], key[1])
        self._requests_today[pk] = self._requests_today.get(pk, 0) + 1
        return Reservation(key, estimate, group)

    def settle(self, res: Reservation, prompt_tokens: int, completion_tokens: int,
               penalty: int = 0) -> None:
        """Replace the reservation's estimate by what the request really used. Idempotent."""
        if res.settled:
            return
        res.settled = True
        left = self.inflight.get(res.key, 0) - res.estimate
        if left > 0:
            self.inflight[res.key] = left
        else:
            self.inflight.pop(res.key, None)
        used = max(0, prompt_tokens) + max(0, completion_tokens) + max(0, penalty)
        if used:
            self.tokens[res.key] = self.tokens.get(res.key, 0) + used
        if completion_tokens > 0:
            group = res.group or res.key[2]
            prev = self._completion_ewma.get(group)
            if prev is None and len(self._completion_ewma) >= _MAX_LEARNT:
                return  # provider/model names come from clients: keep this bounded
            self._completion_ewma[group] = (
                float(completion_tokens) if prev is None
                else prev + _EWMA_ALPHA * (completion_tokens - prev)
            )

    def _roll_day(self) -> None:
        now = time.time()
        if now < self._day_ends:
            return
        self._day_ends = _next_midnight(now)
        today = utc_day(now)
        if today != self._day:
            self._day = today
            self._requests_today.clear()

    # -- snapshot section
    def dump(self) -> dict[str, Any]:
        self._roll_day()
        return {
            "key_tokens": [
                {"provider": p, "key": k, "model": m, "tokens": n}
                for (p, k, m), n in sorted(self.tokens.items())
            ],
            "key_requests_day": self._day,
            "key_requests": [
                {"provider": p, "key": k, "requests": n}
                for (p, k), n in sorted(self._requests_today.items())
            ],
        }

    def restore(self, data: dict[str, Any]) -> None:
        for row in data.get("key_tokens", ()):
            key = (str(row["provider"]), str(row["key"]), str(row["model"]))
            self.tokens[key] = int(row["tokens"])
        if data.get("key_requests_day") == utc_day():
            for row in data.get("key_requests", ()):
                pk = (str(row["provider"]), str(row["key"]))
                self._requests_today[pk] = int(row["requests"])


class SnapshotStore:
    """One versioned JSON file holding named sections; written atomically, read leniently.

    A component registers a section with a ``dump`` and a ``restore`` callable. A
    missing file is a fresh start; an unreadable one is moved aside with a timestamp
    and logged, and the router starts from zero rather than refusing to start.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._sections: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}

    def register(self, name: str, dump: Callable[[], Any], restore: Callable[[Any], None]) -> None:
        self._sections[name] = (dump, restore)

    def load(self) -> bool:
        """Restore every registered section found in the file; False if nothing was loaded."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            log.info("no usage snapshot at %s; starting from zero", self.path)
            return False
        except OSError as exc:
            log.warning("cannot read usage snapshot %s: %s; starting from zero", self.path, exc)
            return False
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
                raise ValueError("not a llm-router usage snapshot")
            if doc["version"] > SNAPSHOT_VERSION:
                raise ValueError(f"snapshot version {doc['version']} is newer than this router")
            sections = doc.get("sections", {})
            for name, (_, restore) in self._sections.items():
                if name in sections:
                    restore(sections[name])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # JSON of the wrong shape (a list where a section expects a mapping) surfaces
            # as any of these from a section's restore; all mean "not a snapshot we read".
            aside = self.path.with_name(
                f"{self.path.name}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
            )
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            log.error("usage snapshot %s is unreadable (%s); moved it to %s and started from "
                      "zero", self.path, exc, aside)
            return False
        return True

    def save(self) -> None:
        """Write every section: temp file, fsync, rename. Never leaves a half-written file."""
        self.write(self.render())

    def render(self) -> bytes:
        """Every section, serialised now. Call on the event loop thread: the dumps read
        live state; the bytes can then be written from another thread with :meth:`write`."""
        doc = {
            "version": SNAPSHOT_VERSION,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sections": {name: dump() for name, (dump, _) in self._sections.items()},
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    def write(self, data: bytes) -> None:
        """Replace the file with ``data`` atomically (blocking: run it off the loop)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        # fsync the directory so the rename itself survives a power cut.
        with contextlib.suppress(OSError):
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
