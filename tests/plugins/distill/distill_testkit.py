"""Hand-written TrigFlow formulas for the distill tests (the tiny networks, fixed time samplers and step
contexts they run on are the public ones of ``rcm_registry.testing.fixtures``).

The reference formulas here are written from the math (DESIGN.md, "The math") in their textbook form,
not in the rearranged forms the components use, so a test compares two independent derivations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def col(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def rf_reference(net: nn.Module, x_t: Tensor, t: Tensor, cond: dict, t_scale: float = 1000.0) -> tuple[Tensor, Tensor]:
    """DESIGN.md's rectified-flow wrapping, literally: s, c_in, x0 = c_in·x_t − s·v, F = (cos t·x_t − x0)/sin t."""
    c, s = torch.cos(col(t, x_t)), torch.sin(col(t, x_t))
    s_rf = s / (c + s)
    c_in = 1.0 / (c + s)
    v = net(c_in * x_t, t_scale * (torch.sin(t) / (torch.cos(t) + torch.sin(t))), **cond)
    x0 = c_in * x_t - s_rf * v
    F = (c * x_t - x0) / s
    return x0, F


def rf_reference_cfg(net: nn.Module, x_t: Tensor, t: Tensor, cond: dict, null: dict, w: float) -> tuple[Tensor, Tensor]:
    """CFG in F: F = F_u + w·(F_c − F_u); x0 from F."""
    _, F_c = rf_reference(net, x_t, t, cond)
    _, F_u = rf_reference(net, x_t, t, null)
    F = F_u + w * (F_c - F_u)
    return torch.cos(col(t, x_t)) * x_t - torch.sin(col(t, x_t)) * F, F


def assert_close(a: Tensor, b: Tensor, rel: float, what: str = "") -> None:
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1e-30)
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} vs scale {scale:.3e} (rel {err / scale:.3e} > {rel})"
