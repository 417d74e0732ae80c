"""Structured logs: readable lines on the console, one JSON object per line in the run's metrics file."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import structlog


def configure_console(verbose: bool = False) -> None:
    """Console logging for the CLI: timestamps, level and key=value pairs on stderr."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(10 if verbose else 20),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "rcm") -> Any:
    return structlog.get_logger(name)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsFile:
    """Appends JSON lines (``{"iteration": ..., "phase": ..., "loss/scm": ...}``) to ``metrics.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        record.setdefault("time", time.time())
        self._f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
