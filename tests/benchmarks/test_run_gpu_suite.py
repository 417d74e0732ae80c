"""benchmarks/run_gpu_suite.py --smoke runs every section but the attention one on the CPU with a tiny Wan, so
the GPU command cannot rot, and records the rows the GPU run will."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

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
def test_the_smoke_run_records_every_section_and_row(smoke: Callable[..., Any]) -> None:
    proc, data = smoke("run_gpu_suite.py")
    # A section that raises is reported as "failed:" and the run goes on, so the exit status alone says little.
    assert "failed:" not in proc.stdout, proc.stdout[-3000:]
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
