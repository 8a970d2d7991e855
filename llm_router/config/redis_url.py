"""Redis URLs as the config gives them: shape checks, and a form safe to show.

``state.redis_url`` may carry a password (``redis://user:pass@host:6379/0``, or
``?password=`` as redis-py also reads it); it must never reach a log line, an error, a
metric label or ``check`` output, so everything that shows the URL shows
:func:`redact_url` of it, and the log redaction masks :func:`url_passwords`.
"""

from __future__ import annotations

import contextlib
import re
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["redact_url", "redis_url_problem", "url_passwords"]


# redis-py also takes the password as a query parameter: redis://host:6379/0?password=...
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password masked: the user-info part's (``user:pass@``) and a
    ``password`` query parameter's."""
    if "=" in url:
        url = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    auth, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = auth.partition(":")
    if not user and not colon:
        return f"{scheme}://***@{host}"
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def url_passwords(url: str) -> set[str]:
    """The passwords ``url`` carries (user-info and ``password`` query parameters), as
    written and decoded: what the log redaction must know."""
    found: set[str] = set()
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found.update((parts.password, unquote(parts.password)))
        for name, value in parse_qsl(parts.query):
            if name.lower() == "password" and value:
                found.add(value)
        # and as written, percent-encoded or not
        found.update(m.group(0).partition("=")[2] for m in _QUERY_PASSWORD.finditer(url))
    return {p for p in found if p}


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable Redis URL (never quoting its password), or None."""
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return (f"'{shown}' is not a Redis URL: expected redis://[user:pass@]host:port/db, "
                "rediss:// (TLS) or unix:///path")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return f"'{shown}': the port must be a number from 1 to 65535"
    if parts.scheme == "unix":
        return None if parts.path else f"'{shown}': a unix:// URL needs a socket path"
    if not parts.hostname:
        return f"'{shown}': no host (expected redis://host:port/db)"
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"'{shown}': the database after the '/' must be a number, got '{db}'"
    try:
        import redis  # noqa: F401  (only whether the optional extra is installed)
    except ImportError:
        return ("needs the redis client library: pip install '.[redis]' in the llm-router "
                "checkout (or remove state.redis_url to keep state in this process)")
    return None
