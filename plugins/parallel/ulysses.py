"""Ulysses context parallelism: tokens spread over a group of ranks, attention through all-to-all.

Every rank of a context-parallel (CP) group of size P holds one contiguous chunk of S/P tokens of the
same samples. Everything per token (projections, norms, the FFN, RoPE) runs on the local chunk. For
self-attention, an all-to-all turns sequence-sharded q/k/v (B, H, S/P, D) into head-sharded ones
(B, H/P, S, D), so each rank attends over the whole sequence for H/P heads, and a second all-to-all
turns the output back (Jacobs et al., "DeepSpeed Ulysses", arXiv 2309.14509). Cross-attention to
text tokens needs none: the keys are whole on every rank and queries are independent of each other.

Forward-mode AD (the JVP of sCM): collectives have no forward-AD rule, so dual inputs are unpacked,
primal and tangent travel in the same all-to-all (stacked along the batch), the inner backend gets
re-made duals (so a fused JVP kernel still sees primal and tangent together), and the output is
unpacked, sent back and re-wrapped. The primal path keeps its autograd graph: the all-to-all is an
autograd function whose backward is the inverse all-to-all.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import forward_ad

from rcm_registry.errors import UserError


class ContextParallelError(UserError, ValueError):
    """A shape that the context-parallel group cannot split evenly."""


def _all_to_all(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """Chunk i of dim 0 goes to rank i; the result's chunk i came from rank i."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x: Tensor, size: int, group: dist.ProcessGroup) -> Tensor:
    """(N, H, S/P, D) → (N, H/P, S, D): send head group j to rank j, receive every rank's sequence chunk."""
    n, h, s, d = x.shape
    parts = x.reshape(n, size, h // size, s, d).permute(1, 0, 2, 3, 4)
    got = _all_to_all(parts, group)  # (P: source rank = sequence chunk, N, H/P, S/P, D)
    return got.permute(1, 2, 0, 3, 4).reshape(n, h // size, size * s, d)


def _heads_to_seq(x: Tensor, size: int, group: dist.ProcessGroup) -> Tensor:
    """(N, H/P, S, D) → (N, H, S/P, D): the inverse of :func:`_seq_to_heads`."""
    n, hp, s, d = x.shape
    parts = x.reshape(n, hp, size, s // size, d).permute(2, 0, 1, 3, 4)
    got = _all_to_all(parts, group)  # (P: source rank = head group, N, H/P, S/P, D)
    return got.permute(1, 0, 2, 3, 4).reshape(n, size * hp, s // size, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, group: dist.ProcessGroup) -> Tensor:
        ctx.size, ctx.group = size, group
        return _seq_to_heads(x, size, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return _heads_to_seq(grad, ctx.size, ctx.group), None, None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, group: dist.ProcessGroup) -> Tensor:
        ctx.size, ctx.group = size, group
        return _heads_to_seq(x, size, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return _seq_to_heads(grad, ctx.size, ctx.group), None, None


class _Gather(torch.autograd.Function):
    """All-gather along ``dim``; the backward is the matching reduce-scatter (sum), its exact adjoint."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int, size: int, rank: int, group: dist.ProcessGroup) -> Tensor:
        ctx.dim, ctx.size, ctx.rank, ctx.group = dim, size, rank, group
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # Sum over ranks, each keeping its own chunk. gloo has no reduce_scatter, so all-reduce the
        # whole (small: the network's output) gradient and slice.
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.size, dim=ctx.dim)[ctx.rank].contiguous(), None, None, None, None


def _unpack(x: Tensor) -> tuple[Tensor, Tensor | None]:
    u = forward_ad.unpack_dual(x)
    return u.primal, u.tangent


class UlyssesSequenceParallel:
    """The ``sequence_parallel`` object a context-parallel network calls (see ``protocols.SequenceParallel``).

    Args:
        group: the context-parallel process group (ranks holding chunks of the same samples).
    """

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    # -- tokens ------------------------------------------------------------------------------------
    def split(self, x: Tensor, dim: int) -> Tensor:
        """This rank's contiguous chunk of ``x`` along ``dim`` (slicing keeps duals and autograd)."""
        n = x.shape[dim]
        if n % self.size:
            raise ContextParallelError(
                f"context parallel size {self.size} does not divide the sequence length {n} (tokens after "
                f"patch embedding): choose a latent size whose token count is a multiple of {self.size}, "
                "or a context_parallel size that divides it"
            )
        return x.narrow(dim, self.rank * (n // self.size), n // self.size)

    def gather(self, x: Tensor, dim: int) -> Tensor:
        """All chunks of ``x`` concatenated along ``dim``, on every rank; duals keep their tangent."""
        primal, tangent = _unpack(x)
        if tangent is None:
            return _Gather.apply(primal, dim, self.size, self.rank, self.group)
        # Stacked on a new leading dim, primal and tangent travel in one all-gather.
        both = _Gather.apply(torch.stack((primal, tangent)), dim % x.dim() + 1, self.size, self.rank, self.group)
        return forward_ad.make_dual(both[0], both[1])

    # -- attention ---------------------------------------------------------------------------------
    def attention(self, inner: Any) -> UlyssesAttention:
        """``inner`` (an attention backend) for self-attention over sequence-sharded q/k/v."""
        return UlyssesAttention(inner, self)

    def __repr__(self) -> str:
        return f"UlyssesSequenceParallel(size={self.size}, rank={self.rank})"


class UlyssesAttention:
    """An attention backend wrapped in the Ulysses all-to-alls; q/k/v are (B, H, S/P, D) chunks."""

    def __init__(self, inner: Any, sp: UlyssesSequenceParallel) -> None:
        self.inner = inner
        self.sp = sp

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        size, group = self.sp.size, self.sp.group
        heads = q.shape[1]
        if heads % size or k.shape[1] % size:
            raise ContextParallelError(
                f"context parallel size {size} does not divide the number of attention heads {heads}"
            )
        unpacked = [_unpack(t) for t in (q, k, v)]
        dual = any(t is not None for _, t in unpacked)
        b = q.shape[0]
        if not dual:
            # One all-to-all for q, k and v together (same shapes in self-attention).
            qkv = _SeqToHeads.apply(torch.cat((q, k, v), dim=0), size, group)
            out = self.inner(*qkv.split(b, dim=0), scale=scale)
            return _HeadsToSeq.apply(out, size, group)
        # Primal and tangent move in the same all-to-all; a missing tangent is a zero one.
        primals = [p for p, _ in unpacked]
        tangents = [t if t is not None else torch.zeros_like(p) for p, t in unpacked]
        moved = _SeqToHeads.apply(torch.cat((*primals, *tangents), dim=0), size, group).split(b, dim=0)
        q2, k2, v2 = (forward_ad.make_dual(p, t) for p, t in zip(moved[:3], moved[3:], strict=True))
        o_primal, o_tangent = _unpack(self.inner(q2, k2, v2, scale=scale))
        if o_tangent is None:
            o_tangent = torch.zeros_like(o_primal)
        back = _HeadsToSeq.apply(torch.cat((o_primal, o_tangent), dim=0), size, group)
        o, to = back.split(b, dim=0)
        return forward_ad.make_dual(o, to)

    def __repr__(self) -> str:
        return f"Ulysses({self.inner!r}, size={self.sp.size})"
