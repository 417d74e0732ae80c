"""``math``: attention in plain torch ops, the reference backend.

Every op here has a forward-mode AD rule, so dual q/k/v give a dual output without any special
handling; this makes it the correctness reference for JVPs (run it in float64). It materialises the
full (Nq, Nk) score matrix, so it needs O(N²) memory: use it for tests and small shapes only.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

import rcm_registry as rr


@attrs.define
class MathAttentionConfig:
    #: Compute the softmax in float32 (more accurate for bf16/fp16 inputs); float64 inputs stay float64.
    upcast_softmax: bool = True


def math_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, upcast: bool = True) -> Tensor:
    """softmax(scale·q·kᵀ)·v for (B, H, S, D) tensors, through plain differentiable ops."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    compute = torch.float32 if upcast and q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    s = torch.matmul(q.to(compute), k.to(compute).transpose(-2, -1)) * scale
    p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v.to(compute)).to(q.dtype)


class MathAttention:
    """Reference attention in plain torch ops (forward-mode AD works; O(N²) memory)."""

    def __init__(self, config: MathAttentionConfig) -> None:
        self.config = config

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        return math_attention(q, k, v, scale=scale, upcast=self.config.upcast_softmax)

    def __repr__(self) -> str:
        return f"MathAttention(upcast_softmax={self.config.upcast_softmax})"


COMPONENT = rr.Component(
    kind="attention", name="math", factory=MathAttention, config=MathAttentionConfig, provides={"jvp"}
)
