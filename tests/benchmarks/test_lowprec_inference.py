"""benchmarks/lowprec_inference.py --smoke runs on the CPU and reports every measurement with sane errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def test_the_smoke_run_reports_every_option(smoke: Callable[..., Any]) -> None:
    _, results = smoke("lowprec_inference.py")
    attention = results["attention"]
    assert attention["sdpa_ms"] > 0 and attention["int8_ms"] > 0
    assert 0 < attention["rel_err_vs_sdpa"] <= 2.5e-2
    assert attention["int8_fp8pv_ms"] > 0
    assert attention["rel_err_vs_sdpa"] < attention["fp8pv_rel_err_vs_sdpa"] <= 5e-2
    assert set(results["linear"]) == {"ffn up", "ffn down"}
    for entry in results["linear"].values():
        assert 0 < entry["rel_err_vs_bf16"] <= 5e-2
        assert entry["fp8_torch_quant_ms"] is None, "the previous CUDA path is timed on CUDA only"
    mlp = results["mlp"]
    assert mlp["bf16_ms"] > 0 and mlp["fp8_fused_gelu_ms"] > 0
    assert 0 < mlp["rel_err_fp8_fused_gelu_vs_bf16"] <= 5e-2
    # The activation quantisation alone: its torch side on the CPU, the fused kernel on CUDA only.
    assert set(results["quantize"]) == {"K=64", "K=96"}
    for entry in results["quantize"].values():
        assert entry["torch_ms"] > 0 and entry["kernel_ms"] is None
    network = results["network"]
    names = ("int8_sage", "int8_sage_fp8pv", "fp8_linear", "int8_sage+fp8_linear", "int8_sage_fp8pv+fp8_linear")
    assert set(network) == {"sdpa", *names}
    assert network["sdpa"]["rel_err_vs_sdpa"] == 0
    for name in names:
        assert 0 < network[name]["rel_err_vs_sdpa"] <= 5e-2, name
