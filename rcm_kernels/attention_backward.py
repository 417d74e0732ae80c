"""FlashAttention-2 backward in Triton: (dq, dk, dv) from q, k, v, o, the log-sum-exp and do.

With P = exp(scale·QKᵀ − lse) recomputed tile by tile from the saved log-sum-exp:

    dV = Pᵀ·dO,   dP = dO·Vᵀ,   dS = P∘(dP − δ) with δ = rowsum(dO∘O),
    dQ = scale·dS·K,   dK = scale·dSᵀ·Q.

After a small kernel for δ, the default (``atomic_dq``) is one program per key block that streams
over query blocks, accumulates dK and dV in registers and adds each tile's dQ contribution into a
float32 buffer with atomic adds: 5 matmuls a tile pair, then a small kernel scales and casts dQ. The
alternative is two deterministic kernels, one per key block for dK and dV and one per query block for
dQ; recomputing P and dP in both costs 7 matmuls a tile pair but needs no float32 dQ buffer and gives
bitwise-reproducible dQ (atomic float adds land in a varying order). Same (B, H, S, D) strided layout
as the forward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from rcm_kernels.triton_common import (
    device_context,
    dot,
    dot_flags,
    empty_bhsd,
    head_block,
    head_dim_block,
    head_rows,
    interpreter_active,
    load_head_rows,
    load_rows,
    softmax_scale,
)


class BackwardConfig(NamedTuple):
    """Tile sizes: keys per program and queries per step (dK/dV), queries per program and keys per step (dQ)."""

    block_n_kv: int
    block_m_kv: int
    block_m_q: int
    block_n_q: int
    num_warps: int
    num_stages: int
    #: One kernel with atomic float32 dQ accumulation (block_m_q, block_n_q unused), else two kernels.
    atomic_dq: bool = True
    #: Atomic dQ through the bulk tensor copy engine (one reduce-add a tile) where the GPU has it
    #: (Hopper and later, compiled), else per-element atomic adds.
    tma_dq: bool = True


def default_backward_config(head_dim: int, dtype: torch.dtype, device: torch.device, n_k: int = 0) -> BackwardConfig:
    """Tile sizes measured on an H100 at D = 128 bf16 (benchmarks/RESULTS.md)."""
    if device.type != "cuda":
        return BackwardConfig(64, 64, 64, 64, 4, 1)
    if head_dim > 128:
        # fp32: 1 KiB rows, the resident key/value tiles and one stage of query/output-gradient tiles
        # fill shared memory at 32 rows each. 16-bit: 64 × 64 tiles in 8 warps; 64 keys × 32 queries in
        # 4 warps (the D <= 128 fp32 tiles) hit an illegal address on an H100 with Triton 3.6 at D = 256.
        if dtype == torch.float32:
            return BackwardConfig(32, 32, 32, 32, 4, 1)
        return BackwardConfig(64, 64, 0, 0, 8, 1)
    if dtype == torch.float32:
        return BackwardConfig(64, 32, 64, 32, 4, 2)
    if n_k <= 1024:
        # Few keys (cross-attention to text): a program per key block would leave most of the GPU idle,
        # so the two-kernel form, whose dQ kernel has a program per query block, wins here.
        return BackwardConfig(64, 64, 64, 64, 4, 3, atomic_dq=False)
    if torch.cuda.get_device_capability(device)[0] < 9:
        # Without bulk tensor reduce-adds, per-element float32 atomics measured slower than recomputing.
        return BackwardConfig(128, 32, 128, 32, 8, 3, atomic_dq=False)
    return BackwardConfig(128, 64, 0, 0, 8, 3)


@triton.jit
def _bwd_delta_kernel(
    Out,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    n_heads,
    n_q,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh, b, h, offs_m = head_block(n_heads, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < n_q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(
        Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        mask=mask,
        other=0.0,
    )
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=mask,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * n_q + offs_m, delta, mask=offs_m < n_q)


@triton.jit
def _dkdv_step(
    dk,
    dv,
    k,
    v,
    Q,
    DO,
    LSE,
    DELTA,
    DQT,
    stride_qm,
    stride_qd,
    stride_dom,
    stride_dod,
    stride_dqtd,
    bh,
    start_m,
    n_q,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_M: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    DQ_TMA: tl.constexpr,
):
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_rows(
        Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, offs_m, n_q, offs_d, HEAD_DIM, MASK_M, MASK_D
    )
    do = load_rows(
        DO + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, offs_m, n_q, offs_d, HEAD_DIM, MASK_M, MASK_D
    )
    if MASK_M:
        # Padded query rows: lse = +inf makes their probabilities exactly 0.
        lse2 = tl.load(LSE + offs_m, mask=offs_m < n_q, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + offs_m, mask=offs_m < n_q, other=0.0)
    else:
        lse2 = tl.load(LSE + offs_m) * 1.4426950408889634
        delta = tl.load(DELTA + offs_m)
    # Transposed tiles (keys × queries) so that dK and dV accumulate without transposing P.
    st = dot(k, tl.trans(q), None, PRECISION, DOT_UPCAST)
    pt = tl.math.exp2(st * qk_scale - lse2[None, :])
    dv = dot(pt.to(do.dtype), do, dv, PRECISION, DOT_UPCAST)
    dpt = dot(v, tl.trans(do), None, PRECISION, DOT_UPCAST)
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)
    dk = dot(dst, q, dk, PRECISION, DOT_UPCAST)
    if ATOMIC_DQ:
        # dQᵀ = Kᵀ·dSᵀ: a (D, BLOCK_M) product keeps the matmul's M dimension at D = 128 whatever BLOCK_M is
        # (wgmma wants 64 rows a warpgroup), and the float32 buffer is laid out (D, Nq) to match, so each
        # thread's adjacent accumulator columns are adjacent addresses (vector atomics).
        dqt = dot(tl.trans(k), dst, None, PRECISION, DOT_UPCAST)
        if DQ_TMA:
            # One bulk reduce-add of the whole tile: full L2 lines instead of a red instruction per pair of
            # elements. The copy engine drops rows and columns past the descriptor's (B·H, HEAD_DIM, Nq)
            # bounds, so tails need no mask.
            DQT.atomic_add([bh, 0, start_m], tl.reshape(dqt, [1, BLOCK_D, BLOCK_M]))
        else:
            dqt_ptrs = DQT + bh.to(tl.int64) * HEAD_DIM * stride_dqtd + offs_d[:, None] * stride_dqtd + offs_m[None, :]
            if MASK_M:
                if MASK_D:
                    mask = (offs_d[:, None] < HEAD_DIM) & (offs_m[None, :] < n_q)
                    tl.atomic_add(dqt_ptrs, dqt, mask=mask, sem="relaxed")
                else:
                    tl.atomic_add(dqt_ptrs, dqt, mask=offs_m[None, :] < n_q, sem="relaxed")
            else:
                if MASK_D:
                    tl.atomic_add(dqt_ptrs, dqt, mask=offs_d[:, None] < HEAD_DIM, sem="relaxed")
                else:
                    tl.atomic_add(dqt_ptrs, dqt, sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    DQT,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dkd,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_dvd,
    stride_dqtd,
    n_heads,
    n_q,
    n_k,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
    DQ_TMA: tl.constexpr,
):
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    pid_bh, b, h, offs_n = head_block(n_heads, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # One program per key block: dK and dV, and with ATOMIC_DQ each tile's dQ contribution added into DQT
    # (else _bwd_dq_kernel computes dQ). Padded key rows load as zeros: their dQ contributions are exactly
    # zero, their dK/dV rows unstored.
    k = load_head_rows(K, b, h, stride_kb, stride_kh, stride_kn, stride_kd, offs_n, n_k, offs_d, HEAD_DIM, MASK_D)
    v = load_head_rows(V, b, h, stride_vb, stride_vh, stride_vn, stride_vd, offs_n, n_k, offs_d, HEAD_DIM, MASK_D)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    LSE += pid_bh.to(tl.int64) * n_q
    DELTA += pid_bh.to(tl.int64) * n_q
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    # Every program of a head walks the query blocks in the same order: they then read the same q and
    # dO tiles at about the same time, from L2 (starting each at its own block measured 4-8 % slower).
    m_full = (n_q // BLOCK_M) * BLOCK_M
    for start_m in range(0, m_full, BLOCK_M):
        dk, dv = _dkdv_step(
            dk,
            dv,
            k,
            v,
            Q,
            DO,
            LSE,
            DELTA,
            DQT,
            stride_qm,
            stride_qd,
            stride_dom,
            stride_dod,
            stride_dqtd,
            pid_bh,
            start_m,
            n_q,
            qk_scale,
            HEAD_DIM,
            BLOCK_M,
            BLOCK_D,
            False,
            PRECISION,
            DOT_UPCAST,
            ATOMIC_DQ,
            DQ_TMA,
        )
    if m_full < n_q:
        dk, dv = _dkdv_step(
            dk,
            dv,
            k,
            v,
            Q,
            DO,
            LSE,
            DELTA,
            DQT,
            stride_qm,
            stride_qd,
            stride_dom,
            stride_dod,
            stride_dqtd,
            pid_bh,
            m_full,
            n_q,
            qk_scale,
            HEAD_DIM,
            BLOCK_M,
            BLOCK_D,
            True,
            PRECISION,
            DOT_UPCAST,
            ATOMIC_DQ,
            DQ_TMA,
        )
    dk_ptrs, mask = head_rows(
        DK, b, h, stride_dkb, stride_dkh, stride_dkn, stride_dkd, offs_n, n_k, offs_d, HEAD_DIM, MASK_D
    )
    dv_ptrs, _ = head_rows(
        DV, b, h, stride_dvb, stride_dvh, stride_dvn, stride_dvd, offs_n, n_k, offs_d, HEAD_DIM, MASK_D
    )
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _dq_step(
    dq,
    q,
    do,
    lse2,
    delta,
    K,
    V,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    start_n,
    n_k,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = load_rows(
        K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, offs_n, n_k, offs_d, HEAD_DIM, MASK_N, MASK_D
    )
    v = load_rows(
        V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, offs_n, n_k, offs_d, HEAD_DIM, MASK_N, MASK_D
    )
    s = dot(q, tl.trans(k), None, PRECISION, DOT_UPCAST)
    p = tl.math.exp2(s * qk_scale - lse2[:, None])
    dp = dot(do, tl.trans(v), None, PRECISION, DOT_UPCAST)
    # Padded key columns have k = 0, so their (finite) dS multiplies zeros below: no mask needed.
    ds = p * (dp - delta[:, None])
    dq = dot(ds.to(k.dtype), k, dq, PRECISION, DOT_UPCAST)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_dqd,
    n_heads,
    n_q,
    n_k,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    pid_bh, b, h, offs_m = head_block(n_heads, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_head_rows(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, offs_m, n_q, offs_d, HEAD_DIM, MASK_D)
    do = load_head_rows(DO, b, h, stride_dob, stride_doh, stride_dom, stride_dod, offs_m, n_q, offs_d, HEAD_DIM, MASK_D)
    row = pid_bh.to(tl.int64) * n_q + offs_m
    lse2 = tl.load(LSE + row, mask=offs_m < n_q, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row, mask=offs_m < n_q, other=0.0)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634
    n_full = (n_k // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq = _dq_step(
            dq,
            q,
            do,
            lse2,
            delta,
            K,
            V,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            start_n,
            n_k,
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            BLOCK_D,
            False,
            PRECISION,
            DOT_UPCAST,
        )
    if n_full < n_k:
        dq = _dq_step(
            dq,
            q,
            do,
            lse2,
            delta,
            K,
            V,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            n_full,
            n_k,
            qk_scale,
            HEAD_DIM,
            BLOCK_N,
            BLOCK_D,
            True,
            PRECISION,
            DOT_UPCAST,
        )
    dq_ptrs, mask = head_rows(
        DQ, b, h, stride_dqb, stride_dqh, stride_dqm, stride_dqd, offs_m, n_q, offs_d, HEAD_DIM, MASK_D
    )
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=mask)


@triton.jit
def _dq_from_transposed_kernel(
    DQT,
    DQ,
    stride_dqtd,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_dqd,
    n_heads,
    n_q,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh, b, h, offs_m = head_block(n_heads, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_d[:, None] < HEAD_DIM) & (offs_m[None, :] < n_q)
    src = DQT + (pid_bh.to(tl.int64) * HEAD_DIM + offs_d[:, None]) * stride_dqtd + offs_m[None, :]
    dqt = tl.load(src, mask=mask, other=0.0)
    dst = DQ + b * stride_dqb + h * stride_dqh + offs_d[:, None] * stride_dqd + offs_m[None, :] * stride_dqm
    tl.store(dst, (dqt * scale).to(DQ.dtype.element_ty), mask=mask)


def _bulk_reduce_available(t: Tensor) -> bool:
    """Tensor-descriptor reduce-adds need a compiled kernel on a Hopper-or-later GPU."""
    return t.is_cuda and not interpreter_active() and torch.cuda.get_device_capability(t.device)[0] >= 9


def attention_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    do: Tensor,
    *,
    scale: float | None = None,
    config: BackwardConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of ``o = softmax(scale·q·kᵀ)·v`` given ``do`` and the forward's ``lse``.

    ``lse`` is float32 (B, H, Nq) in natural log, as :func:`rcm_kernels.attention_jvp.attention_jvp_forward`
    returns it. Gradients come back in the dtype of their inputs, as (B, S, H, D) buffers viewed as
    (B, H, S, D).
    """
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    scale = softmax_scale(scale, d)
    do = do.to(q.dtype)
    lse = lse.contiguous()
    cfg = config or default_backward_config(d, q.dtype, q.device, n_k)
    block_d = head_dim_block(d)
    flags = dot_flags(q.dtype)
    dq, dk, dv = (empty_bhsd(*t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    delta = torch.empty((b, h, n_q), dtype=torch.float32, device=q.device)
    if b * h == 0 or n_q == 0 or n_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    with device_context(q):
        _bwd_delta_kernel[(triton.cdiv(n_q, 64), b * h)](
            o, do, delta, *o.stride(), *do.stride(), h, n_q, HEAD_DIM=d, BLOCK_M=64, BLOCK_D=block_d
        )
        dqt: Tensor | None = None
        dqt_arg: Any = None
        stride_dqtd, dq_tma = 0, False
        if cfg.atomic_dq:
            # Float32 dQᵀ accumulator (B·H, D, Nq), rows padded to 16 bytes as the copy engine requires.
            stride_dqtd = triton.cdiv(n_q, 4) * 4
            dqt = torch.zeros((b * h, d, stride_dqtd), dtype=torch.float32, device=q.device)
            dq_tma = cfg.tma_dq and _bulk_reduce_available(q)
            dqt_arg = dqt
            if dq_tma:
                dqt_arg = TensorDescriptor(
                    dqt, [b * h, d, n_q], [d * stride_dqtd, stride_dqtd, 1], [1, block_d, cfg.block_m_kv]
                )
        _bwd_dkdv_kernel[(triton.cdiv(n_k, cfg.block_n_kv), b * h)](
            q,
            k,
            v,
            do,
            lse,
            delta,
            dk,
            dv,
            dqt_arg,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *do.stride(),
            *dk.stride(),
            *dv.stride(),
            stride_dqtd,
            h,
            n_q,
            n_k,
            scale,
            HEAD_DIM=d,
            BLOCK_M=cfg.block_m_kv,
            BLOCK_N=cfg.block_n_kv,
            BLOCK_D=block_d,
            **flags,
            ATOMIC_DQ=cfg.atomic_dq,
            DQ_TMA=dq_tma,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        if dqt is not None:
            _dq_from_transposed_kernel[(triton.cdiv(n_q, 64), b * h)](
                dqt, dq, stride_dqtd, *dq.stride(), h, n_q, scale, HEAD_DIM=d, BLOCK_M=64, BLOCK_D=block_d
            )
        else:
            _bwd_dq_kernel[(triton.cdiv(n_q, cfg.block_m_q), b * h)](
                q,
                k,
                v,
                do,
                lse,
                delta,
                dq,
                *q.stride(),
                *k.stride(),
                *v.stride(),
                *do.stride(),
                *dq.stride(),
                h,
                n_q,
                n_k,
                scale,
                HEAD_DIM=d,
                BLOCK_M=cfg.block_m_q,
                BLOCK_N=cfg.block_n_q,
                BLOCK_D=block_d,
                **flags,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
            )
    return dq, dk, dv
