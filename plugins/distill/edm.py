"""``edm``: an EDM-preconditioned network (x0- or ε-prediction) in TrigFlow.

EDM noises ``y = x0 + σ·n``. Matching SNR with TrigFlow's unit-variance noise,
``1/σ² = cos²t/sin²t``, gives ``σ = tan t`` and ``y = x_t/cos t``: the same data, so ``σ_data`` enters
only through the preconditioning, not the time mapping. (sCM's TrigFlow with noise ``σ_data·z``
would give ``σ = σ_data·tan t`` instead; this library's TrigFlow state has ``ε ~ N(0, I)``.)

EDM preconditioning, ``D(y; σ) = c_skip·y + c_out·N(c_in·y; c_noise)`` with
``c_skip = σ_d²/(σ² + σ_d²)``, ``c_out = σ·σ_d/√(σ² + σ_d²)``, ``c_in = 1/√(σ² + σ_d²)``,
``c_noise = ¼·ln σ``. Writing ``ρ = √(sin²t + σ_d²·cos²t)`` (so ``√(σ² + σ_d²) = ρ/cos t``) every
coefficient stays finite on the whole of [0, π/2] except ``ln σ`` at t = 0:

* network input ``c_in·y = x_t/ρ``, timestep ``t_scale·¼·ln tan t``;
* ``prediction: x0``: ``x0 = (σ_d²·cos t/ρ²)·x_t + (σ_d·sin t/ρ)·N`` and
  ``F = (cos t·x_t − x0)/sin t = (1 − σ_d²)·(cos t·sin t/ρ²)·x_t − (σ_d/ρ)·N``;
* ``prediction: eps`` (the network output is ε̂, the noise in ``y``):
  ``x0 = y − σ·ε̂ = (x_t − sin t·ε̂)/cos t`` and ``F = (ε̂ − sin t·x_t)/cos t``. An ε-prediction cannot
  give x0 at pure noise, so this form is ill-conditioned as t → π/2; samplers start at
  ``arctan σ_max`` < π/2.
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
class EdmConfig(GuidanceConfig):
    #: What the network predicts: the clean data (EDM's denoiser) or the noise.
    prediction: Literal["x0", "eps"] = "x0"
    #: Standard deviation of the data the network was trained on (EDM's σ_data).
    sigma_data: float = attrs.field(default=0.5, validator=s.positive)
    #: Network time = t_scale·c_noise with c_noise = ¼·ln σ (EDM's own choice is t_scale = 1).
    t_scale: float = attrs.field(default=1.0, validator=s.positive)


class EdmTeacher(TrigFlowWrapper):
    """EDM-preconditioned x0- or ε-prediction network read in TrigFlow (σ = tan t)."""

    def __init__(self, config: EdmConfig) -> None:
        super().__init__(guidance=config.guidance, guidance_applies=config.guidance_applies)
        self.config = config

    def _rho(self, t: Tensor) -> Tensor:
        sd = self.config.sigma_data
        return torch.sqrt(torch.sin(t) ** 2 + sd**2 * torch.cos(t) ** 2)

    def network_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        c_noise = 0.25 * (torch.log(torch.sin(t)) - torch.log(torch.cos(t)))
        return x_t / expand(self._rho(t), x_t), self.config.t_scale * c_noise

    def trigflow_output(self, x_t: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        tt = expand(t, x_t)
        c, s_ = torch.cos(tt), torch.sin(tt)
        if self.config.prediction == "eps":
            return (x_t - s_ * out) / c, (out - s_ * x_t) / c
        sd = self.config.sigma_data
        rho = expand(self._rho(t), x_t)
        x0 = (sd**2 * c / rho**2) * x_t + (sd * s_ / rho) * out
        F = (1.0 - sd**2) * (c * s_ / rho**2) * x_t - (sd / rho) * out
        return x0, F

    def __repr__(self) -> str:
        c = self.config
        return f"EdmTeacher(prediction={c.prediction!r}, sigma_data={c.sigma_data}, guidance={c.guidance})"


COMPONENT = rr.Component(kind="teacher", name="edm", factory=EdmTeacher, config=EdmConfig)
