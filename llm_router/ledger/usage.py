"""Selection counters: tokens served per (provider, key, model), in-flight estimates, quotas.

The counters are keyed by identity — provider name, key label, upstream model — never
by a position in the config, so a reload swaps the config and they carry over. With
``usage.snapshot_path`` they are written to disk (see :class:`SnapshotStore`), together
with any other section a component registers (limits, budgets), in one versioned JSON
document replaced atomically, and every change in between goes to the journal
(:mod:`journal`). What is read back is validated whole before any of it is applied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from ..hub.usage import TOKEN_COUNT_LIMIT, bounded_count
from .journal import Event, Journal, journal_files, read_journals
from .shapes import ShapeError, count, mapping, rows, text

__all__ = [
    "SNAPSHOT_VERSION",
    "CounterKey",
    "Reservation",
    "SnapshotError",
    "SnapshotStore",
    "UsageCounters",
    "completion_ceiling",
    "utc_day",
]

log = logging.getLogger("llm_router.usage")

SNAPSHOT_VERSION: Final = 1
CounterKey = tuple[str, str, str]  # (provider, key label, upstream model)

_DEFAULT_COMPLETION_ESTIMATE: Final = 64.0
_EWMA_ALPHA: Final = 0.2
_MAX_LEARNT: Final = 4096


# The request fields that cap an answer's length, whatever the dialect: OpenAI chat
# (max_tokens, max_completion_tokens), Responses (max_output_tokens), Anthropic Messages
# (max_tokens); and those that ask for several answers at once (chat and legacy
# completions: n; legacy completions: best_of, each one billed).
_LENGTH_FIELDS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_CHOICE_FIELDS: Final = ("n", "best_of")
_MAX_CHOICES: Final = 128  # OpenAI's own bound on n; an upstream refuses more


def completion_ceiling(body: Mapping[str, Any]) -> int | None:
    """The most completion tokens the request allows; None when it sets no length.

    The largest of the length fields the client set (an upstream may honour any of
    them), times the number of answers it asked for. A budget reserves this much, so a
    burst of such requests cannot spend more than one request over it (docs/teams.md).
    """
    # Positive integers only (type() is int: max_tokens: true is not a length).
    # Unrolled over _LENGTH_FIELDS and _CHOICE_FIELDS: this runs for every request.
    get = body.get
    longest = 0
    n = get("max_tokens")
    if type(n) is int and n > longest:
        longest = n
    n = get("max_completion_tokens")
    if type(n) is int and n > longest:
        longest = n
    n = get("max_output_tokens")
    if type(n) is int and n > longest:
        longest = n
    if not longest:
        return None
    choices = 1
    n = get("n")
    if type(n) is int and n > choices:
        choices = min(n, _MAX_CHOICES)
    n = get("best_of")
    if type(n) is int and n > choices:
        choices = min(n, _MAX_CHOICES)
    return min(longest * choices, TOKEN_COUNT_LIMIT)


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
        self.journal: Journal | None = None  # with a snapshot path: every change goes here

    # -- selection reads
    def load(self, key: CounterKey) -> int:
        """What selection weighs: tokens served plus estimates of requests in flight."""
        return self.tokens.get(key, 0) + self.inflight.get(key, 0)

    def key_requests(self) -> tuple[str, dict[tuple[str, str], int]]:
        """Today's UTC day and the live (provider, key) -> requests map behind the key
        quotas, for a shared store to exchange with other replicas."""
        self._roll_day()
        return self._day, self._requests_today

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
        if time.time() >= self._day_ends:
            self._roll_day()
        pk = (key[0], key[1])
        self._requests_today[pk] = self._requests_today.get(pk, 0) + 1
        if self.journal is not None:
            self.journal.append(("q", self._day, key[0], key[1]))
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
        # Bounded whatever the caller passes, so that nothing out of range reaches the
        # snapshot (hub.usage validates upstream counts before they get here).
        if not 0 <= prompt_tokens <= TOKEN_COUNT_LIMIT:
            prompt_tokens = bounded_count(prompt_tokens)
        if not 0 <= completion_tokens <= TOKEN_COUNT_LIMIT:
            completion_tokens = bounded_count(completion_tokens)
        used = prompt_tokens + completion_tokens
        if penalty:  # 0 unless the config sets one
            used += penalty if 0 <= penalty <= TOKEN_COUNT_LIMIT else bounded_count(penalty)
        if used:
            self.tokens[res.key] = self.tokens.get(res.key, 0) + used
            if self.journal is not None:
                self.journal.append(("t", *res.key, used))
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

    @staticmethod
    def validate(data: Any, where: str) -> dict[str, Any]:
        """:meth:`dump`'s shape, every value checked (:class:`ShapeError` otherwise)."""
        d = mapping(data, where)
        for i, row in enumerate(rows(d.get("key_tokens"), f"{where}.key_tokens")):
            at = f"{where}.key_tokens[{i}]"
            r = mapping(row, at)
            for name in ("provider", "key", "model"):
                text(r.get(name), f"{at}.{name}")
            count(r.get("tokens"), f"{at}.tokens")
        text(d.get("key_requests_day"), f"{where}.key_requests_day")
        for i, row in enumerate(rows(d.get("key_requests"), f"{where}.key_requests")):
            at = f"{where}.key_requests[{i}]"
            r = mapping(row, at)
            text(r.get("provider"), f"{at}.provider")
            text(r.get("key"), f"{at}.key")
            count(r.get("requests"), f"{at}.requests")
        return d

    def restore(self, data: dict[str, Any]) -> None:
        """Load a :meth:`dump` that :meth:`validate` accepted."""
        for row in data["key_tokens"]:
            self.tokens[(row["provider"], row["key"], row["model"])] = row["tokens"]
        if data["key_requests_day"] == utc_day():
            for row in data["key_requests"]:
                self._requests_today[(row["provider"], row["key"])] = row["requests"]

    def replay(self, event: Event) -> None:
        """Apply one journal event (``q``, ``t`` or ``s``) as it was applied live."""
        tag = event[0]
        if tag == "q":
            if event[1] == utc_day():  # yesterday's requests no longer count
                pk = (event[2], event[3])
                self._requests_today[pk] = self._requests_today.get(pk, 0) + 1
        elif tag == "t":
            key = (event[1], event[2], event[3])
            self.tokens[key] = self.tokens.get(key, 0) + event[4]
        elif tag == "s":
            key = (event[1], event[2], event[3])
            self.tokens[key] = max(self.tokens.get(key, 0), event[4])


