"""Per-row (per-token) quantisation to FP8 e4m3 in one pass: the activation side of an FP8 linear layer.

For each row x of an (M, K) tensor, in fp32:

    amax = max |x|,   scale = amax/448 (1 for an all-zero row),   q = clamp(x/scale, −448, 448) → e4m3

with a true division and the e4m3 cast rounding to nearest even (the clamp keeps it finite), which is what
``rcm_registry.engine.fp8_linear.quantize_rows`` computes with half a dozen torch kernels and fp32
intermediates: the results are bit-identical to it (e4m3 bytes and fp32 scales). Here each row is read once
and written once as e4m3 bytes (three bytes of traffic per bf16 element instead of about twenty), and the
rows are padded to a multiple of ``pad_rows_to`` in the same launch (zero bytes, scale 1), which is what
``torch._scaled_mm`` needs, so the product does not copy the FP8 tensor again to pad it.

One program per row. Rows of up to ``max_block`` values stay in registers as one block, a power of two wide;
longer rows are read twice in chunks of ``max_block``, first for the amax, then to scale and write (the second
read mostly hits L2). The default, 1024, chunks both of Wan's widths: on an H200 (benchmarks/RESULTS.md) rows
of 8960 took 0.31 ms in chunks against 0.74 ms held whole (a 16384-lane block, 45 % of it idle, at 16 warps),
and rows of 1536 0.081 ms either way.

NaN and infinities follow the reference too: a row holding a NaN gets the scale 1 (``NaN > 0`` is false) and
NaN where the NaN was, a row holding ±inf the scale inf; Triton's max and clamp are asked to propagate NaN
as torch's do.

Inference only, no autograd. CUDA tensors, or CPU tensors in Triton's interpreter. The interpreter's
fp32→e4m3 cast is not the hardware's (it rounds ties away from zero and does not saturate), so CPU tests
ask for the scaled fp32 values before the cast (``out_dtype=torch.float32``) and compare those.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rcm_kernels.triton_common import device_context, require_kernel_device

FP8 = torch.float8_e4m3fn
#: Largest finite e4m3 value.
FP8_MAX = float(torch.finfo(FP8).max)
#: Widest row kept in registers as one block; longer rows go in chunks of this many values.
MAX_BLOCK = 1024
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: What the kernel can write: e4m3 (the product's operand) or the fp32 values the cast rounds (for tests).
_OUT_DTYPES = (FP8, torch.float32)


@triton.jit
def _max_nan(a, b):
    # torch's amax and clamp propagate NaN; Triton's max keeps the other operand unless told otherwise.
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _scaled(x, scale, FP8_MAX: tl.constexpr):
    # A true (correctly rounded) division, as torch divides tensors; x/scale may compile to an approximate one.
    q = tl.math.div_rn(x, scale)
    return tl.clamp(q, -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _round_to(x, X_DTYPE: tl.constexpr):
    # fp32 → X_DTYPE → fp32, to nearest even. bf16 by its bits: Triton's interpreter truncates that cast,
    # and the bits give the hardware's rounding on every device (finite values; a NaN stays a NaN).
    if X_DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(X_DTYPE).to(tl.float32)


@triton.jit
def _gelu_tanh(x, X_DTYPE: tl.constexpr):
    # GELU's tanh form, 0.5·x·(1 + tanh u) = x·sigmoid(2u), in fp32 and rounded to the input's dtype as the
    # unfused layer stores it before it is quantised. With e = exp(−2|u|) ≤ 1 the sigmoid is 1/(1 + e) for
    # u ≥ 0 and e/(1 + e) below: no overflow, and no cancellation in the negative tail, where 1 + tanh u
    # computed as a sum loses every digit.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    e = tl.exp(-2.0 * tl.abs(u))
    g = x * tl.where(u >= 0, 1.0, e) / (1.0 + e)
    return _round_to(g, X_DTYPE)


@triton.jit
def _load_row(ptrs, mask, GELU: tl.constexpr, X_DTYPE: tl.constexpr):
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        x = _gelu_tanh(x, X_DTYPE)  # GELU(0) = 0: masked lanes stay zero
    return x


@triton.jit
def _quantize_rows_kernel(
    X, Q, S,
    M, K, stride_xm,
    FP8_MAX: tl.constexpr, BLOCK: tl.constexpr, CHUNKED: tl.constexpr, RECIPROCAL_SCALE: tl.constexpr,
    GELU: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    x_row = X + row * stride_xm
    q_row = Q + row * K
    # Padding rows (row ≥ M) read nothing: all zeros, so amax 0, scale 1 and zero bytes, with no branch.
    k_read = tl.where(row < M, K, 0)
    if CHUNKED:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + offs
            x = _load_row(x_row + cols, cols < k_read, GELU, X.dtype.element_ty)
            acc = _max_nan(acc, tl.abs(x))
        amax = tl.reduce(acc, 0, _max_nan)
    else:
        x = _load_row(x_row + offs, offs < k_read, GELU, X.dtype.element_ty)
        amax = tl.reduce(tl.abs(x), 0, _max_nan)
    # torch divides a CUDA tensor by a Python number as a product with the number's fp32 reciprocal, a CPU
    # tensor by a true division; the reference's scale is amax / 448 computed the way of its device.
    if RECIPROCAL_SCALE:
        scale = amax * (1.0 / FP8_MAX)
    else:
        scale = tl.math.div_rn(amax, FP8_MAX)
    scale = tl.where(amax > 0, scale, 1.0)
    tl.store(S + row, scale)
    if CHUNKED:
        for start in range(0, K, BLOCK):
            cols = start + offs
            x = _load_row(x_row + cols, cols < k_read, GELU, X.dtype.element_ty)
            tl.store(q_row + cols, _scaled(x, scale, FP8_MAX).to(Q.dtype.element_ty), mask=cols < K)
    else:
        tl.store(q_row + offs, _scaled(x, scale, FP8_MAX).to(Q.dtype.element_ty), mask=offs < K)


def launch_config(k: int, max_block: int = MAX_BLOCK) -> dict[str, int | bool]:
    """BLOCK, CHUNKED and num_warps for rows of ``k`` values: eight values a thread in one block (one 16-byte
    load of bf16), at most 16 warps; rows wider than ``max_block`` (a power of two) go in chunks of it."""
    if max_block < 1 or max_block & (max_block - 1):
        raise ValueError(f"max_block must be a power of two, got {max_block}")
    block = triton.next_power_of_2(k)
    chunked = block > max_block
    block = min(block, max_block)
    return {"BLOCK": block, "CHUNKED": chunked, "num_warps": max(1, min(16, block // 256))}


def quantize_rows_fp8(
    x: Tensor,
    pad_rows_to: int = 16,
    *,
    max_block: int = MAX_BLOCK,
    out_dtype: torch.dtype = FP8,
    gelu: bool = False,
) -> tuple[Tensor, Tensor]:
    """(M, K) → e4m3 (M_pad, K) and fp32 scales (M_pad, 1), M_pad = M rounded up to ``pad_rows_to``.

    Row i < M is x[i]/scale[i] rounded to e4m3 with scale[i] = amax/448 (1 for an all-zero row), bit-identical
    to ``quantize_rows`` of rcm_registry.engine.fp8_linear on the same device; padding rows are zero with scale
    1. x is bf16, fp16 or fp32; rows whose values are not contiguous are copied first. ``max_block``: the
    widest row handled as one block (longer ones in chunks). ``out_dtype=torch.float32`` writes the clamped
    fp32 values instead of their e4m3 rounding (tests in Triton's interpreter, whose e4m3 cast is not exact).
    ``gelu``: quantise GELU(x) (its tanh form, rounded to x's dtype) instead of x, so that a GELU MLP's
    hidden activation is read once, by this kernel, between the two FP8 products: ``quantize_rows`` of the
    GELU in float64 rounded to x's dtype, but for the rare value that the last fp32 bit moves across a
    rounding boundary (torch's own fp32 GELU loses its negative tail to cancellation; this one does not).
    """
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D (rows, features) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be torch.float8_e4m3fn or torch.float32, got {out_dtype}")
    if pad_rows_to < 1:
        raise ValueError(f"pad_rows_to must be at least 1, got {pad_rows_to}")
    require_kernel_device(x, "FP8 quantisation")
    m, k = x.shape
    if k == 0:
        raise ValueError("cannot quantise rows of zero features")
    if x.stride(1) != 1:
        x = x.contiguous()
    m_pad = triton.cdiv(m, pad_rows_to) * pad_rows_to
    q = torch.empty((m_pad, k), dtype=out_dtype, device=x.device)
    scale = torch.empty((m_pad, 1), dtype=torch.float32, device=x.device)
    if m_pad == 0:
        return q, scale
    with device_context(x):
        _quantize_rows_kernel[(m_pad,)](
            x, q, scale,
            m, k, x.stride(0),
            FP8_MAX=FP8_MAX, RECIPROCAL_SCALE=x.is_cuda, GELU=gelu, **launch_config(k, max_block),
        )  # fmt: skip
    return q, scale
