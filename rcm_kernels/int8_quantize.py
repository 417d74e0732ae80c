"""Per-block INT8 quantisation of attention's Q and K, fused into one pass: the input side of INT8 attention.

For each block of ``block`` rows of one (batch, head) of a (B, H, N, D) tensor x, optionally less a vector
m per (batch, head) (K's smoothing: its mean over the sequence), in fp32:

    y = x − m,   amax = max |y|,   scale = amax/127 (1 for an all-zero block),
    q = round_half_even(y / scale) clamped to [−127, 127] → int8

written as contiguous (B, H, N', BLOCK_D) int8, N' = N rounded up to whole blocks and BLOCK_D the head dim
padded (the rows and channels added are zero, as is their part of the amax), with one fp32 scale per block.

:func:`quantize_blocks_reference` computes it in torch (a padded fp32 copy, then half a dozen elementwise and
reduction kernels: about 2 ms for Q and K at Wan2.1-1.3B's 480p shape on an H200, a fifth of the attention);
:func:`quantize_blocks` reads each element once and writes one byte, in one launch (0.19 ms for both
there). Their results are bit-identical: the same fp32 subtraction, the scale computed as the reference's
device computes it (a CUDA tensor divided by a Python number is multiplied by the number's fp32 reciprocal, a
CPU tensor divided truly), a correctly rounded division and torch.round's ties to even. The mean is computed
by torch in both (:func:`sequence_mean`, one read of K), so that it is one value whichever path quantises.

Finite inputs only (a NaN block's scale and bytes are not defined alike). Inference only, no autograd. CUDA
tensors, or CPU tensors in Triton's interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from rcm_kernels.triton_common import device_context, load_head_block, require_kernel_device

#: Largest INT8 magnitude (symmetric range: −128 is not used, so negation never overflows).
INT8_MAX = 127.0
#: 1.5·2²³: adding and subtracting it rounds an fp32 of magnitude below 2²² to an integer, ties to even, with
#: the hardware's (and numpy's) round-to-nearest-even addition; Triton's interpreter has no rint.
_ROUNDING_SHIFT = 12582912.0


def sequence_mean(x: Tensor) -> Tensor:
    """x's mean over the sequence (dim 2) per (batch, head), in fp32, keeping the dim: K's smoothing vector."""
    return x.mean(dim=2, keepdim=True, dtype=torch.float32)


def _check(x: Tensor, block: int, block_d: int, subtract: Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a (B, H, N, D) tensor, got shape {tuple(x.shape)}")
    if block <= 0 or block_d < x.shape[-1]:
        raise ValueError(f"block ({block}) must be positive and block_d ({block_d}) at least D ({x.shape[-1]})")
    if subtract is not None and subtract.shape != (*x.shape[:2], 1, x.shape[3]):
        raise ValueError(f"subtract must have shape {(*x.shape[:2], 1, x.shape[3])}, got {tuple(subtract.shape)}")


def quantize_blocks_reference(
    x: Tensor, block: int, block_d: int, subtract: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(B, H, N, D) → INT8 (B, H, N', block_d) and fp32 scales (B, H, N'/block), in torch (see the module)."""
    _check(x, block, block_d, subtract)
    b, h, n, d = x.shape
    blocks = triton.cdiv(n, block)
    y = x.float() if subtract is None else x.float() - subtract
    # The kernel reads the result as contiguous (B, H, N', block_d) memory. F.pad with nothing to pad (N a
    # multiple of the block, D = block_d) keeps its input's strides, and the networks' inputs are (B, H, S, D)
    # views of (B, S, H, D) memory: without .contiguous() the kernel would read other tokens' rows.
    padded = F.pad(y, (0, block_d - d, 0, blocks * block - n)).contiguous()
    padded = padded.view(b, h, blocks, block, block_d)
    amax = padded.abs().amax(dim=(-2, -1))
    scales = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    quantized = torch.round(padded / scales[..., None, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return quantized.view(b, h, blocks * block, block_d), scales


@triton.jit
def _quantize_blocks_kernel(
    X, M, Q8, S,
    n, n_heads, n_pad, stride_xb, stride_xh, stride_xn, stride_xd,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, SUBTRACT: tl.constexpr,
    RECIPROCAL_SCALE: tl.constexpr, INT8_MAX: tl.constexpr, ROUNDING_SHIFT: tl.constexpr,
):  # fmt: skip
    # One program per (block of rows, batch·head): the whole block stays in registers between amax and store.
    bh, rows, cols, mask, y = load_head_block(
        X, n, n_heads, stride_xb, stride_xh, stride_xn, stride_xd, HEAD_DIM, BLOCK, BLOCK_D
    )
    if SUBTRACT:
        m = tl.load(M + bh * HEAD_DIM + cols, mask=cols < HEAD_DIM, other=0.0)
        y = tl.where(mask, y - m[None, :], 0.0)  # padding stays zero, as the reference pads after subtracting
    amax = tl.max(tl.max(tl.abs(y), 1), 0)
    if RECIPROCAL_SCALE:
        scale = amax * (1.0 / INT8_MAX)
    else:
        scale = tl.math.div_rn(amax, INT8_MAX)
    scale = tl.where(amax > 0, scale, 1.0)
    r = tl.math.div_rn(y, scale)  # |r| ≤ 127: within the shift's exact range
    r = (r + ROUNDING_SHIFT) - ROUNDING_SHIFT
    r = tl.minimum(tl.maximum(r, -INT8_MAX), INT8_MAX)
    # The output is whole blocks wide and long: no mask.
    tl.store(Q8 + (bh * n_pad + rows[:, None]) * BLOCK_D + cols[None, :], r.to(tl.int8))
    tl.store(S + bh * (n_pad // BLOCK) + tl.program_id(0), scale)


def quantize_blocks(x: Tensor, block: int, block_d: int, subtract: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`quantize_blocks_reference` in one Triton launch: bit-identical INT8 blocks and scales.

    ``x`` may have any strides (the networks hand attention (B, H, S, D) views of (B, S, H, D) memory);
    ``subtract`` is an fp32 (B, H, 1, D) vector taken from every row first (:func:`sequence_mean` for K).
    """
    _check(x, block, block_d, subtract)
    require_kernel_device(x, "INT8 quantisation", ", or use quantize_blocks_reference")
    b, h, n, d = x.shape
    n_pad = triton.cdiv(n, block) * block
    q8 = torch.empty(b, h, n_pad, block_d, dtype=torch.int8, device=x.device)
    scales = torch.empty(b, h, n_pad // block, dtype=torch.float32, device=x.device)
    if b * h * n_pad == 0:
        return q8, scales
    m = None if subtract is None else subtract.to(torch.float32).contiguous()
    # Without a vector to subtract, M is never read (SUBTRACT is a constexpr): any tensor serves as its pointer.
    with device_context(x):
        _quantize_blocks_kernel[(n_pad // block, b * h)](
            x, scales if m is None else m, q8, scales,
            n, h, n_pad, *x.stride(),
            HEAD_DIM=d, BLOCK=block, BLOCK_D=block_d, SUBTRACT=m is not None,
            RECIPROCAL_SCALE=x.device.type == "cuda", INT8_MAX=INT8_MAX, ROUNDING_SHIFT=_ROUNDING_SHIFT,
            num_warps=8 if block * block_d >= 128 * 128 else 4,
        )  # fmt: skip
    return q8, scales
