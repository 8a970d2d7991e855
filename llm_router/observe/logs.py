"""Process logging: stderr in the chosen format, the access log on stdout.

``--log-format json`` makes *every* line machine-readable, not only the access log: one
object per line on stderr with ``time``, ``level``, ``logger``, ``message`` and, when a
call passed ``extra={...}``, those ``fields``. A traceback goes in ``exception`` as one
string, so a line is always one record. ``text`` keeps the familiar human layout.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson

__all__ = ["JsonFormatter", "setup_stderr_logging"]

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord(
    "", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = {k: v for k, v in record.__dict__.items()
                  if k not in _STANDARD and not k.startswith("_")}
        if fields:
            line["fields"] = fields
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        # default=str: a field logging cannot serialise is shown, never a crash.
        return orjson.dumps(line, default=str).decode()


def setup_stderr_logging(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Route the root logger to stderr (or ``stream``) as ``json`` or ``text``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
