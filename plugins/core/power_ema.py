"""``power``: the EDM2 power-function EMA, parameterised by its relative standard deviation."""

from __future__ import annotations

import math

import attrs
import numpy as np
from rcm_plugins.core._ema import ShadowAverager
from torch import nn

import rcm_registry as rr
from rcm_registry import schema

#: γ > 0 needs σ_rel < 1/√12 (the cubic's constant term 12 − σ_rel⁻² must be negative).
MAX_RATE = 1.0 / math.sqrt(12.0)


def power_exponent(rate: float) -> float:
    """γ: the largest real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0 (EDM2, eq. 3).

    The EMA with β_i = (1 − 1/(i+1))^(γ+1) averages θ with weights ∝ step^γ, whose width relative
    to the training length is σ_rel² = (γ + 1) / ((γ + 2)²(γ + 3)).
    """
    k = rate**-2
    roots = np.roots([1.0, 7.0, 16.0 - k, 12.0 - k])
    real = roots[np.abs(roots.imag) <= 1e-9 * np.maximum(1.0, np.abs(roots.real))].real
    return float(real.max())


def power_beta(step: int, gamma: float) -> float:
    """β at update ``step`` (from 0): (1 − 1/(step + 1))^(γ + 1); 0 at the first update."""
    return (1.0 - 1.0 / (step + 1)) ** (gamma + 1.0)


@attrs.define
class PowerEmaConfig:
    #: σ_rel: the averaging window's standard deviation relative to the training length so far.
    rate: float = attrs.field(default=0.1, validator=schema.in_range(0.0, MAX_RATE, low_open=True, high_open=True))


class PowerEma:
    """EDM2 power EMA: ema ← β·ema + (1 − β)·θ with β = (1 − 1/(i+1))^(γ+1), γ from σ_rel."""

    def __init__(self, config: PowerEmaConfig) -> None:
        self.config = config
        self.gamma = power_exponent(config.rate)

    def __call__(self, module: nn.Module) -> ShadowAverager:
        gamma = self.gamma
        return ShadowAverager(module, lambda step: power_beta(step, gamma))

    def __repr__(self) -> str:
        return f"PowerEma(rate={self.config.rate}, gamma={self.gamma:.6g})"


COMPONENT = rr.Component(kind="ema", name="power", factory=PowerEma, config=PowerEmaConfig)
