"""``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, the fastest primal-only path.

PyTorch has no forward-mode AD rule for the fused CUDA SDPA kernels (flash, memory-efficient, cuDNN),
and its math fallback needs O(N²) memory, so dual inputs are refused up front with an error that says
which backend to use instead, rather than failing deep inside the network or silently using O(N²).
"""

from __future__ import annotations

import attrs
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

import rcm_registry as rr


def has_tangent(*tensors: Tensor) -> bool:
    """True if any of the tensors is a forward-mode AD dual tensor with a tangent."""
    return any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)


class DualTensorError(rr.UserError, RuntimeError):
    """An attention backend without forward-mode AD support received dual tensors."""


@attrs.define
class SdpaAttentionConfig:
    pass


class SdpaAttention:
    """torch scaled_dot_product_attention (no forward-mode AD: use triton_jvp or math for JVPs)."""

    def __init__(self, config: SdpaAttentionConfig) -> None:
        self.config = config

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        if has_tangent(q, k, v):
            raise DualTensorError(
                "attention backend 'sdpa' does not support forward-mode AD (dual tensors), which the JVP "
                "of sCM/rCM needs: use the 'triton_jvp' backend (fused FlashAttention-2 JVP kernel) or "
                "'math' (reference, O(N²) memory) for this network, e.g. `attention: {use: triton_jvp}`"
            )
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def __repr__(self) -> str:
        return "SdpaAttention()"


COMPONENT = rr.Component(kind="attention", name="sdpa", factory=SdpaAttention, config=SdpaAttentionConfig)
