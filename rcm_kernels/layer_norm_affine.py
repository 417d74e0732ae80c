"""Layer norm followed by a per-token-group affine map, and its tangent: the modulated norms of DiT blocks.

For a row x of D values (statistics and arithmetic in fp32, one rounding to the output dtype at the end)

    n = (x − mean x)·r,  r = (var x + eps)^(−1/2),   y = n·mul + add

with ``mul`` and ``add`` given per (sample, token group): (Bt, G, D), Bt ∈ {1, B}, the S tokens of a sample
split into G equal contiguous groups (G = 1 for Wan's per-sample modulation, the latent frames for
Cosmos-Predict2's per-frame one), or (D,) for a plain affine layer norm. Differentiating,

    tn = r·(tx − mean tx − n·mean(n·tx)),   ty = tn·mul + n·tmul + tadd

(mean(n) = 0, so centring tx inside the last mean is unnecessary). One program per token row; eager
PyTorch spends about a dozen full-size fp32 kernels on the same tangent under forward-mode AD.

The backward, for dy:

    dn = dy·mul,   dx = r·(dn − mean dn − n·mean(dn·n)),   dmul = Σ dy·n,   dadd = Σ dy

the sums over the tokens that share the operand's vector. One program per run of tokens of one group:
it recomputes each row's statistics, writes dx, and keeps its partial sums in registers; the partials of
a group's programs are added in fp32 afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rcm_kernels.triton_common import (
    check_shape_like,
    device_context,
    group_operand,
    group_partials,
    group_run_program,
    group_vector,
    row_launch,
    sum_group_partials,
    token_groups,
    token_row_program,
)


@triton.jit
def _row_stats(X, row, D, eps, offs, mask):
    x = tl.load(X + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(mask, x - mean, 0.0)
    r = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    return xc * r, r


@triton.jit
def _layer_norm_affine_fwd(
    X, MUL, ADD, Y,
    S, D, tokens_per_group, mul_sb, add_sb, eps,
    HAS_MUL: tl.constexpr, HAS_ADD: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    row, b, g, offs, mask = token_row_program(S, tokens_per_group, D, BLOCK_D)
    y, _ = _row_stats(X, row, D, eps, offs, mask)
    if HAS_MUL:
        y = y * group_vector(MUL, b, g, mul_sb, D, offs, mask)
    if HAS_ADD:
        y = y + group_vector(ADD, b, g, add_sb, D, offs, mask)
    tl.store(Y + row * D + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_affine_jvp(
    X, TX, MUL, TMUL, TADD, TY,
    S, D, tokens_per_group, mul_sb, tmul_sb, tadd_sb, eps,
    HAS_TX: tl.constexpr, HAS_MUL: tl.constexpr, HAS_TMUL: tl.constexpr, HAS_TADD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    row, b, g, offs, mask = token_row_program(S, tokens_per_group, D, BLOCK_D)
    n, r = _row_stats(X, row, D, eps, offs, mask)
    ty = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_TX:
        tx = tl.load(TX + row * D + offs, mask=mask, other=0.0).to(tl.float32)
        txc = tl.where(mask, tx - tl.sum(tx, axis=0) / D, 0.0)
        ty = r * (txc - n * (tl.sum(n * txc, axis=0) / D))
        if HAS_MUL:
            ty = ty * group_vector(MUL, b, g, mul_sb, D, offs, mask)
    if HAS_TMUL:
        ty += n * group_vector(TMUL, b, g, tmul_sb, D, offs, mask)
    if HAS_TADD:
        ty += group_vector(TADD, b, g, tadd_sb, D, offs, mask)
    tl.store(TY + row * D + offs, ty.to(TY.dtype.element_ty), mask=mask)


def layer_norm_affine(
    x: Tensor, mul: Tensor | None, add: Tensor | None, eps: float, groups: int = 1, out_dtype: torch.dtype | None = None
) -> Tensor:
    """``LN(x)·mul + add`` for tokens x (B, S, D); see the module docstring for the operand shapes."""
    b, s, d, per_group = token_groups(x, groups)
    x = x.contiguous()
    mul, mul_sb = group_operand(mul, b, groups, d, "mul")
    add, add_sb = group_operand(add, b, groups, d, "add")
    y = torch.empty_like(x, dtype=out_dtype or x.dtype)
    with device_context(x):
        _layer_norm_affine_fwd[(b * s,)](
            x, x if mul is None else mul, x if add is None else add, y,
            s, d, per_group, mul_sb, add_sb, eps,
            HAS_MUL=mul is not None, HAS_ADD=add is not None, **row_launch(d),
        )  # fmt: skip
    return y


def layer_norm_affine_jvp(
    x: Tensor,
    tx: Tensor | None,
    mul: Tensor | None,
    tmul: Tensor | None,
    tadd: Tensor | None,
    eps: float,
    groups: int = 1,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The tangent of :func:`layer_norm_affine` along (tx, tmul, tadd); ``None`` means a zero tangent."""
    b, s, d, per_group = token_groups(x, groups)
    x = x.contiguous()
    check_shape_like("tx", tx, x, "x")
    if tx is not None:
        tx = tx.contiguous()
    mul, mul_sb = group_operand(mul, b, groups, d, "mul")
    tmul, tmul_sb = group_operand(tmul, b, groups, d, "tmul")
    tadd, tadd_sb = group_operand(tadd, b, groups, d, "tadd")
    ty = torch.empty_like(x, dtype=out_dtype or x.dtype)
    with device_context(x):
        _layer_norm_affine_jvp[(b * s,)](
            x, x if tx is None else tx, x if mul is None else mul, x if tmul is None else tmul,
            x if tadd is None else tadd, ty,
            s, d, per_group, mul_sb, tmul_sb, tadd_sb, eps,
            HAS_TX=tx is not None, HAS_MUL=mul is not None, HAS_TMUL=tmul is not None, HAS_TADD=tadd is not None,
            **row_launch(d),
        )  # fmt: skip
    return ty


