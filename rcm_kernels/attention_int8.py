"""8-bit attention for inference, SageAttention-style: INT8 QKᵀ with per-block scales, fp32 softmax, 16-bit PV.

The quantisation (Zhang et al., "SageAttention", ICLR 2025, the per-block variant):

* K is smoothed: its mean over the sequence is subtracted, per (batch, head). softmax(q·(k − k̄)ᵀ) equals
  softmax(q·kᵀ) because q·k̄ is one constant per query row, but the smoothed keys have no common offset,
  which (Wan's keys carry a large one) would otherwise take most of the INT8 range.
* Q is cut into blocks of ``block_m`` rows and K into blocks of ``block_n`` rows; each block gets one fp32
  scale, amax/127, and is rounded to INT8 in [−127, 127]. The blocks are the kernel's tiles, so one program
  multiplies one Q block by one K block and dequantises the INT32 product with two scalars.
* Scores ``(q8·k8ᵀ)·s_q·s_k·scale`` go through FlashAttention's online softmax in fp32; P is rounded to V's
  dtype and multiplied by V (not quantised) with fp32 accumulation.
* ``pv="fp8"`` (SageAttention2's P·V, for GPUs with FP8 tensor cores): V is quantised to e4m3 with one scale
  per (batch, head, channel), amax over the sequence / 448, and stored transposed (the sequence contiguous,
  as the FP8 dot takes its second operand); each tile's P, in [0, 1] against the running row maximum, is
  scaled by 448 and rounded to e4m3, multiplied by V's tile in FP8 into a fresh fp32 tile, and added to the
  fp32 accumulator (two levels, so no partial sum is held in the tensor cores' narrower accumulator for long);
  the channel scales and 1/448 are applied once, with the softmax's normalisation.

:func:`quantize_qk` does the quantisation (rcm_kernels.int8_quantize: one fused pass over Q and two over K,
whose mean torch takes; the kernel reads its output), and :func:`int8_attention_reference` computes the same
quantised attention without Triton (and with the torch quantisation), for tests and for devices the kernel
does not run on. The integer products are exact in both (|q8·k8| ≤ 256·127² < 2²⁴, so
even float32 holds them), so the kernel and the reference differ only by softmax rounding and P's rounding.

Inference only: there is no backward and no JVP. Layout is (B, H, S, D) like SDPA, any strides for V; the
output is a (B, H, S, D) view of (B, S, H, D) memory like the other attention kernels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from rcm_kernels.fp8_quantize import FP8, FP8_MAX
from rcm_kernels.int8_quantize import quantize_blocks, quantize_blocks_reference, sequence_mean
from rcm_kernels.triton_common import (
    check_attention_shapes,
    device_context,
    dot,
    dot_flags,
    empty_bhsd,
    head_block,
    head_rows,
    interpreter_active,
    load_rows,
    require_kernel_device,
    round_to_e4m3,
    softmax_scale,
)
from rcm_kernels.value_quantize import quantize_v_fp8, quantize_v_fp8_reference

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: How P·V is multiplied: in V's dtype ("input") or both operands in FP8 e4m3 ("fp8").
PV_MODES = ("input", "fp8")
#: The compute capability whose tensor cores multiply FP8 (Ada, Hopper and later).
FP8_CAPABILITY = (8, 9)
#: Head dims the kernel takes; the INT8 dot needs at least 32 along D, so smaller heads are padded to 32.
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


class Int8LaunchConfig(NamedTuple):
    """Tile sizes (also the quantisation blocks) and launch parameters."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_config(head_dim: int, device: torch.device, pv: str = "input") -> Int8LaunchConfig:
    """Tiles for CUDA, the fastest of benchmarks/int8_attention_sweep.py's grid on an H200 at Wan2.1's shape:
    with P·V in the inputs' precision, SageAttention's quantisation blocks (128 query rows, 64 key rows; 4
    warps, 3 stages); with P·V in FP8, 64 query rows and 128 key rows (the FP8 dot's wider key tile; 1.35x
    faster than the first's tiles there). Smaller query tiles for heads over 128. The interpreter (CPU) gets
    the same blocks, so that quality measured there is the kernel's."""
    if head_dim > 128:
        return Int8LaunchConfig(64, 64, 4, 2)
    block_m, block_n = (64, 128) if pv == "fp8" else (128, 64)
    return Int8LaunchConfig(block_m, block_n, 4, 3 if device.type == "cuda" else 1)


