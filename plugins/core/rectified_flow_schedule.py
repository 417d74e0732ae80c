"""``rectified_flow``: ``x_u = (1 − u)·x0 + u·ε`` with u ∈ [0, 1] (Wan, Cosmos-Predict2)."""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.core._time import as_f64, descending_grid, rf_from_trigflow, shift_rf, trigflow_from_rf
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class RectifiedFlowScheduleConfig:
    #: The network receives ``timestep = u·time_scale`` (Wan and Cosmos use 1000).
    time_scale: float = attrs.field(default=1000.0, validator=[schema.positive, schema.finite])
    #: Wan-style ODE grid shift ``u' = shift·u / (1 + (shift − 1)·u)`` (1 = none).
    shift: float = attrs.field(default=1.0, validator=[schema.positive, schema.finite])
    #: ODE grid limits in (unshifted) rectified-flow time; 1 is pure noise, 0 is data.
    grid_max: float = attrs.field(default=1.0, validator=schema.in_range(0.0, 1.0))
    grid_min: float = attrs.field(default=0.0, validator=schema.in_range(0.0, 1.0))

    def __attrs_post_init__(self) -> None:
        if not self.grid_min < self.grid_max:
            raise ValueError(f"grid_min ({self.grid_min}) must be < grid_max ({self.grid_max})")


class RectifiedFlowSchedule:
    """Rectified flow: α = 1 − u, σ = u; SNR-matched to TrigFlow by ``tan t = u / (1 − u)``.

    ``from_trigflow``: u = sin t / (cos t + sin t); ``to_trigflow``: t = atan2(u, 1 − u).
    The flow-matching target ``dα·x0 + dσ·ε = ε − x0`` is the usual rectified-flow velocity.
    ``time_grid(n)``: ``linspace(grid_max, grid_min, n + 1)``, then shifted.
    """

    def __init__(self, config: RectifiedFlowScheduleConfig) -> None:
        self.config = config

    def alpha_sigma(self, u: Tensor) -> tuple[Tensor, Tensor]:
        u = as_f64(u)
        return 1.0 - u, u

    def velocity_coefficients(self, u: Tensor) -> tuple[Tensor, Tensor]:
        u = as_f64(u)
        return torch.full_like(u, -1.0), torch.ones_like(u)

    def from_trigflow(self, t: Tensor) -> Tensor:
        return rf_from_trigflow(t)

    def to_trigflow(self, u: Tensor) -> Tensor:
        return trigflow_from_rf(u)

    def network_time(self, u: Tensor) -> Tensor:
        return as_f64(u) * self.config.time_scale

    def time_grid(self, steps: int) -> Tensor:
        return shift_rf(descending_grid(self.config.grid_max, self.config.grid_min, steps), self.config.shift)

    def __repr__(self) -> str:
        return f"RectifiedFlowSchedule({self.config})"


COMPONENT = rr.Component(
    kind="schedule", name="rectified_flow", factory=RectifiedFlowSchedule, config=RectifiedFlowScheduleConfig
)
