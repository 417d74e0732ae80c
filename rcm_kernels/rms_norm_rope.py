"""RMS norm of the query/key projections followed by rotary position embedding, and its tangent.

For a token row of H heads × D channels (statistics and arithmetic in fp32)

    n = x·r,  r = (mean x² + eps)^(−1/2)      (mean over the whole row, or per head)
    y = round(n·w)                            (the norm's output in the network's dtype)
    out = rotate(y)                           (pairs (y₁, y₂) ↦ (y₁c − y₂s, y₁s + y₂c), rounded)

and along a tangent tx, ``tn = r·(tx − n·mean(n·tx))`` goes through the same weight, rounding and rotation
(RoPE is linear). Pairs are adjacent channels (2i, 2i+1) for Wan2.1, or channels (i, i + D/2) for
Cosmos-Predict2 ("rotate half"); cos and sin are per token, (S, D/2), shared by the heads. Without
tables the kernel is a plain RMS norm (the cross-attention queries and keys).

The rounding between norm and rotation repeats what the reference networks do (an RMSNorm module returning
the network's dtype, then RoPE computed in float32), so the fused result equals theirs to the last bit
whenever fp32 arithmetic agrees.

The backward rotates the output gradient back (the transpose of a rotation is the rotation by −θ), rounds
it to the norm output's dtype as the reference's casts do, and then, with dn = dy·w,
``dx = r·(dn − n·mean(dn·n))`` and ``dw = Σ dy·n`` over the tokens (and the heads, for a per-head weight).
One program per run of token rows keeps its part of dw in registers; the parts are added in fp32 after.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rcm_kernels.triton_common import check_shape_like, device_context


@triton.jit
def _split_pairs(t, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr):
    # A (BLOCK_H, 2·BLOCK_P) tile laid out as _channels says → the two members of each rotation pair.
    if INTERLEAVED:
        return tl.split(tl.reshape(t, (BLOCK_H, BLOCK_P, 2)))
    else:
        return tl.split(tl.permute(tl.reshape(t, (BLOCK_H, 2, BLOCK_P)), (0, 2, 1)))


@triton.jit
def _join_pairs(a, b, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr):
    if INTERLEAVED:
        return tl.reshape(tl.join(a, b), (BLOCK_H, 2 * BLOCK_P))
    else:
        return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (BLOCK_H, 2 * BLOCK_P))


@triton.jit
def _channels(H, HEAD_DIM, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr):
    # The layout of a (BLOCK_H, 2·BLOCK_P) tile of a token row: column c holds channel c of each head
    # (interleaved pairs), or channel (c // BLOCK_P)·D/2 + c % BLOCK_P (halves), so that the tile reshapes
    # exactly into pairs even when D/2 is not a power of two. Returns the heads (a column), each column's
    # channel and mask, and the tile's mask and offsets in the row.
    pairs = HEAD_DIM // 2
    h = tl.arange(0, BLOCK_H)[:, None]
    c = tl.arange(0, 2 * BLOCK_P)
    if INTERLEAVED:
        ch = c
        col_mask = c < HEAD_DIM
    else:
        ch = (c // BLOCK_P) * pairs + c % BLOCK_P
        col_mask = c % BLOCK_P < pairs
    mask = (h < H) & col_mask[None, :]
    return h, ch, col_mask, mask, h * HEAD_DIM + ch[None, :]


@triton.jit
def _weight(W, ch, offs, mask, W_PER_HEAD: tl.constexpr):
    # The norm's weight as a tile, in fp32: one (D,) vector for every head, or (H·D,) laid out like the row.
    if W_PER_HEAD:
        return tl.load(W + ch[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        return tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rope_tables(COS, SIN, row, S, pairs, BLOCK_P: tl.constexpr):
    # The token's (cos, sin) rows, (1, BLOCK_P) each in fp32, shared by the heads.
    p = tl.arange(0, BLOCK_P)[None, :]
    s = row % S
    cs = tl.load(COS + s * pairs + p, mask=p < pairs, other=0.0).to(tl.float32)
    sn = tl.load(SIN + s * pairs + p, mask=p < pairs, other=0.0).to(tl.float32)
    return cs, sn


@triton.jit
def _stat_mean(t, H, HEAD_DIM, PER_HEAD: tl.constexpr):
    # The mean of a (heads, channels) tile over the norm's statistics: each head's row, or the whole tile.
    if PER_HEAD:
        return (tl.sum(t, axis=1) / HEAD_DIM)[:, None]
    else:
        return tl.sum(tl.sum(t, axis=1), axis=0) / (H * HEAD_DIM)


@triton.jit
def _normalised(X, row, offs, mask, H, HEAD_DIM, eps, PER_HEAD: tl.constexpr):
    # A token row's tile normalised in fp32, n = x·r, and r.
    x = tl.load(X + row * H * HEAD_DIM + offs, mask=mask, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt(_stat_mean(x * x, H, HEAD_DIM, PER_HEAD) + eps)
    return x * r, r


@triton.jit
def _rms_norm_rope(
    X, TX, W, COS, SIN, Y,
    S, H, HEAD_DIM, eps,
    TANGENT: tl.constexpr, PER_HEAD: tl.constexpr, W_PER_HEAD: tl.constexpr, ROPE: tl.constexpr,
    INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    # Whole rows are loaded contiguously and split into pair members in registers (strided loads of every
    # other bf16 channel would run at a fraction of the bandwidth); the tiles are laid out as _channels says.
    row = tl.program_id(0).to(tl.int64)
    pairs = HEAD_DIM // 2
    _, ch, _, mask, offs = _channels(H, HEAD_DIM, BLOCK_H, BLOCK_P, INTERLEAVED)
    v, r = _normalised(X, row, offs, mask, H, HEAD_DIM, eps, PER_HEAD)
    if TANGENT:
        t = tl.load(TX + row * H * HEAD_DIM + offs, mask=mask, other=0.0).to(tl.float32)
        v = r * (t - v * _stat_mean(v * t, H, HEAD_DIM, PER_HEAD))
    w = _weight(W, ch, offs, mask, W_PER_HEAD)
    out_ty = Y.dtype.element_ty
    y = (v * w).to(out_ty)
    if ROPE:
        cs, sn = _rope_tables(COS, SIN, row, S, pairs, BLOCK_P)
        y1, y2 = _split_pairs(y.to(tl.float32), BLOCK_H, BLOCK_P, INTERLEAVED)
        y = _join_pairs(y1 * cs - y2 * sn, y1 * sn + y2 * cs, BLOCK_H, BLOCK_P, INTERLEAVED).to(out_ty)
    tl.store(Y + row * H * HEAD_DIM + offs, y, mask=mask)


def _checked_tables(
    x: Tensor, other: tuple[str, Tensor | None], weight: Tensor, rope: tuple[Tensor, Tensor] | None
) -> tuple[Tensor | None, Tensor | None]:
    """Check the operands' shapes (``other``: a tangent or gradient shaped like x); the tables as (S, D/2)."""
    if x.dim() != 4:
        raise ValueError(f"expected (B, S, H, D) query or key heads, got shape {tuple(x.shape)}")
    _, s, h, d = x.shape
    if d % 2:
        raise ValueError(f"head dim must be even, got {d}")
    if weight.shape not in ((d,), (h * d,)):
        raise ValueError(f"weight must be ({d},) or ({h * d},), got {tuple(weight.shape)}")
    check_shape_like(*other, x, "x")
    if rope is None:
        return None, None
    cos, sin = (t.reshape(t.shape[0], -1).contiguous() for t in rope)
    if cos.shape != (s, d // 2) or sin.shape != (s, d // 2):
        raise ValueError(f"rope tables must hold ({s}, {d // 2}) values, got {tuple(rope[0].shape)}")
    return cos, sin


def _tile_launch(heads: int, head_dim: int) -> dict[str, int]:
    """Tile sizes and warp count for kernels that keep one token row of ``heads`` × ``head_dim`` in registers."""
    block_h, block_p = max(2, triton.next_power_of_2(heads)), max(2, triton.next_power_of_2(head_dim // 2))
    return {"BLOCK_H": block_h, "BLOCK_P": block_p, "num_warps": max(1, min(16, block_h * block_p // 128))}


def _launch(
    x: Tensor, tx: Tensor | None, weight: Tensor, rope: tuple[Tensor, Tensor] | None, eps: float, *,
    per_head: bool, interleaved: bool,
) -> Tensor:  # fmt: skip
    cos, sin = _checked_tables(x, ("tx", tx), weight, rope)
    b, s, h, d = x.shape
    x = x.contiguous()
    y = torch.empty_like(x)
    with device_context(x):
        _rms_norm_rope[(b * s,)](
            x, x if tx is None else tx.contiguous(), weight.contiguous(), x if cos is None else cos,
            x if sin is None else sin, y,
            s, h, d, eps,
            TANGENT=tx is not None, PER_HEAD=per_head, W_PER_HEAD=weight.numel() == d, ROPE=rope is not None,
            INTERLEAVED=interleaved, **_tile_launch(h, d),
        )  # fmt: skip
    return y


def rms_norm_rope(
    x: Tensor, weight: Tensor, rope: tuple[Tensor, Tensor] | None, eps: float, *, per_head: bool, interleaved: bool
) -> Tensor:
    """RMS-normalise heads x (B, S, H, D) (over all heads, or ``per_head``), scale by weight, rotate."""
    return _launch(x, None, weight, rope, eps, per_head=per_head, interleaved=interleaved)


def rms_norm_rope_jvp(
    x: Tensor,
    tx: Tensor,
    weight: Tensor,
    rope: tuple[Tensor, Tensor] | None,
    eps: float,
    *,
    per_head: bool,
    interleaved: bool,
) -> Tensor:
    """The tangent of :func:`rms_norm_rope` along tx (the weight and the tables carry no tangent)."""
    return _launch(x, tx, weight, rope, eps, per_head=per_head, interleaved=interleaved)


@triton.jit
def _rms_norm_rope_bwd(
    X, W, COS, SIN, DOUT, DX, DW,
    N_ROWS, S, H, HEAD_DIM, eps, rows_per_program,
    NEED_DX: tl.constexpr, NEED_DW: tl.constexpr, PER_HEAD: tl.constexpr, W_PER_HEAD: tl.constexpr,
    ROPE: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    # Tiles as in _rms_norm_rope (pairs split in registers).
    part = tl.program_id(0).to(tl.int64)
    pairs = HEAD_DIM // 2
    h, ch, col_mask, mask, offs = _channels(H, HEAD_DIM, BLOCK_H, BLOCK_P, INTERLEAVED)
    w = _weight(W, ch, offs, mask, W_PER_HEAD)
    acc = tl.zeros((BLOCK_H, 2 * BLOCK_P), dtype=tl.float32)
    for i in range(0, rows_per_program):
        row = part * rows_per_program + i
        rmask = mask & (h * 0 + row < N_ROWS)
        n, r = _normalised(X, row, offs, rmask, H, HEAD_DIM, eps, PER_HEAD)
        g = tl.load(DOUT + row * H * HEAD_DIM + offs, mask=rmask, other=0.0).to(tl.float32)
        if ROPE:
            cs, sn = _rope_tables(COS, SIN, row, S, pairs, BLOCK_P)
            g1, g2 = _split_pairs(g, BLOCK_H, BLOCK_P, INTERLEAVED)
            g = _join_pairs(g1 * cs + g2 * sn, g2 * cs - g1 * sn, BLOCK_H, BLOCK_P, INTERLEAVED)
            # The reference rotates the norm's rounded output, so its gradient reaches the norm rounded.
            g = g.to(X.dtype.element_ty).to(tl.float32)
        if NEED_DW:
            acc += g * n
        if NEED_DX:
            dn = g * w
            dx = r * (dn - n * _stat_mean(dn * n, H, HEAD_DIM, PER_HEAD))
            tl.store(DX + row * H * HEAD_DIM + offs, dx.to(DX.dtype.element_ty), mask=rmask)
    if NEED_DW:
        if W_PER_HEAD:
            tl.store(DW + part * HEAD_DIM + ch, tl.sum(acc, axis=0), mask=col_mask)
        else:
            tl.store(DW + part * H * HEAD_DIM + offs, acc, mask=mask)


def rms_norm_rope_backward(
    x: Tensor,
    weight: Tensor,
    rope: tuple[Tensor, Tensor] | None,
    dy: Tensor,
    eps: float,
    *,
    per_head: bool,
    interleaved: bool,
    needs: tuple[bool, bool] = (True, True),
    rows_per_program: int = 16,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients (dx, dweight) of :func:`rms_norm_rope` for ``dy``; None where ``needs`` says so."""
    cos, sin = _checked_tables(x, ("dy", dy), weight, rope)
    b, s, h, d = x.shape
    x, dy = x.contiguous(), dy.contiguous()
    need_dx, need_dw = needs
    rows = b * s
    parts = triton.cdiv(rows, rows_per_program)
    dx = torch.empty_like(x) if need_dx else x
    dw = torch.empty((parts if need_dw else 0, weight.numel()), dtype=torch.float32, device=x.device)
    with device_context(x):
        _rms_norm_rope_bwd[(parts,)](
            x, weight.contiguous(), x if cos is None else cos, x if sin is None else sin, dy, dx, dw,
            rows, s, h, d, eps, rows_per_program,
            NEED_DX=need_dx, NEED_DW=need_dw, PER_HEAD=per_head, W_PER_HEAD=weight.numel() == d,
            ROPE=rope is not None, INTERLEAVED=interleaved, **_tile_launch(h, d),
        )  # fmt: skip
    return (dx if need_dx else None), (dw.sum(0).to(weight.dtype).view_as(weight) if need_dw else None)
