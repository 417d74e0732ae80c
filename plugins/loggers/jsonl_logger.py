"""``jsonl``: one JSON object per logged iteration in ``RUN/metrics.jsonl`` (the default logger).

A line is ``{"iteration": N, "phase": ..., "it_per_s": ..., "loss": ..., "loss/NAME": ..., ..., "time": UNIX}``;
non-finite floats are written as strings (``"nan"``), so every line is strict JSON. ``rcm run --resume`` trims
the lines past the checkpoint it resumes from before the file is opened again (appending).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import attrs

import rcm_registry as rr
from rcm_registry.engine.run_layout import METRICS_FILE


@attrs.define
class JsonlLoggerConfig:
    """``{use: jsonl}``"""


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogger:
    """Metrics as JSON lines in RUN/metrics.jsonl (the default logger)."""

    def __init__(self, config: JsonlLoggerConfig) -> None:
        self.config = config
        self._file: IO[str] | None = None

    def open(self, run_dir: Path, recipe: Mapping[str, Any], start: int) -> None:
        self._file = open(run_dir / METRICS_FILE, "a", encoding="utf-8")

    def log(self, iteration: int, record: Mapping[str, float | str]) -> None:
        assert self._file is not None, "open() first"
        line = {"iteration": iteration, **record}
        line.setdefault("time", time.time())
        self._file.write(json.dumps({k: _plain(v) for k, v in line.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


COMPONENT = rr.Component(kind="logger", name="jsonl", factory=JsonlLogger, config=JsonlLoggerConfig)
