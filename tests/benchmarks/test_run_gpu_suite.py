"""benchmarks/run_gpu_suite.py --smoke runs every section but the attention one on the CPU with a tiny Wan, so
the GPU command cannot rot, and records the rows the GPU run will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STEP_ROWS = [
    "forward (one network call)",
    "teacher forward with CFG (two calls)",
    "sCM JVP pass (tangents on x_t and t)",
    "student forward + backward (activation checkpointing)",
    "critic step (1-step rollout, fake forward + backward, AdamW)",
    "sCM student step (CFG target + JVP + forward/backward)",
]
CHECKPOINTING_ROWS = ["passes", "none", "selective", "block", "auto", "none, fused tangent pass"]
FUSED_ROWS = [
    "forward + backward",
    "JVP pass (no graph)",
    "fused: dual forward with graph + backward",
    "separate: forward + backward, then JVP pass",
    "ratio",
]


@pytest.mark.slow
def test_the_smoke_run_records_every_section_and_row(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/run_gpu_suite.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # A section that raises is reported as "failed:" and the run goes on, so the exit status alone says little.
    assert "failed:" not in proc.stdout, proc.stdout[-3000:]
    data = json.loads(out.read_text())
    assert list(data) == ["header", "steps", "checkpointing", "sampling", "fused"]
    for mode in ("eager", "fused"):
        assert list(data["steps"][mode]) == STEP_ROWS
        assert list(data["fused"][mode]) == FUSED_ROWS
    ckpt = data["checkpointing"]
    assert list(ckpt) == CHECKPOINTING_ROWS
    assert list(ckpt["passes"]) == ["forward", "cfg", "jvp"]
    for row in CHECKPOINTING_ROWS[1:]:
        assert list(ckpt[row]) == ["fwd_bwd_ms", "peak_gib", "decision", "step_ms"]
    # auto decides on the first training forward; on the CPU there is no device memory to budget.
    assert ckpt["auto"]["decision"]["mode"] == "none"
    assert "| none, `tangent_pass: fused` (forward + JVP + backward in the first two columns) |" in proc.stdout
    assert list(data["sampling"]) == [
        "teacher, Euler 3 steps, CFG", "student, 1 step", "student, 2 steps", "student, 4 steps",
    ]  # fmt: skip
    assert list(data["fused"])[2:] == ["err_tangent", "err_grad", "err_kernels", "peak_gib"]