@triton.jit
def _layer_norm_affine_bwd(
    X, MUL, DY, DX, DMUL, DADD,
    S, D, tokens_per_group, groups, mul_sb, eps, rows_per_program,
    NEED_DX: tl.constexpr, NEED_PARAMS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bg, part, b, g, offs, mask = group_run_program(groups, D, BLOCK_D)
    m = group_vector(MUL, b, g, mul_sb, D, offs, mask)
    dmul = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dadd = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = part * rows_per_program
    for i in range(0, rows_per_program):
        # Rows past the group's end load as zeros (n = 0, dy = 0): they add nothing and store nothing.
        rmask = mask & (start + i + offs * 0 < tokens_per_group)
        row = b * S + g * tokens_per_group + start + i
        n, r = _row_stats(X, row, D, eps, offs, rmask)
        dy = tl.load(DY + row * D + offs, mask=rmask, other=0.0).to(tl.float32)
        if NEED_PARAMS:
            dmul += dy * n
            dadd += dy
        if NEED_DX:
            dn = dy * m
            dx = r * (dn - tl.sum(dn, axis=0) / D - n * (tl.sum(dn * n, axis=0) / D))
            tl.store(DX + row * D + offs, dx.to(DX.dtype.element_ty), mask=rmask)
    if NEED_PARAMS:
        n_parts = tl.num_programs(1).to(tl.int64)
        tl.store(DMUL + (bg * n_parts + part) * D + offs, dmul, mask=mask)
        tl.store(DADD + (bg * n_parts + part) * D + offs, dadd, mask=mask)


def layer_norm_affine_backward(
    x: Tensor,
    mul: Tensor,
    add: Tensor,
    dy: Tensor,
    eps: float,
    groups: int = 1,
    needs: tuple[bool, bool, bool] = (True, True, True),
    rows_per_program: int = 32,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (dx, dmul, dadd) of :func:`layer_norm_affine` for ``dy``; None where ``needs`` says so.

    ``mul`` and ``add`` as there ((D,) or (Bt, G, D)); their gradients come back in their shapes and dtypes.
    """
    b, s, d, per_group = token_groups(x, groups)
    check_shape_like("dy", dy, x, "x")
    x, dy = x.contiguous(), dy.contiguous()
    mul_c, mul_sb = group_operand(mul, b, groups, d, "mul")
    group_operand(add, b, groups, d, "add")
    need_dx, need_params = needs[0], needs[1] or needs[2]
    parts = triton.cdiv(per_group, rows_per_program)
    dx = torch.empty_like(x) if need_dx else x
    dmul, dadd = (group_partials(b, groups, parts if need_params else 0, d, x.device) for _ in range(2))
    with device_context(x):
        _layer_norm_affine_bwd[(b * groups, parts)](
            x, mul_c, dy, dx, dmul, dadd,
            s, d, per_group, groups, mul_sb, eps, rows_per_program,
            NEED_DX=need_dx, NEED_PARAMS=need_params, **row_launch(d),
        )  # fmt: skip
    return (
        dx if need_dx else None,
        sum_group_partials(dmul, b, groups, mul) if needs[1] else None,
        sum_group_partials(dadd, b, groups, add) if needs[2] else None,
    )
