"""benchmarks/lowprec_inference.py --smoke runs on the CPU and reports every measurement with sane errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lowprec_inference.py"


def test_the_smoke_run_reports_every_option(tmp_path: Path) -> None:
    out = tmp_path / "lowprec.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    attention = results["attention"]
    assert attention["sdpa_ms"] > 0 and attention["int8_ms"] > 0
    assert 0 < attention["rel_err_vs_sdpa"] <= 2.5e-2
    assert set(results["linear"]) == {"ffn up", "ffn down"}
    for entry in results["linear"].values():
        assert 0 < entry["rel_err_vs_bf16"] <= 5e-2
        assert entry["fp8_torch_quant_ms"] is None, "the previous CUDA path is timed on CUDA only"
    # The activation quantisation alone: its torch side on the CPU, the fused kernel on CUDA only.
    assert set(results["quantize"]) == {"K=64", "K=96"}
    for entry in results["quantize"].values():
        assert entry["torch_ms"] > 0 and entry["kernel_ms"] is None
    network = results["network"]
    assert set(network) == {"sdpa", "int8_sage", "fp8_linear", "int8_sage+fp8_linear"}
    assert network["sdpa"]["rel_err_vs_sdpa"] == 0
    for name in ("int8_sage", "fp8_linear", "int8_sage+fp8_linear"):
        assert 0 < network[name]["rel_err_vs_sdpa"] <= 5e-2, name
