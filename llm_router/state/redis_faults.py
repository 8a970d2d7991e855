"""Why the Redis state backend is down, in words an operator can act on.

Every failure of a Redis call is one of three kinds, and each says how it ends:

============  =====================================================  ====================
kind          what happened                                          until
============  =====================================================  ====================
connection    unreachable, refused, timed out, loading, read-only    Redis answers again
auth          Redis refused the credentials (NOAUTH, WRONGPASS,      the password in
              NOPERM, invalid username-password pair)                ``state.redis_url``
                                                                     is fixed
data          a key under the prefix holds a value the router did    that key is deleted
              not write: the wrong type (WRONGTYPE, a script             (docs/scaling.md)
              error), or a counter that is not a number
============  =====================================================  ====================

:func:`classify` turns an exception into a :class:`Fault` (its reason never carries the
password); :func:`probe` checks the keys a data fault involved, so the store comes back
up only once they hold what the router keeps there, and a wrong-typed key keeps the
backend down (one transition) instead of flapping it at every reconnect;
:class:`FaultLog` logs a new reason at once and the same one at most once a minute.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
    ResponseError,
)

from .redis_keys import COUNTER_KINDS, expected_type

__all__ = ["FAULT_LOG_EVERY_S", "Fault", "FaultLog", "ForeignData", "classify", "counts",
           "probe"]

FAULT_LOG_EVERY_S: Final = 60.0  # the same reason, while it lasts, is logged this often
_PROBE_KEYS: Final = 64  # keys a probe checks: those of the failed call, bounded
_SHOWN_VALUE: Final = 40  # characters of a foreign value quoted in a reason
_AUTH_REPLIES: Final = ("NOAUTH", "WRONGPASS", "NOPERM")
# Replies that mean a key holds what the scripts cannot work on (a Lua runtime error
# names the script, "user_script", e.g. comparing a non-number).
_DATA_REPLIES: Final = ("WRONGTYPE", "user_script", "Error running script")


class ForeignData(RedisError):
    """A value under the prefix that this router did not write; ``keys``: those involved."""

    def __init__(self, message: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class Fault:
    """One failure: its kind (connection | auth | data), the reason shown, the keys."""

    __slots__ = ("keys", "kind", "reason")

    def __init__(self, kind: str, reason: str, keys: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.reason = reason
        self.keys = keys


def _kind(exc: BaseException) -> str:
    if isinstance(exc, ForeignData):
        return "data"
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError
                  | NoPermissionError):
        return "auth"
    if isinstance(exc, ResponseError):
        text = str(exc)
        if text.startswith(_AUTH_REPLIES) or "username-password" in text:
            return "auth"
        if any(marker in text for marker in _DATA_REPLIES):
            return "data"
    return "connection"


def classify(exc: BaseException, prefix: str, password: str | None,
             keys: tuple[str, ...] = ()) -> Fault:
    """The :class:`Fault` of ``exc``, its reason worded for the operator, the password
    masked wherever the error quoted it."""
    kind = _kind(exc)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if password:
        text = text.replace(password, "***")
    if kind == "auth":
        text = (f"Redis refused the credentials ({text}); set the password in "
                "state.redis_url (redis://:PASSWORD@host:6379/0) to the server's requirepass")
    elif kind == "data":
        text = (f"a key under prefix '{prefix}' holds a value this router did not write "
                f"({text}); delete it, or give this router its own state.prefix")
    if isinstance(exc, ForeignData):
        keys = exc.keys or keys
    return Fault(kind, text, tuple(dict.fromkeys(keys))[:_PROBE_KEYS])


def _shown(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return repr(text if len(text) <= _SHOWN_VALUE else text[:_SHOWN_VALUE] + "...")


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def counts(raw: Any, key: str, kind: type[int] | type[float] = int) -> dict[str, Any]:
    """A hash of counters read back (HGETALL), each field's value as ``kind``;
    :class:`ForeignData` naming the key and field if one is not a number."""
    if not isinstance(raw, dict):
        raise ForeignData(f"'{key}' did not read back as a hash", (key,))
    out: dict[str, Any] = {}
    for field, value in raw.items():
        name = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
        try:
            out[name] = kind(value)
        except (TypeError, ValueError):
            raise ForeignData(f"'{key}' field {_shown(name)} holds {_shown(value)}, "
                              "not a number", (key,)) from None
    return out


async def probe(redis: Redis, prefix: str, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` whose type or value is not what the router keeps there, as
    a sentence naming it; None when every one is fine (or absent)."""
    checked = [(key, found) for key in keys if (found := expected_type(prefix, key))]
    if not checked:
        return None
    pipe = redis.pipeline(transaction=False)
    for key, (kind, _) in checked:
        pipe.type(key)
        if kind in ("w", "day"):
            pipe.get(key)
        elif kind in COUNTER_KINDS:
            pipe.hvals(key)
        else:
            pipe.exists(key)  # keeps two results per key
    results = await pipe.execute(raise_on_error=False)
    for i, (key, (kind, wanted)) in enumerate(checked):
        held, value = results[2 * i], results[2 * i + 1]
        held = held.decode() if isinstance(held, bytes) else str(held)
        if held not in ("none", wanted):
            return (f"key '{key}' is a {held}; this router keeps a {wanted} there: "
                    f"delete it (redis-cli DEL '{key}')")
        if held == "none" or kind not in COUNTER_KINDS or isinstance(value, Exception):
            continue
        bad = [v for v in (value if isinstance(value, list) else [value]) if not _number(v)]
        if bad:
            return (f"key '{key}' holds {_shown(bad[0])} where this router counts a number: "
                    f"delete it (redis-cli DEL '{key}')")
    return None


class FaultLog:
    """Logs a fault's reason at once when it changes, else at most once every
    :data:`FAULT_LOG_EVERY_S`, with how many tries failed meanwhile."""

    __slots__ = ("_clock", "_last", "_log", "_quiet", "_when")

    def __init__(self, log: logging.Logger, clock: Any = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._last = ""
        self._when = float("-inf")
        self._quiet = 0

    def still(self, shown: str, reason: str, next_try_s: float) -> None:
        """A retry failed again with ``reason``."""
        now = self._clock()
        if reason == self._last and now - self._when < FAULT_LOG_EVERY_S:
            self._quiet += 1
            return
        tries = f" ({self._quiet + 1} tries since the last line)" if self._quiet else ""
        self._log.warning("state backend %s still down: %s; next try in %.1f s%s",
                          shown, reason, next_try_s, tries)
        self._last, self._when, self._quiet = reason, now, 0
