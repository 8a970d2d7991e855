"""Hot reload: watch the config file, load and validate it off the request path, swap.

The watcher follows the file's *directory*, not the file: editors that save by writing a
temp file and renaming it over the original replace the inode a file watch would follow,
and Kubernetes updates a mounted ConfigMap by swapping a ``..data`` symlink next to it.
Events are batched until the directory has been quiet for ``_QUIET_MS`` (so a truncate
followed by a rewrite is one reload), the file is read and validated in a worker thread,
and only a complete, valid config is swapped in with :meth:`RouterState.swap_config`;
requests in flight keep the config they started with. A file that is invalid, or valid
but missing something the current config has (what a file cut off mid-write looks
like), must hold still for ``_SETTLE_S`` before it is refused or swapped in.

Anything else is refused: every problem is logged at WARNING with its location,
``config_reloads_total{result="failure"}`` is counted, and the previous config keeps
serving until a later edit fixes the file. A file whose content is unchanged since the
last attempt (a touch, a chmod, a snapshot written in the same directory) is ignored.
SIGHUP (wired in :func:`llm_router.server.app.run_server`) always reloads.

Provider keys read from files (``key_file``) are part of the config: the directory of
each is watched the same way (a Kubernetes Secret mounted as a volume is updated by the
same ``..data`` swap as a ConfigMap), and the content compared against the last attempt
covers those files too, so a rotated key file reloads the config exactly as an edit
does, and the next request carries the new key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web
from watchfiles import Change, awatch

from ..config import Config, ConfigError, parse_config, without_source_line
from ..gateway.router_state import RouterState

__all__ = ["RELOADER", "ConfigReloader", "ReloadOutcome", "config_watcher"]

log = logging.getLogger("llm_router.reload")

_QUIET_MS: Final = 50  # a batch of changes ends after this much silence …
_MAX_BATCH_MS: Final = 1000  # … or after this long, whichever comes first
_SETTLE_S: Final = 0.5  # an invalid or shrinking file must hold still this long
_CATCH_UP_S: Final = 0.5  # after starting a watch, compare the file with what was loaded
_RESTART_WATCH_S: Final = 5.0  # the watcher failed (directory gone?): try again after this


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """The last reload that did something, for the status page (``GET /admin/status``)."""

    at: float  # Unix time
    accepted: bool
    reason: str  # what asked for it: "file changed", "SIGHUP", ...
    problems: tuple[str, ...] = ()  # why it was refused (each with its location)


class ConfigReloader:
    """Loads the config file into a :class:`RouterState`; one reload at a time."""

    def __init__(self, state: RouterState, path: str) -> None:
        self.state = state
        self.path = Path(path).absolute()
        self._source = str(Path(path))  # as the start-up load named it, for logs
        self._lock = asyncio.Lock()
        self._digest: bytes | None = None
        self._files: tuple[str, ...] = ()  # key files the last attempt read, absolute
        self._rewatch: asyncio.Event | None = None  # set: the watched directories changed
        self._requested: set[asyncio.Task[bool | None]] = set()
        self.last: ReloadOutcome | None = None
        self.loaded_at = state.started  # when the serving config was read (start-up, reload)
        # The warnings of the serving config, which were logged when it was loaded (the
        # start-up's by serve itself): a reload logs only those not among them, so an edit
        # elsewhere in the file does not repeat every standing warning.
        self._warned = frozenset(state.config.warnings)

    async def prime(self) -> None:
        """Remember the file's current content, so an event that changes nothing is ignored."""
        self._digest, _, _, self._files = await asyncio.to_thread(
            _load, self.path, self._source, None, ())

    def request(self, reason: str) -> None:
        """Reload soon, unconditionally (for a signal handler, which cannot await)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason, force=True))
        self._requested.add(task)
        task.add_done_callback(self._requested.discard)

    async def reload(self, reason: str, *, force: bool = False) -> bool | None:
        """Load, validate and swap the file's config.

        Returns True when the new config is serving, False when it was refused (the old
        one keeps serving), None when there was nothing to do: the content had not
        changed, or it is still being written (and ``force`` is false in both cases).
        """
        async with self._lock:
            digest, cfg, problems, files = await asyncio.to_thread(
                _load, self.path, self._source, None if force else self._digest, self._files)
            if cfg is None and not problems:
                return None
            if not force and (problems or _shrinks(self.state.config, cfg)):
                # A file caught in the middle of an in-place write is either invalid or
                # valid-but-shorter (a cut-off groups list). Look again after a pause: if
                # it is still changing, the event of its next write reloads it then.
                await asyncio.sleep(_SETTLE_S)
                again, _, _, _ = await asyncio.to_thread(_load, self.path, self._source,
                                                         digest, files)
                if again != digest:
                    log.info("config file %s is still being written; waiting for it",
                             self._source)
                    return None
            if digest is not None:
                self._digest = digest
            if files != self._files:
                self._files = files
                if self._rewatch is not None:
                    self._rewatch.set()  # follow the key files' directories as they are now
            m = self.state.metrics
            if cfg is None:
                m.config_reloads.labels("failure").inc()
                log.warning("config reload (%s) refused: %s has %d problem(s); still serving "
                            "the previous config", reason, self._source, len(problems))
                for problem in problems:
                    log.warning("config reload refused: %s", problem)
                self.last = ReloadOutcome(time.time(), False, reason, tuple(problems))
                self.state.webhooks.reload_refused(reason, tuple(problems), self._source)
                return False
            old = self.state.config
            self.state.swap_config(cfg)
            m.config_reloads.labels("success").inc()
            self.loaded_at = time.time()
            self.last = ReloadOutcome(self.loaded_at, True, reason)
            log.info("config reloaded (%s) from %s: %s%s", reason, self._source, cfg.summary(),
                     _changes(old, cfg))
            for warning in dict.fromkeys(cfg.warnings):
                if warning not in self._warned:
                    log.warning("config %s: %s", self._source, warning)
            self._warned = frozenset(cfg.warnings)
            if (old.host, old.port) != (cfg.host, cfg.port):
                log.warning("config reload: listen address changed from %s:%d to %s:%d in the "
                            "file; the listener cannot move without a restart (a --host/--port "
                            "flag overrides the file anyway)", old.host, old.port, cfg.host,
                            cfg.port)
            return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change to the file or to a key file until ``stop`` is set."""
        while not stop.is_set():
            watched = {self.path, *(Path(f) for f in self._files)}
            dirs = sorted({p.parent for p in watched})
            present = [d for d in dirs if d.is_dir()]
            relevant = functools.partial(_relevant, frozenset(p.name for p in watched))
            # Ends this watch when stop is set, or when the directories to follow change
            # (a reload named other key files) or a missing one appears.
            rewatch = self._rewatch = asyncio.Event()
            relay = asyncio.create_task(_set_when(stop, rewatch, dirs if present != dirs
                                                  else []))
            # An edit made while no watch was in place (between the start-up load and
            # here, or after a watcher failure) raises no event: look once more when the
            # watch below is surely established. Unchanged content costs one read.
            catch_up = asyncio.create_task(self._look_again(_CATCH_UP_S))
            try:
                async for _ in awatch(*present, watch_filter=relevant,
                                      debounce=_MAX_BATCH_MS, step=_QUIET_MS,
                                      stop_event=rewatch, recursive=False):
                    await self.reload("file changed")
            except Exception:  # the directory vanished, inotify ran out of watches, …
                log.exception("config watcher on %s failed; restarting it in %.0f s (SIGHUP "
                              "still reloads)", ", ".join(map(str, present)), _RESTART_WATCH_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RESTART_WATCH_S)
            finally:
                catch_up.cancel()
                relay.cancel()

    async def _look_again(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.reload("changed while not watched")

    async def close(self) -> None:
        """Wait for reloads a signal asked for."""
        if self._requested:
            await asyncio.gather(*self._requested, return_exceptions=True)


def _relevant(names: frozenset[str], change: Change, changed: str) -> bool:
    """Whether a change in a watched directory may change the config."""
    del change  # added, modified and deleted all mean "look again"
    base = Path(changed).name
    return base in names or base.startswith("..")  # ..data: a mounted volume's swap


async def _set_when(stop: asyncio.Event, rewatch: asyncio.Event, missing: list[Path]) -> None:
    """Set ``rewatch`` once ``stop`` is set or, when directories are ``missing``, once
    they all exist (a key file's directory mounted late)."""
    if missing:
        while not all(d.is_dir() for d in missing):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RESTART_WATCH_S)
            if stop.is_set():
                break
    else:
        await stop.wait()
    rewatch.set()


