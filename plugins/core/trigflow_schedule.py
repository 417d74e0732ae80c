"""``trigflow``: the TrigFlow forward process, ``x_t = cos t·x0 + sin t·ε`` with t ∈ [0, π/2]."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.core._time import HALF_PI, as_f64, descending_grid, shift_trigflow
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class TrigFlowScheduleConfig:
    #: The network receives ``timestep = t·time_scale``.
    time_scale: float = attrs.field(default=1.0, validator=[schema.positive, schema.finite])
    #: ODE grid shift: ``tan t' = shift·tan t`` (the TrigFlow form of the Wan shift; 1 = none).
    shift: float = attrs.field(default=1.0, validator=[schema.positive, schema.finite])
    #: ODE grid limits in (unshifted) TrigFlow time; π/2 is pure noise, 0 is data.
    grid_max: float = attrs.field(default=HALF_PI, validator=schema.in_range(0.0, HALF_PI))
    grid_min: float = attrs.field(default=0.0, validator=schema.in_range(0.0, HALF_PI))

    def __attrs_post_init__(self) -> None:
        if not self.grid_min < self.grid_max:
            raise ValueError(f"grid_min ({self.grid_min}) must be < grid_max ({self.grid_max})")


class TrigFlowSchedule:
    """TrigFlow: α = cos t, σ = sin t, t ∈ [0, π/2]; its own time is the TrigFlow time.

    The flow-matching target ``dα·x0 + dσ·ε = −sin t·x0 + cos t·ε`` is the TrigFlow velocity F.
    ``time_grid(n)``: ``linspace(grid_max, grid_min, n + 1)``, then ``tan t' = shift·tan t``.
    """

    def __init__(self, config: TrigFlowScheduleConfig) -> None:
        self.config = config

    def alpha_sigma(self, u: Tensor) -> tuple[Tensor, Tensor]:
        u = as_f64(u)
        return torch.cos(u), torch.sin(u)

    def velocity_coefficients(self, u: Tensor) -> tuple[Tensor, Tensor]:
        u = as_f64(u)
        return -torch.sin(u), torch.cos(u)

    def from_trigflow(self, t: Tensor) -> Tensor:
        return as_f64(t)

    def to_trigflow(self, u: Tensor) -> Tensor:
        return as_f64(u)

    def network_time(self, u: Tensor) -> Tensor:
        return as_f64(u) * self.config.time_scale

    def time_grid(self, steps: int) -> Tensor:
        return shift_trigflow(descending_grid(self.config.grid_max, self.config.grid_min, steps), self.config.shift)

    def __repr__(self) -> str:
        return f"TrigFlowSchedule({self.config})"


COMPONENT = rr.Component(kind="schedule", name="trigflow", factory=TrigFlowSchedule, config=TrigFlowScheduleConfig)
