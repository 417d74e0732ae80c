"""Wall time and peak memory of the stages of a pipeline (``rcm generate --profile``).

A :class:`StageProfiler` times each ``with profiler.stage(name):`` block. On CUDA it synchronises the device
before and after the block (the host clock would otherwise measure kernel launches, not the work) and reads
``torch.cuda.max_memory_allocated`` after resetting the peak at the block's start, so each stage's peak is its
own. On the CPU the peak is not measured (``None``, printed ``n/a``). A disabled profiler does nothing at all:
no synchronisation, no records, so it leaves the pipeline exactly as it is without one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from rcm_registry.atomic import write_text_atomic

GIB = 1024**3


@attrs.frozen
class Stage:
    #: What ran, e.g. ``text encoding (prompt)``, ``transformer call 3``, ``vae decode``.
    name: str
    seconds: float
    #: Peak bytes allocated on the device during the stage; None where it is not measured (CPU).
    peak_bytes: int | None
    #: Which group the stage belongs to in the totals (e.g. ``transformer`` for every network call).
    group: str


class StageProfiler:
    """Times named stages on ``device``; ``enabled=False`` makes :meth:`stage` a no-op."""

    def __init__(self, device: torch.device | str, *, enabled: bool = True) -> None:
        self.device = torch.device(device)
        self.enabled = enabled
        self.stages: list[Stage] = []

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    @contextlib.contextmanager
    def stage(self, name: str, group: str | None = None) -> Iterator[None]:
        """Time the block as stage ``name`` (grouped under ``group`` in the totals; default: the name)."""
        if not self.enabled:
            yield
            return
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        if self._cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        peak = int(torch.cuda.max_memory_allocated(self.device)) if self._cuda else None
        self.stages.append(Stage(name=name, seconds=seconds, peak_bytes=peak, group=group or name))

    def totals(self) -> dict[str, Stage]:
        """Per group: the summed time, the largest peak, and the name ``GROUP (N stages)`` when N > 1."""
        groups: dict[str, list[Stage]] = {}
        for s in self.stages:
            groups.setdefault(s.group, []).append(s)
        out = {}
        for group, members in groups.items():
            peaks = [s.peak_bytes for s in members if s.peak_bytes is not None]
            out[group] = Stage(
                name=group if len(members) == 1 else f"{group} ({len(members)} calls)",
                seconds=sum(s.seconds for s in members),
                peak_bytes=max(peaks) if peaks else None,
                group=group,
            )
        return out

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def table(self, *, per_stage: bool = True) -> str:
        """A markdown table: every stage (when ``per_stage``), then the per-group totals and the sum."""
        lines = ["| stage | seconds | peak memory GiB |", "|---|---:|---:|"]
        if per_stage:
            lines += [_row(s) for s in self.stages]
            lines.append("| **totals** | | |")
        lines += [_row(s) for s in self.totals().values()]
        lines.append(f"| all stages | {self.total_seconds:.4f} | |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "stages": [attrs.asdict(s) for s in self.stages],
            "totals": {g: attrs.asdict(s) for g, s in self.totals().items()},
            "total_seconds": self.total_seconds,
        }

    def write_json(self, path: Path, **extra: Any) -> None:
        """The stages, totals and ``extra`` (e.g. what was generated) as JSON, written atomically."""
        write_text_atomic(path, json.dumps({**extra, **self.as_dict()}, indent=2) + "\n")


def _row(s: Stage) -> str:
    peak = "n/a" if s.peak_bytes is None else f"{s.peak_bytes / GIB:.2f}"
    return f"| {s.name} | {s.seconds:.4f} | {peak} |"
