"""``rectified_flow``: a velocity-predicting rectified-flow network (Wan2.1, Cosmos-Predict2) in TrigFlow.

The network was trained on ``x_s = (1 − s)·x0 + s·ε`` to predict ``v = ε − x0`` at network time
``s·t_scale``. Matching SNR, ``(1 − s)/s = cos t/sin t``, gives ``s = sin t/(cos t + sin t)`` and
``x_s = x_t/(cos t + sin t)``, so with ``D = cos t + sin t``:

* network input ``x_t/D``, timestep ``t_scale·sin t/D``;
* ``x0 = x_t/D − (sin t/D)·v``;
* ``F = (cos t·x_t − x0)/sin t``. Substituting ``x0`` and using ``cos t·D − 1 = sin t·(cos t − sin t)``
  cancels the ``1/sin t``: ``F = ((cos t − sin t)·x_t + v)/D``, which is what is evaluated, so
  ``t → 0`` is exact (F = x_t + v = ε there) instead of 0/0.
"""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.distill.common import GuidanceConfig, TrigFlowWrapper, expand
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s


@attrs.define
class RectifiedFlowConfig(GuidanceConfig):
    #: Network time = s·t_scale (1000 for Wan2.1 and Cosmos-Predict2).
    t_scale: float = attrs.field(default=1000.0, validator=s.positive)


class RectifiedFlowTeacher(TrigFlowWrapper):
    """Rectified-flow velocity network (v = ε − x0, time s·t_scale) read in TrigFlow."""

    def __init__(self, config: RectifiedFlowConfig) -> None:
        super().__init__(guidance=config.guidance, guidance_applies=config.guidance_applies)
        self.config = config

    def network_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        d = torch.cos(t) + torch.sin(t)
        return x_t / expand(d, x_t), self.config.t_scale * torch.sin(t) / d

    def trigflow_output(self, x_t: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        c, s_ = torch.cos(expand(t, x_t)), torch.sin(expand(t, x_t))
        d = c + s_
        x0 = (x_t - s_ * out) / d
        F = ((c - s_) * x_t + out) / d
        return x0, F

    def __repr__(self) -> str:
        return f"RectifiedFlowTeacher(t_scale={self.config.t_scale}, guidance={self.config.guidance})"


COMPONENT = rr.Component(
    kind="teacher", name="rectified_flow", factory=RectifiedFlowTeacher, config=RectifiedFlowConfig
)
