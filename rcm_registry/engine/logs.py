"""Structured logs: readable lines on the console (the run's metrics go to its loggers, see engine/tracking.py)."""

from __future__ import annotations

import sys
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