class SnapshotError(Exception):
    """The snapshot cannot be written where the config says (start-up refuses to go on)."""


@dataclass(frozen=True, slots=True)
class _Section:
    dump: Callable[[], Any]
    validate: Callable[[Any, str], Any]
    restore: Callable[[Any], None]


class SnapshotStore:
    """One versioned JSON file holding named sections, plus its journal (:mod:`journal`).

    A component registers a section with ``dump``, ``validate`` and ``restore``
    callables, and the store one ``replay`` for journal events. :meth:`load` checks the
    file and every journal file whole before applying anything: a file of the wrong
    shape is never half-applied. It is moved aside, with its journal, and the router
    starts from zero, loudly.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._sections: dict[str, _Section] = {}
        self._replay: Callable[[Event], None] = lambda _event: None
        self.journal_seq = 1  # the journal file that follows the snapshot in memory

    def register(self, name: str, dump: Callable[[], Any], restore: Callable[[Any], None],
                 validate: Callable[[Any, str], Any]) -> None:
        self._sections[name] = _Section(dump, validate, restore)

    def on_replay(self, replay: Callable[[Event], None]) -> None:
        self._replay = replay

    def load(self) -> bool:
        """Restore the sections and replay the journal; False if nothing was loaded."""
        files = journal_files(self.path)
        self.journal_seq = (files[-1][0] + 1) if files else 1
        try:
            doc = self._read()
            if doc is None:
                if not files:
                    log.info("no usage snapshot at %s; starting from zero", self.path)
                    return False
                raise ShapeError(files[0][1].name, "journal without the snapshot it follows")
            sections, seq = doc
            events = read_journals([(n, f) for n, f in files if n >= seq])
        except (ShapeError, OSError) as exc:
            self._set_aside(files, exc)
            return False
        for name, section in self._sections.items():
            section.restore(sections[name])
        for event in events:
            self._replay(event)
        self.journal_seq = max(self.journal_seq, seq)
        log.info("usage snapshot %s restored, and %d journal events after it", self.path,
                 len(events))
        return True

    def _read(self) -> tuple[dict[str, Any], int] | None:
        """The validated sections and the journal number that follows them."""
        try:
            raw = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None  # nothing to restore; writing the first snapshot says what is wrong
        name = self.path.name
        try:
            doc = mapping(orjson.loads(raw), name)
        except orjson.JSONDecodeError as exc:
            raise ShapeError(name, f"not JSON ({exc.msg} at {exc.pos})") from None
        if doc.get("version") != SNAPSHOT_VERSION:
            raise ShapeError(f"{name}.version", f"expected {SNAPSHOT_VERSION}, got "
                                                f"{str(doc.get('version'))[:40]}")
        raw_sections = mapping(doc.get("sections"), f"{name}.sections")
        sections = {}
        for section, spec in self._sections.items():
            if section not in raw_sections:
                raise ShapeError(f"{name}.sections", f"section '{section}' is missing")
            sections[section] = spec.validate(raw_sections[section], f"sections.{section}")
        seq = doc.get("journal_seq", 0)  # absent: written before the journal existed
        return sections, count(seq, f"{name}.journal_seq")

    def _set_aside(self, files: list[tuple[int, Path]], exc: Exception) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        moved: list[str] = []
        for path in [self.path, *(f for _, f in files)]:
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            try:
                path.rename(aside)
                moved.append(aside.name)
            except FileNotFoundError:
                continue
            except OSError as err:
                log.error("cannot move %s aside: %s", path, err)
        log.error("usage snapshot %s is invalid: %s. Applied none of it and STARTED FROM "
                  "ZERO: spend, budgets, daily counts and selection counters restart at 0. "
                  "Moved aside for inspection: %s", self.path, exc, ", ".join(moved) or "none")

    def render(self) -> bytes:
        """Every section, serialised now. Call on the event loop thread: the dumps read
        live state; the bytes can then be written from another thread with :meth:`write`."""
        doc = {
            "version": SNAPSHOT_VERSION,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "journal_seq": self.journal_seq,
            "sections": {name: s.dump() for name, s in self._sections.items()},
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    def save(self) -> None:
        """Write every section: temp file, fsync, rename. Never leaves a half-written file."""
        self.write(self.render())

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
