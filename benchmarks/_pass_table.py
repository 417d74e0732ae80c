"""The pass table that wan_step.py and cosmos_step.py print: each pass with eager and with fused token ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from rcm_plugins.common.fused_ops import fused_kernels
from rcm_plugins.common.layers import generic_linear_jvp

import rcm_registry as rr

Timer = Callable[[Callable[[], Any]], tuple[float, float | None]]

HEADER = [
    "| pass | eager token ops: ms | peak GiB | fused token ops: ms | peak GiB |",
    "|---|---:|---:|---:|---:|",
]


def _cell(fn: Callable[[], Any], timer: Timer) -> str:
    try:
        ms, peak = timer(fn)
        return f"{ms:.1f} | {'–' if peak is None else f'{peak:.2f}'}"
    except torch.cuda.OutOfMemoryError:
        return "out of memory | –"
    except rr.UserError as exc:  # e.g. a backend without forward-mode AD asked for a JVP
        return f"not supported: {str(exc).splitlines()[0][:80]} | –"


def generic_linear(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with PyTorch's forward-mode rule for linear layers (two matmuls a tangent), for comparison."""

    def run() -> Any:
        with generic_linear_jvp():
            return fn()

    return run


GENERIC_LINEAR_ROW = "JVP, PyTorch's linear tangent rule (a second matmul against zero weights' tangent)"


def pass_rows(passes: list[tuple[str, Callable[[], Any]]], timer: Timer, net: Any) -> list[str]:
    """One row per pass: timed with the token-wise ops as eager PyTorch, then as the fused Triton kernels."""
    rows = []
    for name, fn in passes:
        cells = []
        for fused in (False, True):
            with fused_kernels(fused):
                cells.append(_cell(fn, timer))
            net.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        rows.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return rows
