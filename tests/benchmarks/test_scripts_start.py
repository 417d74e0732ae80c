"""Every benchmark script starts: it imports what it names and builds its command line (``--help``), so a
renamed function or module in the library cannot leave a script that fails only on the GPU machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: Scripts run as programs (modules starting with an underscore are imported by them).
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_there_are_scripts() -> None:
    assert "jvp_precision.py" in SCRIPTS and "moving_digits_table.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_script_starts(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
