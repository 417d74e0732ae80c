"""Tile helpers shared by the attention kernels, and how the kernels run on this machine."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Triton's CPU interpreter multiplies bf16 operands as their raw uint16 bits; there (and only there)
    # the operands, already rounded to their storage dtype, are widened to fp32 first.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def load_rows(ptrs, offs_rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, MASK_ROWS: tl.constexpr, MASK_D: tl.constexpr):
    # Masks only where a tile can run past the data: a tail block of rows and padded head dims.
    if MASK_ROWS:
        if MASK_D:
            return tl.load(ptrs, mask=(offs_rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            return tl.load(ptrs, mask=offs_rows[:, None] < n_rows, other=0.0)
    else:
        if MASK_D:
            return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def head_block(n_heads, BLOCK: tl.constexpr):
    # Attention programs over (block of rows, batch·head): the batch·head index, the batch and the head (64-bit:
    # B·H·S·D exceeds 2³¹ elements at video sizes) and the block's row indices.
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    return pid_bh, b, h, pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def head_rows(
    X, b, h, stride_b, stride_h, stride_s, stride_d, offs_s, n, offs_d, HEAD_DIM: tl.constexpr, MASK_D: tl.constexpr
):
    # Rows offs_s of head (b, h) of a strided (B, H, S, D) tensor: their pointers, and the mask of those that
    # exist (rows before n; channels before HEAD_DIM where the block is wider than the head).
    mask = offs_s[:, None] < n
    if MASK_D:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    return X + b * stride_b + h * stride_h + offs_s[:, None] * stride_s + offs_d[None, :] * stride_d, mask


@triton.jit
def load_head_rows(
    X, b, h, stride_b, stride_h, stride_s, stride_d, offs_s, n, offs_d, HEAD_DIM: tl.constexpr, MASK_D: tl.constexpr
):
    # Those rows, with zeros where they do not exist (load_rows builds the same mask again; the copy compiles away).
    ptrs, _ = head_rows(X, b, h, stride_b, stride_h, stride_s, stride_d, offs_s, n, offs_d, HEAD_DIM, MASK_D)
    return load_rows(ptrs, offs_s, n, offs_d, HEAD_DIM, True, MASK_D)


@triton.jit
def token_row_program(S, tokens_per_group, D, BLOCK_D: tl.constexpr):
    # Forward kernels over token rows: program = row of (B·S, D) tokens, its sample and token group, the lanes.
    row = tl.program_id(0).to(tl.int64)
    b, g = row // S, (row % S) // tokens_per_group
    offs = tl.arange(0, BLOCK_D)
    return row, b, g, offs, offs < D


@triton.jit
def group_run_program(groups, D, BLOCK_D: tl.constexpr):
    # Backward kernels over runs of one token group: program (sample·group, run) and the channel lanes.
    bg = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    return bg, part, bg // groups, bg % groups, offs, offs < D


@triton.jit
def group_vector(P, b, g, stride_b, D, offs, mask):
    # One (sample, token group) vector of a per-group operand (modulation, gate), in fp32.
    return tl.load(P + b * stride_b + g * D + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_head_block(
    X, n, n_heads, stride_b, stride_h, stride_n, stride_d,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # The program's block of BLOCK rows of one (batch, head) of a strided (B, H, N, D) tensor, on the grid
    # (blocks of rows, batch·head), in fp32 with zeros past N and D: (bh, rows, cols, mask, block).
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // n_heads, bh % n_heads
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n) & (cols[None, :] < HEAD_DIM)
    ptrs = X + b * stride_b + h * stride_h + rows[:, None].to(tl.int64) * stride_n + cols[None, :] * stride_d
    return bh, rows, cols, mask, tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def round_to_e4m3(x):
    # |x| ≤ 448 to the nearest e4m3 value, ties to even, in fp32 arithmetic that is exact (only powers of two
    # scale), sign kept (−0 too): for Triton's interpreter, whose fp32 → e4m3 cast truncates (it casts e4m3
    # values exactly). e4m3 values are 2^(e−3) apart at exponent e, and the subnormals 2^−9 apart below 2^−6;
    # 1.5·2²³ added and taken away rounds the quotient (below 16) to an integer, ties to even.
    bits = x.to(tl.uint32, bitcast=True)
    a = tl.abs(x)
    e = tl.maximum(((a.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32) - 127, -6)
    spacing = ((e + 124).to(tl.uint32) << 23).to(tl.float32, bitcast=True)
    r = ((a / spacing + 12582912.0) - 12582912.0) * spacing
    return tl.where((bits >> 31) == 1, -r, r)


def interpreter_active() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` when the kernels were defined)."""
    return type(dot).__name__ == "InterpretedFunction"


def require_kernel_device(x: Tensor, kernel: str, otherwise: str = "") -> None:
    """Raise a RuntimeError unless ``kernel`` can run on x's device: CUDA, or the CPU in Triton's interpreter;
    ``otherwise`` names what to use instead there."""
    if x.is_cuda or (x.device.type == "cpu" and interpreter_active()):
        return
    raise RuntimeError(
        f"the {kernel} kernel needs CUDA tensors, got one on {x.device}; on CPU it runs only in Triton's "
        f"interpreter (TRITON_INTERPRET=1 before importing rcm_kernels){otherwise}"
    )


