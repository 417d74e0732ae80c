"""Fused FlashAttention-2 forward with its Jacobian-vector product, in one streaming pass.

For S = scale·QKᵀ, P = softmax(S) and O = PV, the JVP along (tQ, tK, tV) is

    tS = scale·(tQ·Kᵀ + Q·tKᵀ)
    tO = P·tV + (P∘tS)·V − rowsum(P∘tS)∘O

(differentiate P = exp(S − lse): tP = P∘(tS − rowsum(P∘tS))). Every term is a product of P with
something, so the online-softmax trick of FlashAttention applies unchanged: per query block we stream
over key blocks and keep, next to the running max m and denominator l,

    acc_o = Σ p·V,   acc_t = Σ p·tV + (p∘tS)·V,   r = Σ rowsum(p∘tS)

all rescaled by exp(m_old − m_new) when the max moves, and finish with O = acc_o/l,
tO = acc_t/l − (r/l)∘O. P·tV and (P∘tS)·V are only ever used as a sum, so they share one
accumulator. No (Nq, Nk) tensor is materialised: memory is O(N).

Matmuls per tile: S, tQ·Kᵀ, Q·tKᵀ, P·V, P·tV, (P∘tS)·V — 6, three times a plain forward. Keys and
values without tangent (cross-attention to text) skip Q·tKᵀ and P·tV and their loads: 4 a tile.

Layout is (B, H, S, D) like ``scaled_dot_product_attention``; every tensor is addressed through its
own strides, so (B, S, H, D) tensors transposed to (B, H, S, D) work without copies. Outputs are
allocated as (B, S, H, D) and returned transposed, the layout networks reshape back to (B, S, H·D)
for free.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from rcm_kernels import attention_backward
from rcm_kernels.triton_common import (
    ScratchAllocator,
    check_attention_shapes,
    check_shape_like,
    device_context,
    dot,
    dot_flags,
    empty_bhsd,
    head_dim_block,
    head_rows,
    interpreter_active,
    load_head_rows,
    load_rows,
    softmax_scale,
    tma_loads_possible,
)

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class LaunchConfig(NamedTuple):
    """Tile sizes and launch parameters of the forward kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    #: Rescale the accumulators only when some row's running max grew by more than this (log2 units);
    #: 0 rescales on every growth, as FlashAttention-2 does. See ``_jvp_tile``.
    rescale_threshold: float = 8.0
    #: Load key/value (and their tangent) tiles with the Hopper copy engine through tensor descriptors
    #: instead of per-thread loads: fewer registers for addresses and asynchronous, pipelined copies.
    #: Needs a compiled kernel on compute capability 9.0+, a power-of-two head dim and 16-byte aligned
    #: strides; elsewhere the pointer loads are used.
    tma: bool = False
    #: With ``tma``: build the descriptors inside the kernel, one 2-D (Nk, D) descriptor per (batch, head),
    #: instead of passing 4-D host descriptors (Triton's Hopper warp specialisation wants device-side ones).
    #: Such descriptors live in launch-time scratch memory: the call installs ``ScratchAllocator`` (PyTorch
    #: memory on the call's device) as Triton's allocator for its context.
    device_descriptors: bool = False
    #: Let Triton split the key loop into producer (copy) and consumer (matmul) warp groups.
    warp_specialize: bool = False


