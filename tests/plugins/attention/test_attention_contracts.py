"""The attention plugin's backends pass the attention contract (triton_jvp in Triton's interpreter on a CPU)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rcm_registry.testing import AttentionContract


class TestMathAttention(AttentionContract):
    name = "math"


class TestSdpaAttention(AttentionContract):
    name = "sdpa"


class TestTritonJvpAttention(AttentionContract):
    """The fused kernel computes in float32 (fp32 accumulation), so it is held to float32 accuracy."""

    name = "triton_jvp"
    dtype = torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tolerance = 1e-5


class TestTritonJvpAttentionKernelPrimal(TestTritonJvpAttention):
    """Primal calls through the Triton forward and backward too."""

    config: ClassVar[dict[str, Any]] = {"primal": "kernel"}