class ScratchAllocator:
    """Triton's launch-time scratch memory from PyTorch's caching allocator, on one device.

    Holds only the device: the allocator stays installed after the call, and capturing a tensor
    would keep its memory alive.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, size: int, _alignment: int, _stream: int | None) -> Tensor:
        return torch.empty(size, dtype=torch.int8, device=self.device)


def tma_loads_possible(q: Tensor, tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether tiles of these (B, H, S, D) tensors can be loaded through tensor descriptors.

    The copy engine needs compute capability 9.0+ (or Triton's interpreter), a contiguous last dim, 16-byte
    aligned addresses and strides, and a block as wide as the head dim (a power of two here).
    """
    # Triton's interpreter emulates descriptors on CPU tensors, so the descriptor code paths run in CPU tests.
    if not interpreter_active() and (not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] < 9):
        return False
    d = q.shape[-1]
    if d != triton.next_power_of_2(d):
        return False
    for t in tensors:
        if t is None:
            continue
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st * size % 16 for st in t.stride()[:-1]):
            return False
    return True


def dot_flags(dtype: torch.dtype) -> dict[str, Any]:
    """Launch constants for :func:`dot`: fp32 inputs get true fp32 products (TF32 would cost three digits)."""
    return {
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        "DOT_UPCAST": interpreter_active() and dtype != torch.float32,
    }


def softmax_scale(scale: float | None, head_dim: int) -> float:
    """The attention score scale: ``scale`` as a float, by default 1/√D."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def head_dim_block(head_dim: int) -> int:
    """BLOCK_D of the attention kernels: the head dim padded to a power of two, at least 16 (the smallest dot)."""
    return max(16, triton.next_power_of_2(head_dim))


def empty_bhsd(b: int, h: int, s: int, d: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A (B, H, S, D) view of a fresh (B, S, H, D) buffer: the layout networks consume without a copy."""
    return torch.empty((b, s, h, d), dtype=dtype, device=device).transpose(1, 2)


def device_context(t: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Launch on the tensor's GPU (Triton uses the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_attention_shapes(q: Tensor, k: Tensor, v: Tensor, min_head_dim: int = 16, max_head_dim: int = 256) -> None:
    """Raise a ValueError naming the shapes unless q, k, v are (B, H, S, D) with one B, H, D and one key length."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected (B, H, S, D) tensors, got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    b, h, _, d = q.shape
    if k.shape[:2] != (b, h) or v.shape[:2] != (b, h) or k.shape[2] != v.shape[2]:
        raise ValueError(f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if k.shape[3] != d or v.shape[3] != d:
        raise ValueError(f"q, k and v need one head dim, got {d}, {k.shape[3]}, {v.shape[3]}")
    if not min_head_dim <= d <= max_head_dim:
        raise ValueError(f"head dim must be in [{min_head_dim}, {max_head_dim}], got {d}")


def check_shape_like(name: str, t: Tensor | None, like: Tensor, like_name: str) -> None:
    """Raise a ValueError naming ``t`` unless it is None or shaped like ``like``."""
    if t is not None and t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, {like_name} {tuple(like.shape)}")


def token_groups(x: Tensor, groups: int) -> tuple[int, int, int, int]:
    """(B, S, D, S/G) of tokens x split into ``groups`` equal runs of consecutive tokens per sample."""
    if x.dim() != 3:
        raise ValueError(f"expected tokens (B, S, D), got shape {tuple(x.shape)}")
    b, s, d = x.shape
    if groups < 1 or s % groups:
        raise ValueError(f"{s} tokens cannot be split into {groups} equal groups")
    return b, s, d, s // groups


def group_operand(t: Tensor | None, batch: int, groups: int, dim: int, name: str) -> tuple[Tensor | None, int]:
    """A per-(sample, token group) operand as a contiguous (Bt, G, D) tensor and its batch stride.

    Accepts (D,) (one vector for all tokens) or (Bt, G, D) with Bt ∈ {1, batch}; the batch stride is 0
    when one row serves the whole batch. Row kernels find a token's vector at ``b·stride + g·D``.
    """
    if t is None:
        return None, 0
    if t.dim() == 1:
        t = t.view(1, 1, -1)
    if t.dim() != 3 or t.shape[0] not in (1, batch) or t.shape[1] != groups or t.shape[2] != dim:
        raise ValueError(f"{name} must be ({dim},) or (1 or {batch}, {groups}, {dim}), got {tuple(t.shape)}")
    t = t.contiguous()
    return t, 0 if t.shape[0] == 1 else groups * dim


def row_launch(dim: int) -> dict[str, int]:
    """Block and warp count for kernels that keep one token row of ``dim`` values in registers."""
    block = triton.next_power_of_2(dim)
    return {"BLOCK_D": block, "num_warps": max(1, min(16, block // 256))}


def group_partials(batch: int, groups: int, parts: int, dim: int, device: torch.device) -> Tensor:
    """An fp32 buffer for per-program partial sums of a per-(sample, group) operand's gradient: (B·G, P, D)."""
    return torch.empty((batch * groups, parts, dim), dtype=torch.float32, device=device)


def sum_group_partials(partial: Tensor, batch: int, groups: int, like: Tensor) -> Tensor:
    """The partial sums of :func:`group_partials` added up into the gradient of ``like``: (D,) or (Bt, G, D)
    as :func:`group_operand` accepts it, in ``like``'s dtype."""
    total = partial.sum(1).view(batch, groups, -1)
    if like.dim() == 1:
        return total.sum((0, 1)).to(like.dtype)
    if like.shape[0] == 1:
        total = total.sum(0, keepdim=True)
    return total.to(like.dtype)
