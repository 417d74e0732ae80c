"""Layers whose numerics the diffusion transformers share.

Half-precision networks keep their statistics (layer norms, RMS norms) and their time path in float32;
float32 and float64 networks compute in their own dtype, so that float64 runs can serve as references.
Everything is plain differentiable torch ops, so forward-mode AD (dual tensors, ``torch.func.jvp``) works.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, the dtype itself for float32/float64."""
    return torch.promote_types(dtype, torch.float32)


_generic_linear_jvp = False


def _tangent(t: Tensor | None) -> Tensor | None:
    return None if t is None else forward_ad.unpack_dual(t).tangent


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` whose forward-mode derivative is one matmul when only the input carries a tangent.

    PyTorch's rule for ``addmm``/``mm`` is ``tx·Wᵀ + x·tWᵀ``, and a weight without tangent enters it as a
    zero tensor that ``mm`` materialises: every linear layer of a JVP pass then runs two full matmuls for
    its tangent (and adds zeros) where ``tx·Wᵀ`` alone is the answer. The weights of a network under the
    sCM JVP never carry tangents, so this is where the pass spends most of its non-attention time. The
    result is the same to the bit; dual tensors of ``torch.func.jvp`` (functorch levels) and tangents on
    the weights take PyTorch's rule.
    """
    tangent = _tangent(x)
    if tangent is None or _generic_linear_jvp or _tangent(weight) is not None or _tangent(bias) is not None:
        return F.linear(x, weight, bias)
    primal = forward_ad.unpack_dual(x).primal
    return forward_ad.make_dual(F.linear(primal, weight, bias), F.linear(tangent, weight))


@contextlib.contextmanager
def generic_linear_jvp() -> Iterator[None]:
    """Inside, :func:`linear` leaves dual tensors to PyTorch's rule (for benchmarks that compare both)."""
    global _generic_linear_jvp
    previous, _generic_linear_jvp = _generic_linear_jvp, True
    try:
        yield
    finally:
        _generic_linear_jvp = previous


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) with the one-matmul tangent of :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def linear_in(x: Tensor, layer: nn.Linear, dtype: torch.dtype) -> Tensor:
    """``layer(x)`` computed in ``dtype`` whatever the parameters are stored in (for the float32 time path)."""
    bias = layer.bias.to(dtype) if layer.bias is not None else None
    return linear(x.to(dtype), layer.weight.to(dtype), bias)


class UpcastLayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in at least float32; bf16 statistics over thousands of channels are too coarse."""

    def forward(self, x: Tensor) -> Tensor:
        cd = compute_dtype(x.dtype)
        weight = self.weight.to(cd) if self.weight is not None else None
        bias = self.bias.to(cd) if self.bias is not None else None
        return F.layer_norm(x.to(cd), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned scale, statistics in at least float32.

    Applied to (B, S, H·D) it normalises across all heads (Wan's q/k norm); to (B, S, H, D), per head
    (Cosmos-Predict2's).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / rms(x) · weight`` over the last dimension in at least float32, rounded to x's dtype."""
    cd = compute_dtype(x.dtype)
    y = x.to(cd)
    y = y * torch.rsqrt(y.square().mean(dim=-1, keepdim=True) + eps)
    return (y * weight.to(cd)).to(x.dtype)


def sinusoidal_embedding(timestep: Tensor, dim: int, dtype: torch.dtype, *, max_period: float = 10000.0) -> Tensor:
    """(N,) timesteps → (N, dim) features ``[cos(t·f_i), sin(t·f_i)]`` with ``f_i = max_period^(−i/(dim/2))``.

    The frequency ladder is rounded to float32 exactly as the reference implementations (and diffusers)
    build it, so that float64 runs reproduce theirs to rounding; the angles and cos/sin are then taken in
    ``dtype`` (float32 at least: timesteps reach 1000, where bf16 angles are meaningless).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    angle = timestep.to(dtype)[:, None] * torch.exp(exponent).to(dtype)[None, :]
    return torch.cat((angle.cos(), angle.sin()), dim=1)


def heads_first(t: Tensor) -> Tensor:
    """(B, S, H, D) → a (B, H, S, D) strided view, the layout attention backends take."""
    return t.transpose(1, 2)


def merge_heads(o: Tensor) -> Tensor:
    """(B, H, S, D) attention output → (B, S, H·D)."""
    return o.transpose(1, 2).flatten(2)
