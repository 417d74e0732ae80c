"""``vp_eps``: a variance-preserving ε-prediction network (DDPM / Stable Diffusion style) in TrigFlow.

VP noises ``x_τ = √ᾱ(τ)·x0 + √(1 − ᾱ(τ))·ε``. Matching SNR, ``ᾱ/(1 − ᾱ) = cos²t/sin²t``, gives
``ᾱ(τ) = cos²t``: then ``√ᾱ = cos t`` and ``√(1 − ᾱ) = sin t``, so the VP state *is* the TrigFlow
state and the network input is ``x_t`` unchanged. Its time is the τ with ``ᾱ(τ) = cos²t``:

* ``alphas: discrete`` — ``ᾱ_n = Π_{k≤n}(1 − β_k)``, n = 0..N−1, with β linear from ``beta_start`` to
  ``beta_end`` (``beta_schedule: scaled_linear`` makes √β linear instead). τ is the fractional index
  found by linear interpolation of ``ln ᾱ`` between neighbouring n, clamped to [0, N − 1] (outside
  the trained range the nearest trained timestep is used; the TrigFlow coefficients stay exact).
* ``alphas: continuous`` — the VP-SDE with ``β(u) = β_min + u·(β_max − β_min)``, u ∈ [0, 1]:
  ``ln ᾱ(u) = −β_min·u − ½(β_max − β_min)·u²``, solved for u, clamped to [0, 1].

Timestep = ``t_scale·τ``. With ε̂ the network output: ``x0 = (x_t − sin t·ε̂)/cos t`` and
``F = (cos t·x_t − x0)/sin t = (ε̂ − sin t·x_t)/cos t`` (finite at t = 0; ill-conditioned near π/2,
where ε-prediction carries no information about x0).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from rcm_plugins.distill.common import GuidanceConfig, TrigFlowWrapper, expand
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s


@attrs.define
class VpEpsConfig(GuidanceConfig):
    alphas: Literal["discrete", "continuous"] = "discrete"
    #: Discrete schedule: β_0 and β_{N−1}, N, and whether β (linear) or √β (scaled_linear) is linear in n.
    beta_start: float = attrs.field(default=1.0e-4, validator=s.positive)
    beta_end: float = attrs.field(default=0.02, validator=s.in_range(0.0, 1.0, low_open=True, high_open=True))
    num_train_timesteps: int = attrs.field(default=1000, validator=s.in_range(2, 1e9))
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    #: Continuous schedule: β(u) from beta_min to beta_max over u ∈ [0, 1].
    beta_min: float = attrs.field(default=0.1, validator=s.non_negative)
    beta_max: float = attrs.field(default=20.0, validator=s.positive)
    #: Network time = t_scale·τ (τ: fractional index for discrete, u ∈ [0, 1] for continuous).
    t_scale: float = attrs.field(default=1.0, validator=s.positive)

    def __attrs_post_init__(self) -> None:
        if self.alphas == "continuous" and self.beta_max <= self.beta_min:
            raise ValueError(f"beta_max ({self.beta_max}) must be > beta_min ({self.beta_min})")
        if self.alphas == "discrete" and self.beta_end < self.beta_start:
            raise ValueError(f"beta_end ({self.beta_end}) must be >= beta_start ({self.beta_start})")


def discrete_log_alpha_bar(config: VpEpsConfig) -> Tensor:
    """ln ᾱ_n for n = 0..N−1 in float64."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float64)
    else:
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float64) ** 2
    return torch.cumsum(torch.log1p(-betas), dim=0)


class VpEpsTeacher(TrigFlowWrapper):
    """VP ε-prediction network (discrete or continuous ᾱ schedule) read in TrigFlow by SNR matching."""

    def __init__(self, config: VpEpsConfig) -> None:
        super().__init__(guidance=config.guidance, guidance_applies=config.guidance_applies)
        self.config = config
        self._table = discrete_log_alpha_bar(config) if config.alphas == "discrete" else None

    def vp_time(self, t: Tensor) -> Tensor:
        """τ with ᾱ(τ) = cos²t (differentiable in t, also under forward-mode AD)."""
        log_ab = 2.0 * torch.log(torch.cos(t))
        cfg = self.config
        if self._table is None:
            span = cfg.beta_max - cfg.beta_min
            u = (torch.sqrt(cfg.beta_min**2 - 2.0 * span * log_ab) - cfg.beta_min) / span
            return u.clamp(max=1.0)
        table = self._table.to(t.device)
        # Index search on plain values (no tangent); the interpolation below carries the derivative.
        hi = torch.searchsorted(-table, -log_ab.detach()).clamp(1, table.numel() - 1)
        lo_val, hi_val = table[hi - 1], table[hi]
        frac = (lo_val - log_ab) / (lo_val - hi_val)
        return ((hi - 1).to(torch.float64) + frac).clamp(0.0, float(table.numel() - 1))

    def network_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x_t, self.config.t_scale * self.vp_time(t)

    def trigflow_output(self, x_t: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        tt = expand(t, x_t)
        c, s_ = torch.cos(tt), torch.sin(tt)
        return (x_t - s_ * out) / c, (out - s_ * x_t) / c

    def __repr__(self) -> str:
        return f"VpEpsTeacher(alphas={self.config.alphas!r}, guidance={self.config.guidance})"


COMPONENT = rr.Component(kind="teacher", name="vp_eps", factory=VpEpsTeacher, config=VpEpsConfig)
