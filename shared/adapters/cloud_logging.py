"""Structured logs in the Cloud Logging JSON format (one JSON object per line)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

_FIELDS = (
    "job_id",
    "batch_id",
    "scene_id",
    "variant",
    "attempt",
    "duration_ms",
    "duration_s",
    "event",
    "state",
    "error",
    "object",
    "model",
    "cost_usd",
    "tokens",
    "until",
    "limit",
)


class CloudJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        for name in _FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_SETUP = threading.Lock()


def setup_logging(level: int = logging.INFO) -> None:
    """Install the JSON formatter once per instance, however many requests of a
    fresh instance call this at once (two handlers would log every line twice)."""
    root = logging.getLogger()
    with _SETUP:
        if any(isinstance(h.formatter, CloudJsonFormatter) for h in root.handlers):
            return
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(CloudJsonFormatter())
        root.addHandler(handler)
        root.setLevel(level)
