"""``uniform``: TrigFlow time uniform on [low, high]."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.core._time import HALF_PI, clamp_trigflow, rand_f64
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class UniformTimeConfig:
    low: float = attrs.field(default=0.0, validator=schema.in_range(0.0, HALF_PI))
    high: float = attrs.field(default=HALF_PI, validator=schema.in_range(0.0, HALF_PI))

    def __attrs_post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")


class UniformTime:
    """Uniform TrigFlow times: t = low + (high − low)·U(0, 1).

    Clamped to [1e-4, π/2 − 1e-4].
    """

    def __init__(self, config: UniformTimeConfig) -> None:
        self.config = config

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        low, high = self.config.low, self.config.high
        return clamp_trigflow(low + (high - low) * rand_f64(n, generator))

    def __repr__(self) -> str:
        return f"UniformTime(low={self.config.low}, high={self.config.high})"


COMPONENT = rr.Component(kind="time_sampler", name="uniform", factory=UniformTime, config=UniformTimeConfig)
