"""benchmarks/generate_e2e.py --smoke runs end to end on the CPU (so the GPU command cannot rot) and records
what the GPU run will: each stage of the teacher and student generations and every speed option off and on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_smoke_run_records_every_stage_and_option(smoke: Callable[..., Any]) -> None:
    proc, data = smoke("generate_e2e.py")
    assert "speed options, off → on" in proc.stdout
    assert set(data["models"]) == {"wan2.1-1.3b", "cosmos-predict2-2b"}
    for model in data["models"].values():
        runs = model["runs"]
        assert list(runs) == ["teacher 3 steps CFG", "student 1 steps", "student 2 steps", "student 4 steps"]
        # CFG: two network calls per teacher step; the student: one per step.
        assert runs["teacher 3 steps CFG"]["totals"]["transformer"]["name"] == "transformer (6 calls)"
        student = [s["name"] for s in runs["student 4 steps"]["stages"]]
        assert student[:2] == ["text encoding (prompt)", "text encoding (negative prompt, cached)"]
        assert student[2:] == [f"transformer call {i} (step {i})" for i in range(1, 5)] + ["vae decode"]
        options = model["options"]
        assert set(options["vae decode"]) == {
            "fp32 frame by frame (diffusers)", "bf16 frame by frame", "bf16 in chunks of 4",
            "bf16 in chunks of 4, channels last", "bf16 in chunks of 4, channels last, cuDNN benchmark",
            "tiny decoder (taehv), bf16", "tiny decoder (taehv), bf16 in chunks of 4",
        }  # fmt: skip
        # A failing option is reported in its row, not raised: every row must have run.
        assert not [row for row in model["option rows"] if "failed" in row[-1]], model["option rows"]
        for lowprec in (
            "int8_sage attention", "FP8 linear", "int8_sage attention + FP8 linear",
            "int8_sage attention, FP8 P·V", "int8_sage attention, FP8 P·V + FP8 linear",
        ):  # fmt: skip
            assert options[lowprec]["totals"]["transformer"]["name"] == "transformer (4 calls)"
        for fastest in (
            "fastest exact set",
            "fastest set + int8_sage attention",
            "fastest set + int8_sage attention + FP8 linear",
            "fastest set + int8_sage attention, FP8 P·V + FP8 linear",
            "fastest set + tiny decoder",
        ):
            totals = options[fastest]["on"]["totals"]
            assert totals["transformer"]["name"] == "transformer (4 calls)"
            # The offload trades seconds for memory: not part of the fastest path.
            assert "text encoder offload" not in totals
        off = [s["name"] for s in options["negative cache"]["off"]["stages"]]
        on = [s["name"] for s in options["negative cache"]["on"]["stages"]]
        assert "text encoding (negative prompt)" in off and "text encoding (negative prompt, cached)" in on
        assert "text encoder offload" in options["offload text encoder"]["on"]["totals"]
        assert options["compile"]["on"]["totals"]["transformer"]["name"] == "transformer (4 calls)"
        # CUDA graphs need a GPU: on the CPU their row says so instead of a time.
        assert ["CUDA graphs", "transformer s", "", "n/a (CUDA only)"] in [list(r) for r in model["option rows"]]
    assert "vae decode 720p" in data["models"]["wan2.1-1.3b"]["options"]
