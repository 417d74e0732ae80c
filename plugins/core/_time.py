"""TrigFlow time arithmetic shared by the schedules and time samplers (float64 throughout).

TrigFlow time t ∈ [0, π/2] has ``x_t = cos t·x0 + sin t·ε``; rectified-flow time u ∈ [0, 1] has
``x_u = (1 − u)·x0 + u·ε``. Matching the signal-to-noise ratio, ``tan t = u / (1 − u)``:

    u = sin t / (cos t + sin t),        t = atan2(u, 1 − u).

The Wan-style shift ``u' = shift·u / (1 + (shift − 1)·u)`` multiplies the noise-to-signal ratio by
``shift`` (``u'/(1 − u') = shift·u/(1 − u)``), so in TrigFlow time it is ``tan t' = shift·tan t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HALF_PI = math.pi / 2

#: Drawn TrigFlow times are clamped to [T_EPS, π/2 − T_EPS]: the ends are singular for losses that
#: divide by sin t (critic weighting) or cos t (x0 from velocity); 1e-4 keeps σ = tan t within
#: [1e-4, 1e4] while moving only a negligible share of probability mass.
T_EPS = 1e-4


def as_f64(x: Tensor | float) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def descending_grid(top: float, bottom: float, steps: int) -> Tensor:
    """``steps + 1`` evenly spaced times from ``top`` down to ``bottom`` (a sampler's step grid, unshifted)."""
    if steps < 1:
        raise ValueError(f"time_grid needs steps >= 1, got {steps}")
    return torch.linspace(top, bottom, steps + 1, dtype=torch.float64)


def rf_from_trigflow(t: Tensor) -> Tensor:
    """u = sin t / (cos t + sin t)."""
    t = as_f64(t)
    s, c = torch.sin(t), torch.cos(t)
    return s / (c + s)


def trigflow_from_rf(u: Tensor) -> Tensor:
    """t = atan2(u, 1 − u)."""
    u = as_f64(u)
    return torch.atan2(u, 1.0 - u)


def shift_rf(u: Tensor, shift: float, scale: float = 1.0) -> Tensor:
    """u' = scale·shift·u / (1 + (shift − 1)·u): the Wan-style shift (identity for shift = 1; keeps 0 and 1
    fixed), then scaled so that u = 1 maps to ``scale`` (dCM's grid ends at σ_max/(1 + σ_max)).

    The one place the shift is written: schedules, time samplers, dCM's grid and the teacher ODE samplers
    call it. ``scale·shift`` is formed first, a single rounding, so scaling costs no precision.
    """
    u = as_f64(u)
    if shift == 1.0:
        return u if scale == 1.0 else scale * u
    return scale * shift * u / (1.0 + (shift - 1.0) * u)


def shift_trigflow(t: Tensor, shift: float) -> Tensor:
    """tan t' = shift·tan t, written as atan2(shift·sin t, cos t) so that t = π/2 stays π/2."""
    t = as_f64(t)
    if shift == 1.0:
        return t
    return torch.atan2(shift * torch.sin(t), torch.cos(t))


def clamp_trigflow(t: Tensor) -> Tensor:
    """Clamp into [T_EPS, π/2 − T_EPS], strictly inside (0, π/2)."""
    return as_f64(t).clamp(T_EPS, HALF_PI - T_EPS)


def rand_f64(n: int, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) float64 of shape (n,), drawn on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def randn_f64(n: int, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) float64 of shape (n,), drawn on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(n, generator=generator, device=device, dtype=torch.float64)


def timestep_dtype(data_dtype: torch.dtype) -> torch.dtype:
    """Networks get float64 timesteps for float64 data (exact tests), else float32 (never bf16: at
    ``time_scale`` 1000, bf16 cannot tell neighbouring integer timesteps apart)."""
    return torch.float64 if data_dtype == torch.float64 else torch.float32


def per_sample(coefficient: Tensor, like: Tensor) -> Tensor:
    """A (B,) float64 coefficient as a (B, 1, ..., 1) tensor in ``like``'s dtype and device."""
    shape = (coefficient.shape[0],) + (1,) * (like.dim() - 1)
    return coefficient.reshape(shape).to(device=like.device, dtype=like.dtype)