def head_dim_block(head_dim: int) -> int:
    """BLOCK_D of the kernel: the head dim padded to a power of two, at least 32 (the smallest INT8 dot)."""
    return max(32, triton.next_power_of_2(head_dim))


def check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise a ValueError/TypeError naming the problem if these tensors cannot be attended in 8 bits."""
    check_attention_shapes(q, k, v, MIN_HEAD_DIM, MAX_HEAD_DIM)
    if q.dtype not in _SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    devices = {t.device for t in (q, k, v)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    if k.shape[2] == 0:
        raise ValueError("attention over zero keys is undefined")


def check_pv(pv: str, device: torch.device) -> None:
    """Raise a ValueError naming the problem if P·V cannot be multiplied as ``pv`` says on ``device``."""
    if pv not in PV_MODES:
        raise ValueError(f"pv must be one of {', '.join(PV_MODES)}, got {pv!r}")
    if pv == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < FP8_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(
            f"pv='fp8' needs FP8 tensor cores (compute capability {FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]}+); "
            f"{torch.cuda.get_device_name(device)} has {major}.{minor}: use pv='input'"
        )


class QuantizedQK(NamedTuple):
    q8: Tensor
    q_scale: Tensor
    k8: Tensor
    k_scale: Tensor


def quantize_qk(
    q: Tensor, k: Tensor, block_m: int, block_n: int, *, smooth_k: bool = True, fused: bool = True
) -> QuantizedQK:
    """Q in blocks of ``block_m`` rows and K, less its sequence mean when ``smooth_k``, in blocks of ``block_n``.

    ``fused``: one Triton launch per tensor (:func:`rcm_kernels.int8_quantize.quantize_blocks`); otherwise the
    bit-identical torch reference, which runs on any device.
    """
    quantize = quantize_blocks if fused else quantize_blocks_reference
    block_d = head_dim_block(q.shape[-1])
    q8, q_scale = quantize(q, block_m, block_d)
    k8, k_scale = quantize(k, block_n, block_d, sequence_mean(k) if smooth_k else None)
    return QuantizedQK(q8, q_scale, k8, k_scale)


def int8_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    *,
    block_m: int,
    block_n: int,
    smooth_k: bool = True,
    pv: str = "input",
    compute: torch.dtype = torch.float64,
) -> Tensor:
    """The kernel's quantised attention in plain torch: exact softmax of the dequantised scores, in ``compute``.

    With ``pv="fp8"``, V as the kernel quantises it and P rounded to e4m3 after scaling by 448, P taken
    against the row's final maximum (the kernel's tiles take it against the running one, so their roundings
    differ in detail). Materialises the (Nq, Nk) scores (O(N²) memory). The result has v's dtype.
    """
    check_inputs(q, k, v)
    check_pv(pv, q.device)
    n_q, n_k, d = q.shape[2], k.shape[2], q.shape[3]
    device = q.device.type
    # Autocast would run the products below in its dtype (bf16 on the CPU), where the integer products are
    # no longer exact: the reference computes in ``compute`` whatever the caller's autocast, as the kernel does.
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            return int8_attention_reference(
                q, k, v, scale, block_m=block_m, block_n=block_n, smooth_k=smooth_k, pv=pv, compute=compute
            )
    qq = quantize_qk(q, k, block_m, block_n, smooth_k=smooth_k, fused=False)
    # The integer products first (exact in fp32 and fp64), then the two scales and the softmax scale.
    ints = qq.q8[:, :, :n_q].to(compute) @ qq.k8[:, :, :n_k].to(compute).transpose(-2, -1)
    row_scale = qq.q_scale.to(compute).repeat_interleave(block_m, dim=-1)[..., :n_q]
    col_scale = qq.k_scale.to(compute).repeat_interleave(block_n, dim=-1)[..., :n_k]
    scores = ints * (row_scale[..., :, None] * col_scale[..., None, :]) * softmax_scale(scale, d)
    if pv == "input":
        return (torch.softmax(scores, dim=-1) @ v.to(compute)).to(v.dtype)
    p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    p8 = (p * FP8_MAX).to(FP8).to(compute)
    v8, v_scale = quantize_v_fp8_reference(v, block_n, head_dim_block(d))
    pv_sum = p8 @ v8[:, :, :d, :n_k].to(compute).transpose(-2, -1)
    out = pv_sum * (v_scale[:, :, None, :d].to(compute) / FP8_MAX) / p.sum(dim=-1, keepdim=True)
    return out.to(v.dtype)


@triton.jit
def _int8_tile(
    acc,
    m_i,
    l_i,
    q,
    qk_scale,
    K8,
    KS,
    V,
    stride_vn,
    stride_vd,
    start_n,
    n_k,
    offs_n,
    offs_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_N: tl.constexpr,
    MASK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    PV_FP8: tl.constexpr,
    FP8_MAX: tl.constexpr,
    ROUND_P: tl.constexpr,
):
    # One key block: the INT8 tile is loaded transposed (D, BLOCK_N) so the dot needs no register transpose.
    rows = start_n + offs_n
    kt = tl.load(K8 + rows[None, :] * BLOCK_D + offs_d[:, None])
    k_scale = tl.load(KS + start_n // BLOCK_N)
    # Scores in log2 units: exp2 is the native instruction.
    s = tl.dot(q, kt, out_dtype=tl.int32).to(tl.float32) * (qk_scale * k_scale)
    if MASK_N:
        s = tl.where(rows[None, :] < n_k, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if PV_FP8:
        # V8 is (BLOCK_D, N') per head, the sequence contiguous and zero-padded: no masks. Its tile, transposed
        # in place, is the FP8 dot's second operand with the reduced dim (keys) contiguous, as FP8 needs.
        vt = tl.load(V + offs_d[:, None] * stride_vd + rows[None, :] * stride_vn)
        p8 = p * FP8_MAX
        if ROUND_P:
            p8 = round_to_e4m3(p8)
        pv = tl.dot(p8.to(tl.float8e4nv, fp_downcast_rounding="rtne"), tl.trans(vt), out_dtype=tl.float32)
        acc = acc * alpha[:, None] + pv
    else:
        v = load_rows(
            V + rows[:, None] * stride_vn + offs_d[None, :] * stride_vd, rows, n_k, offs_d, HEAD_DIM, MASK_N, MASK_D
        )
        acc = dot(p.to(v.dtype), v, acc * alpha[:, None], PRECISION, DOT_UPCAST)
    return acc, m_new, l_i


@triton.jit
def _int8_attn_fwd_kernel(
    Q8,
    K8,
    QS,
    KS,
    V,
    Out,
    VS,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    n_heads,
    n_q,
    n_k,
    n_q_pad,
    n_k_pad,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    PV_FP8: tl.constexpr,
    FP8_MAX: tl.constexpr,
    ROUND_P: tl.constexpr,
):
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    pid_bh, b, h, offs_m = head_block(n_heads, BLOCK_M)
    bh = pid_bh.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # Quantised Q and K are contiguous and zero-padded to whole blocks and BLOCK_D: no masks on their loads.
    q = tl.load(Q8 + bh * n_q_pad * BLOCK_D + offs_m[:, None] * BLOCK_D + offs_d[None, :])
    qk_scale = tl.load(QS + bh * (n_q_pad // BLOCK_M) + tl.program_id(0)) * scale * 1.4426950408889634
    K8 += bh * n_k_pad * BLOCK_D
    KS += bh * (n_k_pad // BLOCK_N)
    V += b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Full key blocks need no bounds checks; only the tail block is masked.
    n_full = (n_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, m_i, l_i = _int8_tile(
            acc, m_i, l_i, q, qk_scale, K8, KS, V, stride_vn, stride_vd, start_n, n_k, offs_n, offs_d,
            HEAD_DIM, BLOCK_N, BLOCK_D, False, MASK_D, PRECISION, DOT_UPCAST, PV_FP8, FP8_MAX, ROUND_P,
        )  # fmt: skip
    if n_full < n_k:
        acc, m_i, l_i = _int8_tile(
            acc, m_i, l_i, q, qk_scale, K8, KS, V, stride_vn, stride_vd, n_full, n_k, offs_n, offs_d,
            HEAD_DIM, BLOCK_N, BLOCK_D, True, MASK_D, PRECISION, DOT_UPCAST, PV_FP8, FP8_MAX, ROUND_P,
        )  # fmt: skip
    if PV_FP8:  # V's channel scales and P's 448, with the softmax's normalisation
        v_scale = tl.load(VS + bh * BLOCK_D + offs_d)
        o = acc * (v_scale / FP8_MAX)[None, :] / l_i[:, None]
    else:
        o = acc / l_i[:, None]
    ptrs, mask = head_rows(Out, b, h, stride_ob, stride_oh, stride_om, stride_od, offs_m, n_q, offs_d, HEAD_DIM, MASK_D)
    tl.store(ptrs, o.to(Out.dtype.element_ty), mask=mask)


def int8_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    *,
    smooth_k: bool = True,
    pv: str = "input",
    config: Int8LaunchConfig | None = None,
) -> Tensor:
    """softmax(scale·QKᵀ)·V with Q and K quantised to INT8 per block (see the module docstring), no autograd;
    ``pv="fp8"`` multiplies P·V in FP8 (compute capability 8.9+).

    The output has q's dtype and shape, as a (B, H, S, D) view of (B, S, H, D) memory.
    """
    check_inputs(q, k, v)
    check_pv(pv, q.device)
    require_kernel_device(q, "INT8 attention", ", or use int8_attention_reference")
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    cfg = config or default_config(d, q.device, pv)
    out = empty_bhsd(b, h, n_q, d, dtype=q.dtype, device=q.device)
    if n_q == 0 or b * h == 0:
        return out
    qq = quantize_qk(q, k, cfg.block_m, cfg.block_n, smooth_k=smooth_k)
    if pv == "fp8":
        values, v_scale = quantize_v_fp8(v, cfg.block_n, head_dim_block(d))
        # (B, H, BLOCK_D, N') read through V's (batch, head, key, channel) strides.
        v_strides = (values.stride(0), values.stride(1), values.stride(3), values.stride(2))
    else:
        values, v_scale, v_strides = v, qq.q_scale, v.stride()  # v_scale: unread
    grid = (triton.cdiv(n_q, cfg.block_m), b * h)
    with device_context(q):
        _int8_attn_fwd_kernel[grid](
            qq.q8,
            qq.k8,
            qq.q_scale,
            qq.k_scale,
            values,
            out,
            v_scale,
            *v_strides,
            *out.stride(),
            h,
            n_q,
            n_k,
            qq.q8.shape[2],
            qq.k8.shape[2],
            softmax_scale(scale, d),
            HEAD_DIM=d,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_D=head_dim_block(d),
            **dot_flags(v.dtype),
            PV_FP8=pv == "fp8",
            FP8_MAX=FP8_MAX,
            ROUND_P=pv == "fp8" and interpreter_active(),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return out
