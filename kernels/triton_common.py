"""Tile helpers shared by the attention kernels, and how the kernels run on this machine."""

from __future__ import annotations

import contextlib
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


def interpreter_active() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` when the kernels were defined)."""
    return type(dot).__name__ == "InterpretedFunction"


def dot_flags(dtype: torch.dtype) -> dict[str, Any]:
    """Launch constants for :func:`dot`: fp32 inputs get true fp32 products (TF32 would cost three digits)."""
    return {
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        "DOT_UPCAST": interpreter_active() and dtype != torch.float32,
    }


def device_context(t: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Launch on the tensor's GPU (Triton uses the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
