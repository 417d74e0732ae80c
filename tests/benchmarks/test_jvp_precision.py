"""benchmarks/jvp_precision.py on the CPU at the CPU size: a two-iteration moving-digits teacher, the two ways
that run off CUDA (fp32 eager forward-mode AD and fp32 semi-continuous). The float64 reference is the same
network, so fp32 AD lands within float32 rounding of it, and the finite difference is far coarser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rcm_registry.testing import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fp32_forward_mode_ad_matches_float64_and_the_finite_difference_does_not(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    result = run_cli(
        "run", str(ROOT / "recipes/moving_digits/teacher_tiny.yaml"), "--out", str(teacher),
        "--set", "run.iterations=2", "--set", "run.checkpoint_every=2", "--no-progress",
    )  # fmt: skip
    assert result.code == 0, result.err
    out = tmp_path / "a.json"
    ways = ["fp32, eager forward-mode AD", "fp32, semi-continuous (h = 1e-4)"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/jvp_precision.py"), "--recipe",
         str(ROOT / "recipes/moving_digits/scm_tiny.yaml"), "--teacher", str(teacher), "--device", "cpu",
         "--batch", "4", "--ways", *ways, "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    for rows in results["weights"].values():
        exact, fd = (rows[w]["tangent_relative_error"]["max"] for w in ways)
        assert 0 < exact < 1e-5
        assert fd > 100 * exact
        assert rows[ways[0]]["target_error"]["max"] < 1e-4
