"""Configured secrets kept out of what the router relays and logs.

An upstream may echo what it was sent: a 401 body quoting the ``Authorization`` header
passed a provider key to the client verbatim. So every upstream body the router relays
(error bodies, answers, stream events) and every log line go through a
:class:`Redactor` holding the config's secrets: provider keys (with AWS secret access
keys and session tokens), Azure Entra client secrets, the shared ``api_key``, webhook
signing secrets and passwords in webhook URLs, and values of provider headers whose name
says key, token, secret or auth. Each is
replaced by ``[redacted]``. Only secrets of 8 characters or more are looked for, so a
short placeholder cannot garble answers. The cost is one substring search per secret
per relayed body or event batch (C speed, a few hundred ns for a handful of keys).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote, urlsplit

from ..config import Config, url_passwords

__all__ = ["REDACTED", "RedactingFilter", "Redactor"]

REDACTED: Final = "[redacted]"
_MIN_SECRET: Final = 8
_SECRET_HEADER_WORDS: Final = ("key", "token", "secret", "auth")


def _config_secrets(cfg: Config) -> set[str]:
    found: set[str] = set()
    if cfg.api_key:
        found.add(cfg.api_key)
    for provider in cfg.providers.values():
        found.update(key.secret for key in provider.keys)
        found.update(key.session_token for key in provider.keys if key.session_token)
        if provider.entra is not None:
            found.add(provider.entra.client_secret)
        found.update(value.removeprefix("Bearer ").strip()
                     for name, value in provider.headers.items()
                     if any(word in name.lower() for word in _SECRET_HEADER_WORDS))
    for hook in cfg.webhooks:
        found.add(hook.secret)
        with contextlib.suppress(ValueError):
            password = urlsplit(hook.url).password
            if password:
                found.update((password, unquote(password)))
    if cfg.state.redis_url:  # its password: redis://user:PASSWORD@host or ?password=
        found.update(url_passwords(cfg.state.redis_url))
    return {s for s in found if len(s) >= _MIN_SECRET}


class Redactor:
    """The secrets of a config (and of the one before it, whose keys requests still in
    flight may be using), and how to remove them."""

    __slots__ = ("_bytes", "_text")

    _text: tuple[str, ...]
    _bytes: tuple[bytes, ...]

    def __init__(self, cfg: Config, previous: Redactor | None = None) -> None:
        secrets = _config_secrets(cfg)
        if previous is not None:
            secrets.update(previous._text)
        # Longest first: a secret that contains another is replaced whole.
        self._text = tuple(sorted(secrets, key=len, reverse=True))
        self._bytes = tuple(s.encode() for s in self._text)

    def bytes(self, data: bytes) -> bytes:
        """``data`` without any secret (the same object when there is none)."""
        for secret in self._bytes:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data

    def text(self, text: str) -> str:
        for secret in self._text:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


class RedactingFilter(logging.Filter):
    """A handler filter that removes the current config's secrets from every record,
    its traceback included. ``current`` returns the redactor in force."""

    def __init__(self, current: Callable[[], Redactor]) -> None:
        super().__init__()
        self._current = current

    def clean(self, message: str) -> str:
        """What :meth:`filter` makes of a record whose message is ``message`` (no
        arguments, no traceback), for a handler that writes lines without records."""
        return self._current().text(message)

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self._current()
        if not redactor._text:
            return True
        message = record.getMessage()
        clean = redactor.text(message)
        if clean is not message:
            record.msg, record.args = clean, None
        if record.exc_info:
            # Formatted once here, so every formatter shows the cleaned text.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redactor.text(record.exc_text)
        return True
