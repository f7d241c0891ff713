"""Log output of the ``edge-agent`` command (the library itself only uses ``getLogger``).

``format = "json"`` writes one JSON object per line (``ts``, ``level``, ``logger``, ``msg``,
plus ``exc`` for tracebacks), which journald stores as is and log shippers parse without
regular expressions. ``text`` is for a terminal. Messages are cut at 8 KiB so a huge payload
in a log argument cannot flood the journal.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

__all__ = ["JsonFormatter", "configure_logging"]

_MAX_MESSAGE = 8192
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON."""
        message = record.getMessage()
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "...[truncated]"
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "...[truncated]"


def configure_logging(
    level: Literal["debug", "info", "warning", "error"], fmt: Literal["text", "json"]
) -> None:
    """Send the root logger to stderr in ``fmt`` at ``level`` (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.ERROR))
