"""``uniform_shift``: shifted uniform rectified-flow time, returned as TrigFlow time."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.core._time import clamp_trigflow, rand_f64, shift_rf, trigflow_from_rf
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class UniformShiftTimeConfig:
    #: ``u' = shift·u / (1 + (shift − 1)·u)``; > 1 moves mass towards noise (Wan trains with 5).
    shift: float = attrs.field(default=1.0, validator=[schema.positive, schema.finite])


class UniformShiftTime:
    """Shifted uniform times: u ~ U(0, 1), u' = shift·u / (1 + (shift − 1)·u), t = atan2(u', 1 − u').

    Clamped to [1e-4, π/2 − 1e-4].
    """

    def __init__(self, config: UniformShiftTimeConfig) -> None:
        self.config = config

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = shift_rf(rand_f64(n, generator), self.config.shift)
        return clamp_trigflow(trigflow_from_rf(u))

    def __repr__(self) -> str:
        return f"UniformShiftTime(shift={self.config.shift})"


COMPONENT = rr.Component(
    kind="time_sampler", name="uniform_shift", factory=UniformShiftTime, config=UniformShiftTimeConfig
)
