"""Attention's V in FP8 e4m3, one scale per (batch, head, channel), laid out for the FP8 P·V dot.

For a (B, H, N, D) tensor v, in fp32:

    amax_c = max over the sequence of |v[..., c]|,   scale_c = amax_c / 448 (1 for an all-zero channel),
    q = v / scale_c clamped to ±448 → e4m3, rounded to nearest even,

written transposed, (B, H, BLOCK_D, N'): the sequence contiguous (the dot's reduced dimension, as FP8 tensor
cores take their second operand), N' = N rounded up to whole key blocks and BLOCK_D the head dim padded (the
keys and channels added are zero, their scales 1), with the scales as (B, H, BLOCK_D) fp32.

:func:`value_scales` takes the amax in one torch reduction and makes the scales; both quantisations below
divide by those same fp32 scales. :func:`quantize_v_fp8_reference` does the rest in torch (an fp32 copy, half
a dozen elementwise kernels, a transposing copy); :func:`quantize_v_fp8` reads each element once and writes
one byte, in one launch. Their bytes are identical: a correctly rounded division, the same clamp and a
round-to-nearest-even cast (in Triton's interpreter, whose cast truncates, the value is rounded to e4m3 in
fp32 first: :func:`rcm_kernels.triton_common.round_to_e4m3`). Finite inputs only; inference only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from rcm_kernels.fp8_quantize import FP8, FP8_MAX
from rcm_kernels.triton_common import (
    device_context,
    interpreter_active,
    load_head_block,
    require_kernel_device,
    round_to_e4m3,
)


def _check(v: Tensor, block_n: int, block_d: int) -> None:
    if v.dim() != 4:
        raise ValueError(f"expected a (B, H, N, D) tensor, got shape {tuple(v.shape)}")
    if block_n <= 0 or block_d < v.shape[-1]:
        raise ValueError(f"block_n ({block_n}) must be positive and block_d ({block_d}) at least D ({v.shape[-1]})")


def value_scales(v: Tensor, block_d: int) -> Tensor:
    """(B, H, block_d) fp32: each channel's amax over the sequence / 448, 1 for all-zero and padded channels."""
    amax = torch.linalg.vector_norm(v, ord=math.inf, dim=2, dtype=torch.float32)
    scales = torch.where(amax > 0, amax / FP8_MAX, 1.0)
    # Few launches: attention calls this once per layer and step, where the host's launching can set the pace.
    return scales if block_d == v.shape[-1] else F.pad(scales, (0, block_d - v.shape[-1]), value=1.0)


def quantize_v_fp8_reference(v: Tensor, block_n: int, block_d: int) -> tuple[Tensor, Tensor]:
    """(B, H, N, D) → e4m3 (B, H, block_d, N') and fp32 scales (B, H, block_d), in torch (see the module)."""
    _check(v, block_n, block_d)
    b, h, n, d = v.shape
    scales = value_scales(v, block_d)
    q = (v.float() / scales[:, :, None, :d]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    v8 = torch.zeros(b, h, block_d, triton.cdiv(n, block_n) * block_n, dtype=FP8, device=v.device)
    v8[:, :, :d, :n] = q.transpose(-2, -1)
    return v8, scales


@triton.jit
def _quantize_v_kernel(
    V, S, V8,
    n, n_heads, n_pad, stride_vb, stride_vh, stride_vn, stride_vd,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP8_MAX: tl.constexpr,
    ROUND: tl.constexpr,
):  # fmt: skip
    # One program per (block of keys, batch·head): a (BLOCK_N, BLOCK_D) tile in, its transpose out.
    bh, rows, cols, _, x = load_head_block(
        V, n, n_heads, stride_vb, stride_vh, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, BLOCK_D
    )
    scale = tl.load(S + bh * BLOCK_D + cols)
    q = tl.clamp(tl.math.div_rn(x, scale[None, :]), -FP8_MAX, FP8_MAX)
    if ROUND:
        q = round_to_e4m3(q)
    # Whole blocks of keys and BLOCK_D channels: the padding is written as the zeros it loaded, no mask.
    out = V8 + bh * BLOCK_D * n_pad + cols[None, :] * n_pad + rows[:, None]
    tl.store(out, q.to(tl.float8e4nv, fp_downcast_rounding="rtne"))


def quantize_v_fp8(v: Tensor, block_n: int, block_d: int) -> tuple[Tensor, Tensor]:
    """:func:`quantize_v_fp8_reference` with the quantisation and transpose in one Triton launch: identical
    bytes and scales. ``v`` may have any strides (the networks' (B, H, S, D) views of (B, S, H, D) memory)."""
    _check(v, block_n, block_d)
    require_kernel_device(v, "FP8 value quantisation", ", or use quantize_v_fp8_reference")
    b, h, n, d = v.shape
    n_pad = triton.cdiv(n, block_n) * block_n
    scales = value_scales(v, block_d)
    v8 = torch.empty(b, h, block_d, n_pad, dtype=FP8, device=v.device)
    if b * h * n_pad == 0:
        return v8, scales
    with device_context(v):
        _quantize_v_kernel[(n_pad // block_n, b * h)](
            v, scales, v8,
            n, h, n_pad, *v.stride(),
            HEAD_DIM=d, BLOCK_N=block_n, BLOCK_D=block_d, FP8_MAX=FP8_MAX, ROUND=interpreter_active(),
            num_warps=4,
        )  # fmt: skip
    return v8, scales