_Loaded = tuple[bytes | None, Config | None, list[str], tuple[str, ...]]


def _digest(data: bytes, files: tuple[str, ...]) -> bytes:
    """What the config is made of: the file, and the content of each key file it read
    (or that it could not be read)."""
    h = hashlib.sha256(data)
    for file in files:
        h.update(b"\0" + file.encode(errors="surrogateescape") + b"\0")
        try:
            h.update(Path(file).read_bytes())
        except OSError as exc:
            h.update(f"\0unreadable {exc.errno}".encode())
    return h.digest()


def _load(path: Path, source: str, last: bytes | None, files: tuple[str, ...]) -> _Loaded:
    """(digest, config, problems, key files), blocking: the digest of the file and of the
    key ``files`` the previous attempt read, and unless it equals ``last``, the validated
    config or every problem that stops it, with the key files this attempt read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, None, [f"{source}: cannot read: {exc.strerror or exc}"], files
    digest = _digest(data, files)
    if digest == last:
        return digest, None, [], files
    cfg, problems, read = _parse(path, source, data, files)
    if read != files:
        digest = _digest(data, read)  # the files this config is made of
    return digest, cfg, problems, read


def _parse(path: Path, source: str, data: bytes, files: tuple[str, ...]
           ) -> tuple[Config | None, list[str], tuple[str, ...]]:
    if not data.strip():
        # Truncate-then-rewrite editors expose an empty file for a moment; an empty config
        # is valid YAML but would drop every route, so a reload never swaps one in.
        return None, [f"{source}: the file is empty (caught mid-save?)"], files
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, [f"{source}: not UTF-8 text"], files
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    read: list[str] = []
    try:
        cfg = parse_config(text, fmt=fmt, source=source, secret_files=read)
    except ConfigError as exc:
        return None, [without_source_line(problem) for problem in exc.problems], _absolute(read)
    if not cfg.providers:
        return None, ["providers: none left; a reload does not swap in a config that "
                      "cannot serve anything (restart to do that on purpose)"], _absolute(read)
    return cfg, [], _absolute(read)


def _absolute(files: list[str]) -> tuple[str, ...]:
    """Key file paths as the process opens them (relative to the working directory),
    made absolute for the watch; sorted, so the same files compare equal."""
    return tuple(sorted({str(Path(f).absolute()) for f in files}))


def _shrinks(old: Config, new: Config | None) -> bool:
    """Whether ``new`` drops a group, group member, provider, key, user or price of ``old``:
    what a file cut short looks like."""
    if new is None:
        return False
    if not (old.groups.keys() <= new.groups.keys() and old.providers.keys() <= new.providers.keys()
            and old.pricing.keys() <= new.pricing.keys()
            and {u.name for u in old.users} <= {u.name for u in new.users}):
        return True
    if old.usage.snapshot_path and not new.usage.snapshot_path:
        return True
    return (any(len(g.members) > len(new.groups[n].members) for n, g in old.groups.items())
            or any(len(p.keys) > len(new.providers[n].keys) for n, p in old.providers.items()))


def _changes(old: Config, new: Config) -> str:
    """``; groups +a -b; providers +c`` for the reload log line (empty if none)."""
    parts = []
    old_users, new_users = {u.name for u in old.users}, {u.name for u in new.users}
    for what, before, after in (("groups", set(old.groups), set(new.groups)),
                                ("providers", set(old.providers), set(new.providers)),
                                ("users", old_users, new_users)):
        added, removed = sorted(after - before), sorted(before - after)
        if added or removed:
            parts.append(what + "".join(f" +{n}" for n in added)
                         + "".join(f" -{n}" for n in removed))
    return "".join(f"; {p}" for p in parts)


RELOADER: Final = web.AppKey("reloader", ConfigReloader)


async def config_watcher(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: watch the config file while the app runs (if it came from a file)."""
    reloader = app.get(RELOADER)
    if reloader is None:
        yield
        return
    # watchfiles logs every batch at INFO; our own reload line says what matters.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    await reloader.prime()
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.watch(stop), name="config-watcher")
    yield
    stop.set()  # the watch thread notices within _QUIET_MS
    await task
    await reloader.close()
