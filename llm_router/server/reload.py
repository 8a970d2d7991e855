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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web
from watchfiles import Change, awatch

from ..config import Config, ConfigError, parse_config
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
        self._requested: set[asyncio.Task[bool | None]] = set()
        self.last: ReloadOutcome | None = None
        self.loaded_at = state.started  # when the serving config was read (start-up, reload)
        # The warnings of the serving config, which were logged when it was loaded (the
        # start-up's by serve itself): a reload logs only those not among them, so an edit
        # elsewhere in the file does not repeat every standing warning.
        self._warned = frozenset(state.config.warnings)

    async def prime(self) -> None:
        """Remember the file's current content, so an event that changes nothing is ignored."""
        self._digest, _, _ = await asyncio.to_thread(_load, self.path, self._source, None)

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
            digest, cfg, problems = await asyncio.to_thread(
                _load, self.path, self._source, None if force else self._digest)
            if cfg is None and not problems:
                return None
            if not force and (problems or _shrinks(self.state.config, cfg)):
                # A file caught in the middle of an in-place write is either invalid or
                # valid-but-shorter (a cut-off groups list). Look again after a pause: if
                # it is still changing, the event of its next write reloads it then.
                await asyncio.sleep(_SETTLE_S)
                again, _, _ = await asyncio.to_thread(_load, self.path, self._source, digest)
                if again != digest:
                    log.info("config file %s is still being written; waiting for it",
                             self._source)
                    return None
            if digest is not None:
                self._digest = digest
            m = self.state.metrics
            if cfg is None:
                m.config_reloads.labels("failure").inc()
                log.warning("config reload (%s) refused: %s has %d problem(s); still serving "
                            "the previous config", reason, self._source, len(problems))
                for problem in problems:
                    log.warning("config reload refused: %s", problem)
                self.last = ReloadOutcome(time.time(), False, reason, tuple(problems))
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
        """Reload on every change to the file until ``stop`` is set."""
        name = self.path.name

        def relevant(change: Change, changed: str) -> bool:
            del change  # added, modified and deleted all mean "look again"
            base = Path(changed).name
            return base == name or base.startswith("..")  # ..data: a ConfigMap swap

        while not stop.is_set():
            # An edit made while no watch was in place (between the start-up load and
            # here, or after a watcher failure) raises no event: look once more when the
            # watch below is surely established. Unchanged content costs one read.
            catch_up = asyncio.create_task(self._look_again(_CATCH_UP_S))
            try:
                async for _ in awatch(self.path.parent, watch_filter=relevant,
                                      debounce=_MAX_BATCH_MS, step=_QUIET_MS, stop_event=stop,
                                      recursive=False):
                    await self.reload("file changed")
            except Exception:  # the directory vanished, inotify ran out of watches, …
                log.exception("config watcher on %s failed; restarting it in %.0f s (SIGHUP "
                              "still reloads)", self.path.parent, _RESTART_WATCH_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RESTART_WATCH_S)
            finally:
                catch_up.cancel()

    async def _look_again(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.reload("changed while not watched")

    async def close(self) -> None:
        """Wait for reloads a signal asked for."""
        if self._requested:
            await asyncio.gather(*self._requested, return_exceptions=True)


def _load(path: Path, source: str, last: bytes | None
          ) -> tuple[bytes | None, Config | None, list[str]]:
    """(digest, config, problems), blocking: the file's digest, and unless it equals
    ``last``, the validated config or every problem that stops it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, None, [f"{source}: cannot read: {exc.strerror or exc}"]
    digest = hashlib.sha256(data).digest()
    if digest == last:
        return digest, None, []
    if not data.strip():
        # Truncate-then-rewrite editors expose an empty file for a moment; an empty config
        # is valid YAML but would drop every route, so a reload never swaps one in.
        return digest, None, [f"{source}: the file is empty (caught mid-save?)"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return digest, None, [f"{source}: not UTF-8 text"]
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        cfg = parse_config(text, fmt=fmt, source=source)
    except ConfigError as exc:
        return digest, None, exc.problems
    if not cfg.providers:
        return digest, None, ["providers: none left; a reload does not swap in a config "
                              "that cannot serve anything (restart to do that on purpose)"]
    return digest, cfg, []


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
