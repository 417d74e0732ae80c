"""Learning-rate schedules of a phase: linear warmup, then constant, linear or cosine decay.

The factor is a pure function of the iteration, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math

import torch


def lr_factor(iteration: int, *, warmup: int, decay: str, total: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total``."""
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (iteration - warmup) / max(1, total - warmup))
    if decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown lr decay {decay!r}")
    return min_ratio + (1.0 - min_ratio) * shape


def apply_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * factor
