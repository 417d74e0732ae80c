"""The gated residual add of DiT blocks, ``y = x + a·gate``, and its tangent ``tx + ta·gate + a·tgate``.

x and a are tokens (B, S, D) in the network's dtype; gate is given per (sample, token group) as in
:mod:`rcm_kernels.layer_norm_affine`. Arithmetic in fp32, one rounding to x's dtype, which is what the
reference networks do with their explicit float32 casts, in one kernel instead of five (seven more for the
tangent under forward-mode AD).

Backward for dy: dx = dy, da = dy·gate, dgate = Σ dy·a over the tokens that share the gate's vector; one
program per run of tokens of a group, partial sums added in fp32 afterwards (as the layer norm's).
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
def _gated_residual(
    X, A, GATE, TX, TA, TGATE, Y,
    S, D, tokens_per_group, gate_sb, tgate_sb,
    HAS_X: tl.constexpr, HAS_A: tl.constexpr, HAS_TX: tl.constexpr, HAS_TA: tl.constexpr,
    HAS_TGATE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Primal: HAS_X and HAS_A. Tangent: whichever of TX, TA (times GATE) and TGATE (times A) are present.
    row, b, g, offs, mask = token_row_program(S, tokens_per_group, D, BLOCK_D)
    y = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_X:
        y += tl.load(X + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_TX:
        y += tl.load(TX + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_TA:
        gate = group_vector(GATE, b, g, gate_sb, D, offs, mask)
        y += tl.load(TA + row * D + offs, mask=mask, other=0.0).to(tl.float32) * gate
    if HAS_A:
        a = tl.load(A + row * D + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_TGATE:
            y += a * group_vector(TGATE, b, g, tgate_sb, D, offs, mask)
        else:
            y += a * group_vector(GATE, b, g, gate_sb, D, offs, mask)
    tl.store(Y + row * D + offs, y.to(Y.dtype.element_ty), mask=mask)


def _launch(
    x: Tensor, a: Tensor | None, gate: Tensor, tx: Tensor | None, ta: Tensor | None, tgate: Tensor | None,
    groups: int, *, primal: bool,
) -> Tensor:  # fmt: skip
    b, s, d, per_group = token_groups(x, groups)
    for name, t in (("a", a), ("tx", tx), ("ta", ta)):
        check_shape_like(name, t, x, "x")
    gate, gate_sb = group_operand(gate, b, groups, d, "gate")
    tgate, tgate_sb = group_operand(tgate, b, groups, d, "tgate")
    out_dtype = x.dtype
    x, a, tx, ta = (None if t is None else t.contiguous() for t in (x if primal else None, a, tx, ta))
    ref = next(t for t in (x, a, tx, ta) if t is not None)
    y = torch.empty(b, s, d, dtype=out_dtype, device=ref.device)
    with device_context(ref):
        _gated_residual[(b * s,)](
            ref if x is None else x, ref if a is None else a, gate, ref if tx is None else tx,
            ref if ta is None else ta, gate if tgate is None else tgate, y,
            s, d, per_group, gate_sb, tgate_sb,
            HAS_X=x is not None, HAS_A=a is not None and (primal or tgate is not None), HAS_TX=tx is not None,
            HAS_TA=ta is not None, HAS_TGATE=tgate is not None, **row_launch(d),
        )  # fmt: skip
    return y


def gated_residual(x: Tensor, a: Tensor, gate: Tensor, groups: int = 1) -> Tensor:
    """``x + a·gate`` in fp32, rounded to x's dtype."""
    return _launch(x, a, gate, None, None, None, groups, primal=True)


def gated_residual_jvp(
    x: Tensor,
    a: Tensor,
    gate: Tensor,
    tx: Tensor | None,
    ta: Tensor | None,
    tgate: Tensor | None,
    groups: int = 1,
) -> Tensor:
    """``tx + ta·gate + a·tgate`` (``None`` tangents are zero), rounded to x's dtype."""
    if tx is None and ta is None and tgate is None:
        return torch.zeros_like(x)
    return _launch(x, a, gate, tx, ta, tgate, groups, primal=False)


@triton.jit
def _gated_residual_bwd(
    DY, A, GATE, DA, DGATE,
    S, D, tokens_per_group, groups, gate_sb, rows_per_program,
    NEED_DA: tl.constexpr, NEED_DGATE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bg, part, b, g, offs, mask = group_run_program(groups, D, BLOCK_D)
    gate = group_vector(GATE, b, g, gate_sb, D, offs, mask)
    dgate = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = part * rows_per_program
    for i in range(0, rows_per_program):
        rmask = mask & (start + i + offs * 0 < tokens_per_group)
        row = b * S + g * tokens_per_group + start + i
        dy = tl.load(DY + row * D + offs, mask=rmask, other=0.0).to(tl.float32)
        if NEED_DA:
            tl.store(DA + row * D + offs, (dy * gate).to(DA.dtype.element_ty), mask=rmask)
        if NEED_DGATE:
            dgate += dy * tl.load(A + row * D + offs, mask=rmask, other=0.0).to(tl.float32)
    if NEED_DGATE:
        tl.store(DGATE + (bg * tl.num_programs(1).to(tl.int64) + part) * D + offs, dgate, mask=mask)


def gated_residual_backward(
    a: Tensor,
    gate: Tensor,
    dy: Tensor,
    groups: int = 1,
    needs: tuple[bool, bool, bool] = (True, True, True),
    rows_per_program: int = 32,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients (dx, da, dgate) of :func:`gated_residual` for ``dy`` (x's dtype); None where ``needs`` says.

    dx is ``dy`` itself (the residual passes it through unchanged); dgate comes back in gate's shape and dtype.
    """
    b, s, d, per_group = token_groups(dy, groups)
    check_shape_like("a", a, dy, "dy")
    dy, a = dy.contiguous(), a.contiguous()
    gate_c, gate_sb = group_operand(gate, b, groups, d, "gate")
    need_da, need_dgate = needs[1], needs[2]
    if not (need_da or need_dgate):
        return (dy if needs[0] else None), None, None
    parts = triton.cdiv(per_group, rows_per_program)
    da = torch.empty_like(a) if need_da else a
    dgate = group_partials(b, groups, parts if need_dgate else 0, d, dy.device)
    with device_context(dy):
        _gated_residual_bwd[(b * groups, parts)](
            dy, a, gate_c, da, dgate,
            s, d, per_group, groups, gate_sb, rows_per_program,
            NEED_DA=need_da, NEED_DGATE=need_dgate, **row_launch(d),
        )  # fmt: skip
    return (
        dy if needs[0] else None,
        da if need_da else None,
        sum_group_partials(dgate, b, groups, gate) if need_dgate else None,
    )
