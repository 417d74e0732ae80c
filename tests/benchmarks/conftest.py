"""The benchmark scripts' CPU smoke runs: each script runs as a program, as on the GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

SmokeRun = Callable[..., tuple[subprocess.CompletedProcess[str], Any]]


@pytest.fixture
def smoke(tmp_path: Path) -> SmokeRun:
    """``smoke(SCRIPT, *args)``: run ``benchmarks/SCRIPT --smoke --json OUT *args`` (one thread, in a scratch
    folder), assert that it exits 0, and return the process and OUT's JSON."""

    def run(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
        out = tmp_path / f"{Path(script).stem}.json"
        proc = subprocess.run(
            [sys.executable, str(BENCHMARKS / script), "--smoke", "--json", str(out), *args],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, json.loads(out.read_text())

    return run
