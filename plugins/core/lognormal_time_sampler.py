"""``lognormal``: σ = exp(N(mean, std²)), t = arctan σ (the sCM / EDM proposal distribution)."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.core._time import clamp_trigflow, randn_f64
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class LognormalTimeConfig:
    #: Mean of ln σ (σ = tan t is the noise-to-signal ratio).
    mean: float = attrs.field(default=-0.8, validator=schema.finite)
    #: Standard deviation of ln σ.
    std: float = attrs.field(default=1.6, validator=[schema.positive, schema.finite])


class LognormalTime:
    """Log-normal noise levels: t = arctan(exp(mean + std·z)), z ~ N(0, 1).

    Clamped to [1e-4, π/2 − 1e-4].
    """

    def __init__(self, config: LognormalTimeConfig) -> None:
        self.config = config

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        log_sigma = self.config.mean + self.config.std * randn_f64(n, generator)
        return clamp_trigflow(torch.atan(torch.exp(log_sigma)))

    def __repr__(self) -> str:
        return f"LognormalTime(mean={self.config.mean}, std={self.config.std})"


COMPONENT = rr.Component(kind="time_sampler", name="lognormal", factory=LognormalTime, config=LognormalTimeConfig)