def check_inputs(q: Tensor, k: Tensor, v: Tensor, tangents: tuple[Tensor | None, ...] = ()) -> None:
    """Raise a ValueError/TypeError naming the problem if the kernels cannot take these tensors."""
    check_attention_shapes(q, k, v)
    if q.dtype not in _SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, t, ref in zip(("tq", "tk", "tv"), tangents, (q, k, v), strict=False):
        check_shape_like(name, t, ref, "its primal")
    devices = {t.device for t in (q, k, v, *tangents) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    device = q.device
    if device.type == "cuda":
        return
    if device.type == "cpu" and interpreter_active():
        return
    raise RuntimeError(
        f"the Triton attention kernels need CUDA tensors, got a tensor on {device}; on CPU they run only in "
        "Triton's interpreter (set TRITON_INTERPRET=1 before importing rcm_kernels)"
    )


def default_config(
    head_dim: int,
    dtype: torch.dtype,
    has_tkv: bool,
    device: torch.device,
    *,
    has_tangent: bool = True,
    tma: bool = True,
) -> LaunchConfig:
    """Tile sizes measured on an H100 (see benchmarks/RESULTS.md); the interpreter prefers few, large tiles.

    ``has_tangent`` False asks for the plain forward (no tangent at all); ``tma`` False for a config
    that does without tensor descriptors (the tensors cannot take them, see ``tma_loads_possible``).
    """
    if device.type != "cuda":
        return LaunchConfig(64, 64, 4, 1)
    block_d = triton.next_power_of_2(head_dim)
    if dtype == torch.float32 and block_d > 128:
        # 1 KiB rows: q, tq and one stage of four key/value tiles already take 192 KiB of shared memory.
        return LaunchConfig(32, 32, 4, 1)
    if dtype == torch.float32 or block_d > 128:
        # Twice the accumulator registers of a plain forward: keep tiles small where D or the dtype is large.
        return LaunchConfig(64, 32, 4, 2)
    if not has_tangent and tma:
        # Plain forward: one accumulator fits 128-row tiles in 4 warps; Triton's warp specialisation
        # (copy warps feeding the matmul warps from in-kernel descriptors) takes 20 % off at the Wan
        # self-attention shape. The JVP's two accumulators spill in 4 warps (13x slower).
        return LaunchConfig(
            128, 64, 4, 2, rescale_threshold=0.0, tma=True, device_descriptors=True, warp_specialize=True
        )
    if not has_tkv:
        # Fast path: q, tq and two 64-row stages of k, v take 96 KiB of shared memory, so two programs
        # share a multiprocessor and one's prologue and epilogue overlap the other's matmuls; with only
        # Nk/64 key tiles a program (cross-attention to text) that matters more than tile size. Lazy
        # rescaling measured slower here (its per-tile block-wide max costs more than the few rescales
        # of 8 key tiles save). Key/value tiles through host-side tensor descriptors.
        return LaunchConfig(64, 64, 4, 2, rescale_threshold=0.0, tma=tma)
    if tma:
        # General path: key/value tiles and their tangents through descriptors built in the kernel, with
        # every-tile rescaling (the lazy rescale's per-tile branch undoes the copy pipelining): 4 % under
        # the pointer-load config below. Best of the sweeps in benchmarks/RESULTS.md.
        return LaunchConfig(128, 64, 8, 2, rescale_threshold=0.0, tma=True, device_descriptors=True)
    # Pointer loads: lazy rescaling. 128×128 tiles or 3 stages exceed shared memory.
    return LaunchConfig(128, 64, 8, 2)


@triton.jit
def _key_tile(
    DESC,
    PTR,
    stride_n,
    stride_d,
    b,
    h,
    start_n,
    n_k,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_N: tl.constexpr,
    USE_TMA: tl.constexpr,
    DESC_2D: tl.constexpr,
):
    # One (BLOCK_N, D) tile of keys, values or their tangents: through the tensor descriptor, whose copy
    # engine fills rows past n_k with zeros (their scores are masked by the caller), or by pointers.
    if USE_TMA:
        if DESC_2D:
            return DESC.load([start_n, 0])
        else:
            return DESC.load([b, h, start_n, 0]).reshape(BLOCK_N, BLOCK_D)
    else:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = PTR + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d
        return load_rows(ptrs, offs_n, n_k, offs_d, HEAD_DIM, MASK_N, BLOCK_D != HEAD_DIM)


@triton.jit
def _jvp_tile(
    acc_o,
    acc_t,
    m_i,
    l_i,
    r_i,
    q,
    tq,
    K,
    V,
    TK,
    TV,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_tkn,
    stride_tkd,
    stride_tvn,
    stride_tvd,
    KD,
    VD,
    TKD,
    TVD,
    b,
    h,
    start_n,
    n_k,
    qk_scale,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_N: tl.constexpr,
    HAS_TQ: tl.constexpr,
    HAS_TK: tl.constexpr,
    HAS_TV: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    LAZY_RESCALE: tl.constexpr,
    RESCALE_THRESHOLD: tl.constexpr,
    USE_TMA: tl.constexpr,
    DESC_2D: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _key_tile(KD, K, stride_kn, stride_kd, b, h, start_n, n_k, HEAD_DIM, BLOCK_N, BLOCK_D, MASK_N, USE_TMA, DESC_2D)
    kt = tl.trans(k)
    s = dot(q, kt, None, PRECISION, DOT_UPCAST)
    if MASK_N:
        s = tl.where(offs_n[None, :] < n_k, s, float("-inf"))
    # Softmax in base 2: exp2 is one instruction; qk_scale = scale·log2(e).
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    HAS_TS: tl.constexpr = HAS_TQ or HAS_TK
    if LAZY_RESCALE:
        # Rescaling the two (BLOCK_M, D) accumulators costs 2·D/BLOCK_N multiplies per score, as much
        # as the softmax itself. The reference max only has to bound the exponents, not equal the row
        # max: keep it while no row grew by more than RESCALE_THRESHOLD (p ≤ 2^threshold stays far from
        # overflow in fp32 sums and bf16 operands). One decision per tile keeps the branch uniform; the
        # first tile always takes it (m_i = -inf). The result is exact either way: every term shares m_i.
        if tl.max(m_new - m_i, 0) > RESCALE_THRESHOLD:
            alpha = tl.math.exp2(m_i - m_new)
            acc_o = acc_o * alpha[:, None]
            if HAS_TS or HAS_TV:
                acc_t = acc_t * alpha[:, None]
            l_i = l_i * alpha
            if HAS_TS:
                r_i = r_i * alpha
            m_i = m_new
        p = tl.math.exp2(s * qk_scale - m_i[:, None])
        l_i = l_i + tl.sum(p, 1)
    else:
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc_o = acc_o * alpha[:, None]
        if HAS_TS or HAS_TV:
            acc_t = acc_t * alpha[:, None]
        if HAS_TS:
            r_i = r_i * alpha
        m_i = m_new
    v = _key_tile(VD, V, stride_vn, stride_vd, b, h, start_n, n_k, HEAD_DIM, BLOCK_N, BLOCK_D, MASK_N, USE_TMA, DESC_2D)
    p_in = p.to(v.dtype)
    acc_o = dot(p_in, v, acc_o, PRECISION, DOT_UPCAST)
    if HAS_TS:
        if HAS_TK:
            tk = _key_tile(
                TKD,
                TK,
                stride_tkn,
                stride_tkd,
                b,
                h,
                start_n,
                n_k,
                HEAD_DIM,
                BLOCK_N,
                BLOCK_D,
                MASK_N,
                USE_TMA,
                DESC_2D,
            )
            ts = dot(q, tl.trans(tk), None, PRECISION, DOT_UPCAST)
            if HAS_TQ:
                ts = dot(tq, kt, ts, PRECISION, DOT_UPCAST)
        else:
            ts = dot(tq, kt, None, PRECISION, DOT_UPCAST)
        # Masked columns have p = 0 exactly, so they add nothing here either.
        pts = p * (ts * scale)
        r_i = r_i + tl.sum(pts, 1)
        acc_t = dot(pts.to(v.dtype), v, acc_t, PRECISION, DOT_UPCAST)
    if HAS_TV:
        tv = _key_tile(
            TVD, TV, stride_tvn, stride_tvd, b, h, start_n, n_k, HEAD_DIM, BLOCK_N, BLOCK_D, MASK_N, USE_TMA, DESC_2D
        )
        acc_t = dot(p_in, tv, acc_t, PRECISION, DOT_UPCAST)
    return acc_o, acc_t, m_i, l_i, r_i


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    TQ,
    TK,
    TV,
    Out,
    TOut,
    LSE,
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
    stride_tqb,
    stride_tqh,
    stride_tqm,
    stride_tqd,
    stride_tkb,
    stride_tkh,
    stride_tkn,
    stride_tkd,
    stride_tvb,
    stride_tvh,
    stride_tvn,
    stride_tvd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_tob,
    stride_toh,
    stride_tom,
    stride_tod,
    KD,
    VD,
    TKD,
    TVD,
    n_heads,
    n_q,
    n_k,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_TQ: tl.constexpr,
    HAS_TK: tl.constexpr,
    HAS_TV: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    LAZY_RESCALE: tl.constexpr,
    RESCALE_THRESHOLD: tl.constexpr,
    USE_TMA: tl.constexpr,
    DEVICE_DESC: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    MASK_D: tl.constexpr = BLOCK_D != HEAD_DIM
    HAS_T: tl.constexpr = HAS_TQ or HAS_TK or HAS_TV
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    # 64-bit offsets: B·H·S·D exceeds 2³¹ elements at video sizes.
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    q = load_head_rows(Q, b64, h64, stride_qb, stride_qh, stride_qm, stride_qd, offs_m, n_q, offs_d, HEAD_DIM, MASK_D)
    if HAS_TQ:
        tq = load_head_rows(
            TQ, b64, h64, stride_tqb, stride_tqh, stride_tqm, stride_tqd, offs_m, n_q, offs_d, HEAD_DIM, MASK_D
        )
    else:
        tq = q  # never read: the HAS_TQ branches are compiled out
    K += b64 * stride_kb + h64 * stride_kh
    V += b64 * stride_vb + h64 * stride_vh
    TK += b64 * stride_tkb + h64 * stride_tkh
    TV += b64 * stride_tvb + h64 * stride_tvh
    if DEVICE_DESC:
        KD = tl.make_tensor_descriptor(K, [n_k, HEAD_DIM], [stride_kn, 1], [BLOCK_N, BLOCK_D])
        VD = tl.make_tensor_descriptor(V, [n_k, HEAD_DIM], [stride_vn, 1], [BLOCK_N, BLOCK_D])
        if HAS_TK:
            TKD = tl.make_tensor_descriptor(TK, [n_k, HEAD_DIM], [stride_tkn, 1], [BLOCK_N, BLOCK_D])
        if HAS_TV:
            TVD = tl.make_tensor_descriptor(TV, [n_k, HEAD_DIM], [stride_tvn, 1], [BLOCK_N, BLOCK_D])

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    r_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_o = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634

    # Full key blocks need no bounds checks; only the tail block is masked.
    n_full = (n_k // BLOCK_N) * BLOCK_N
    for start_n in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        acc_o, acc_t, m_i, l_i, r_i = _jvp_tile(
            acc_o,
            acc_t,
            m_i,
            l_i,
            r_i,
            q,
            tq,
            K,
            V,
            TK,
            TV,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_tkn,
            stride_tkd,
            stride_tvn,
            stride_tvd,
            KD,
            VD,
            TKD,
            TVD,
            b,
            h,
            start_n,
            n_k,
            qk_scale,
            scale,
            HEAD_DIM,
            BLOCK_N,
            BLOCK_D,
            False,
            HAS_TQ,
            HAS_TK,
            HAS_TV,
            PRECISION,
            DOT_UPCAST,
            LAZY_RESCALE,
            RESCALE_THRESHOLD,
            USE_TMA,
            DEVICE_DESC,
        )
    if n_full < n_k:
        acc_o, acc_t, m_i, l_i, r_i = _jvp_tile(
            acc_o,
            acc_t,
            m_i,
            l_i,
            r_i,
            q,
            tq,
            K,
            V,
            TK,
            TV,
            stride_kn,
            stride_kd,
            stride_vn,
            stride_vd,
            stride_tkn,
            stride_tkd,
            stride_tvn,
            stride_tvd,
            KD,
            VD,
            TKD,
            TVD,
            b,
            h,
            n_full,
            n_k,
            qk_scale,
            scale,
            HEAD_DIM,
            BLOCK_N,
            BLOCK_D,
            True,
            HAS_TQ,
            HAS_TK,
            HAS_TV,
            PRECISION,
            DOT_UPCAST,
            LAZY_RESCALE,
            RESCALE_THRESHOLD,
            USE_TMA,
            DEVICE_DESC,
        )

    l_inv = 1.0 / l_i
    o = acc_o * l_inv[:, None]
    o_ptrs, store_mask = head_rows(
        Out, b64, h64, stride_ob, stride_oh, stride_om, stride_od, offs_m, n_q, offs_d, HEAD_DIM, MASK_D
    )
    tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=store_mask)
    if HAS_T:
        to = acc_t * l_inv[:, None] - (r_i * l_inv)[:, None] * o
        to_ptrs, _ = head_rows(
            TOut, b64, h64, stride_tob, stride_toh, stride_tom, stride_tod, offs_m, n_q, offs_d, HEAD_DIM, MASK_D
        )
        tl.store(to_ptrs, to.to(TOut.dtype.element_ty), mask=store_mask)
    # Natural-log LSE: m_i and log2(l_i) are in base-2 units of the scaled scores.
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + pid_bh.to(tl.int64) * n_q + offs_m, lse, mask=offs_m < n_q)


def _strides(t: Tensor | None, fallback: Tensor) -> tuple[int, ...]:
    return tuple((t if t is not None else fallback).stride())


def attention_jvp_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tq: Tensor | None = None,
    tk: Tensor | None = None,
    tv: Tensor | None = None,
    *,
    scale: float | None = None,
    config: LaunchConfig | None = None,
    out: tuple[Tensor, Tensor | None, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """One streaming pass: ``(o, to, lse)`` for (B, H, S, D) inputs, without autograd.

    ``to`` is None when all three tangents are None (then this is a plain FlashAttention-2 forward).
    ``lse`` is the natural-log log-sum-exp of the scaled scores, float32 of shape (B, H, Nq). Tangents
    are cast to the primal dtype; accumulation is float32. ``out`` holds preallocated ``(o, to, lse)``
    to write into (any strides; ``to`` None when there is no tangent). ``to`` may be ``tq`` itself
    (same dtype as q), which then receives the output tangent in place and saves one (B, S, H, D)
    allocation: each program reads its own query rows of tq once, before any write, and writes only
    those rows.
    """
    check_inputs(q, k, v, (tq, tk, tv))
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    scale = softmax_scale(scale, d)
    tq, tk, tv = (None if t is None else t.to(q.dtype) for t in (tq, tk, tv))
    has_t = any(t is not None for t in (tq, tk, tv))
    tma_possible = tma_loads_possible(q, (k, v, tk, tv))
    cfg = config or default_config(
        d, q.dtype, tk is not None or tv is not None, q.device, has_tangent=has_t, tma=tma_possible
    )
    if out is None:
        o = empty_bhsd(b, h, n_q, d, dtype=q.dtype, device=q.device)
        to = empty_bhsd(b, h, n_q, d, dtype=q.dtype, device=q.device) if has_t else None
        lse = torch.empty((b, h, n_q), dtype=torch.float32, device=q.device)
    else:
        o, to, lse = out
        if o.shape != q.shape or o.dtype != q.dtype or lse.shape != (b, h, n_q) or lse.dtype != torch.float32:
            raise ValueError("out must hold o shaped and typed like q and a float32 (B, H, Nq) lse")
        if has_t != (to is not None) or (to is not None and (to.shape != q.shape or to.dtype != q.dtype)):
            raise ValueError("out's to must be shaped and typed like q when a tangent is given, else None")
        if not lse.is_contiguous():
            raise ValueError("out's lse must be contiguous")
        if (
            to is not None
            and tq is not None
            and to.untyped_storage().data_ptr() == tq.untyped_storage().data_ptr()
            and (to.data_ptr(), to.stride()) != (tq.data_ptr(), tq.stride())
        ):
            # Other rows of tq could be overwritten before the program that owns them reads them.
            raise ValueError("out's to may be tq itself but must not otherwise share its memory")
    if n_q == 0 or b * h == 0:
        return o, to, lse
    if n_k == 0:
        raise ValueError("attention over zero keys is undefined")
    grid = (triton.cdiv(n_q, cfg.block_m), b * h)
    use_tma = cfg.tma and tma_possible
    block = [1, 1, cfg.block_n, d]
    device_desc = use_tma and cfg.device_descriptors
    if device_desc:
        # Descriptors built inside a kernel live in global scratch memory that Triton asks the host for
        # at launch (a context variable, so it is set on every call: any thread may launch).
        triton.set_allocator(ScratchAllocator(q.device))
    descriptors = [
        TensorDescriptor(t, list(t.shape), list(t.stride()), block)
        if use_tma and not device_desc and t is not None
        else None
        for t in (k, v, tk, tv)
    ]
    with device_context(q):
        _attn_fwd_kernel[grid](
            q,
            k,
            v,
            tq if tq is not None else q,
            tk if tk is not None else k,
            tv if tv is not None else v,
            o,
            to if to is not None else o,
            lse,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *_strides(tq, q),
            *_strides(tk, k),
            *_strides(tv, v),
            *o.stride(),
            *_strides(to, o),
            *descriptors,
            h,
            n_q,
            n_k,
            scale,
            HEAD_DIM=d,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_D=head_dim_block(d),
            HAS_TQ=tq is not None,
            HAS_TK=tk is not None,
            HAS_TV=tv is not None,
            # fp32 inputs get true fp32 products; TF32 would cost three decimal digits.
            **dot_flags(q.dtype),
            LAZY_RESCALE=cfg.rescale_threshold > 0,
            RESCALE_THRESHOLD=float(cfg.rescale_threshold),
            USE_TMA=use_tma,
            DEVICE_DESC=device_desc,
            WARP_SPECIALIZE=cfg.warp_specialize and use_tma,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return o, to, lse


class _AttentionJvp(torch.autograd.Function):
    """Primal output with gradient, tangent output without: one fused forward, a Triton backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        tq: Tensor | None,
        tk: Tensor | None,
        tv: Tensor | None,
        scale: float,
        config: LaunchConfig | None,
    ) -> tuple[Tensor, Tensor | None]:
        o, to, lse = attention_jvp_forward(q, k, v, tq, tk, tv, scale=scale, config=config)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        if to is not None:
            # sCM/rCM use the tangent as a stop-gradient target; no gradient flows through it.
            ctx.mark_non_differentiable(to)
        return o, to

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, do: Tensor, _dto: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward.attention_backward(q, k, v, o, lse, do, scale=ctx.scale)
        return dq, dk, dv, None, None, None, None, None


def attention_jvp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tq: Tensor | None,
    tk: Tensor | None,
    tv: Tensor | None,
    scale: float | None = None,
    *,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention and its JVP: ``(o, to)`` with ``o = softmax(scale·q·kᵀ)·v`` and ``to`` its tangent.

    (B, H, S, D) tensors (strided views fine), Nq may differ from Nk. ``tk = tv = None`` takes the
    fast path for keys and values without tangent; ``tq = None`` means a zero query tangent. ``o``
    is differentiable (Triton backward); ``to`` carries no gradient.
    """
    if tq is None and tk is None and tv is None:
        o = attention(q, k, v, scale, config=config)
        return o, torch.zeros_like(o)
    scale = softmax_scale(scale, q.shape[-1])
    o, to = _AttentionJvp.apply(q, k, v, tq, tk, tv, scale, config)
    return o, to


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        scale: float,
        config: LaunchConfig | None,
    ) -> Tensor:
        o, _, lse = attention_jvp_forward(q, k, v, scale=scale, config=config)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, do: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward.attention_backward(q, k, v, o, lse, do, scale=ctx.scale)
        return dq, dk, dv, None, None


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, *, config: LaunchConfig | None = None
) -> Tensor:
    """Plain FlashAttention-2 forward (the JVP kernel with its tangent compiled out), Triton backward."""
    scale = softmax_scale(scale, q.shape[-1])
    return _Attention.apply(q, k, v, scale, config)
