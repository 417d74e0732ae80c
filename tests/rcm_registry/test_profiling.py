"""StageProfiler: stages timed in order and grouped; nothing recorded when disabled; the JSON as printed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from rcm_registry.profiling import StageProfiler


def test_stages_are_timed_in_order_and_grouped() -> None:
    prof = StageProfiler("cpu")
    with prof.stage("text encoding (prompt)", "text encoding"):
        time.sleep(0.02)
    for i in range(3):
        with prof.stage(f"call {i}", "transformer"):
            time.sleep(0.01)
    with prof.stage("vae decode"):
        pass
    assert [s.name for s in prof.stages] == ["text encoding (prompt)", "call 0", "call 1", "call 2", "vae decode"]
    assert prof.stages[0].seconds >= 0.02 and all(s.peak_bytes is None for s in prof.stages)
    totals = prof.totals()
    assert list(totals) == ["text encoding", "transformer", "vae decode"]
    assert totals["transformer"].name == "transformer (3 calls)"
    assert totals["transformer"].seconds == pytest.approx(sum(s.seconds for s in prof.stages[1:4]))
    assert prof.total_seconds == pytest.approx(sum(s.seconds for s in prof.stages))
    table = prof.table()
    assert "| transformer (3 calls) |" in table and "| call 2 |" in table and "n/a" in table
    assert "| call 2 |" not in prof.table(per_stage=False)


def test_a_disabled_profiler_records_nothing_and_passes_errors_through() -> None:
    prof = StageProfiler("cpu", enabled=False)
    with prof.stage("x"):
        pass
    assert prof.stages == [] and prof.totals() == {}
    with pytest.raises(ValueError, match="boom"), StageProfiler("cpu").stage("y"):
        raise ValueError("boom")


def test_json_holds_the_stages_totals_and_extra(tmp_path: Path) -> None:
    prof = StageProfiler("cpu")
    with prof.stage("a"):
        pass
    prof.write_json(tmp_path / "p.json", prompt="fox")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["prompt"] == "fox" and data["device"] == "cpu"
    assert data["stages"][0]["name"] == "a" and data["totals"]["a"]["seconds"] == data["stages"][0]["seconds"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_is_per_stage() -> None:
    prof = StageProfiler("cuda")
    with prof.stage("big"):
        x = torch.empty(256 * 1024**2, dtype=torch.uint8, device="cuda")
    del x
    with prof.stage("small"):
        torch.empty(1024, device="cuda")
    big, small = prof.stages
    assert big.peak_bytes is not None and big.peak_bytes >= 256 * 1024**2
    assert small.peak_bytes is not None and small.peak_bytes < big.peak_bytes
