"""A dependency-free progress line: iteration, losses, it/s and ETA.

On a terminal it redraws one line; otherwise (logs, CI) it prints a line every ``every`` updates.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int, start: int = 0, *, every: int = 10, stream: TextIO | None = None) -> None:
        self.total = total
        self.start = start
        self.every = every
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last_len = 0

    def rate(self, done: int) -> float:
        elapsed = time.perf_counter() - self.t0
        return (done - self.start) / elapsed if elapsed > 0 else 0.0

    def update(self, done: int, values: Mapping[str, float]) -> None:
        """``done`` iterations completed; ``values`` shown as ``name=value``."""
        if not self.tty and done % self.every and done != self.total:
            return
        rate = self.rate(done)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        line = f"[{bar}] {done}/{self.total} {shown} {rate:.2f} it/s eta {_duration(eta)}"
        if self.tty:
            pad = max(0, self._last_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()
            self._last_len = 0
