import math

import attrs
import torch

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class LogitNormalConfig:
    """``{use: logit_normal, mean: 0.0, std: 1.0}``"""

    mean: float = 0.0
    std: float = attrs.field(default=1.0, validator=schema.positive)


class LogitNormal:
    """Rectified-flow time u = sigmoid(N(mean, std)), returned as TrigFlow time t = atan2(u, 1 - u)."""

    def __init__(self, config: LogitNormalConfig) -> None:
        self.config = config

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else "cpu"
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        u = torch.sigmoid(self.config.mean + self.config.std * z)
        t = torch.atan2(u, 1.0 - u)
        return t.clamp(1e-6, math.pi / 2 - 1e-6)


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    return [rr.Component(kind="time_sampler", name="logit_normal", factory=LogitNormal, config=LogitNormalConfig)]
