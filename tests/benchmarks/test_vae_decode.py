"""benchmarks/vae_decode.py --smoke decodes with every option on the CPU and reports sane distances."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def test_the_smoke_run_reports_every_decode_option(smoke: Callable[..., Any]) -> None:
    rows = smoke("vae_decode.py")[1]["16p"]["rows"]
    assert len(rows) == 5 and any("3-D convolutions as 2-D" in label for label in rows)
    first, *rest = rows.values()
    assert first["max_abs_vs_fp32"] == 0 and first["tflops"] > 0
    for row in rest:
        assert row["seconds"] > 0
        assert 0 < row["max_abs_vs_fp32"] < 0.05  # bf16 rounding of the same pixels, not another picture
    # The 2-D frame convolutions in bf16 give the bf16 decode's pixels (to bf16's summation-order rounding).
    for label, row in rows.items():
        if "as 2-D" in label:
            assert row["max_abs_vs_bf16_chunks"] < 0.02, label
