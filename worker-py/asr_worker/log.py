"""Structured logs: one JSON object per line on stderr.

Fields given as `extra={...}` (session_id, segment_id, batch_size, ...) become
top-level keys. Never log audio or transcripts.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "info") -> logging.Logger:
    """Send every log record (ours and libraries') to stderr as JSON lines.

    Returns the `asr_worker` logger. Libraries log through the root logger;
    their handlers (FunASR installs a plain-text one) are replaced so that
    stderr stays one JSON object per line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    ours = logging.getLogger("asr_worker")
    ours.handlers.clear()
    ours.setLevel(level.upper())
    ours.propagate = True
    return ours


class SessionLogger(logging.LoggerAdapter):
    """Adds session_id (and any fixed fields) to every record."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return msg, kwargs
