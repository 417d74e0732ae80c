"""``cosmos_edm``: the Cosmos-Predict2 denoiser (EDM noise levels, rectified-flow preconditioning) in TrigFlow.

Cosmos-Predict2 noises in EDM's variance-exploding form, ``x_σ = x0 + σ·ε`` (its samplers run σ from 80
down to 0.002), with ``σ_data = 1`` (every Cosmos-Predict2 config; its ``RectifiedFlowScaling`` asserts
it, and the latents are normalised to unit scale before the network sees them). The denoiser
(``cosmos_predict2/module/denoiser_scaling.py`` ``RectifiedFlowScaling``, the pipelines' ``denoise``, and
diffusers' ``Cosmos2TextToImagePipeline`` / ``Cosmos2VideoToWorldPipeline``) is

    D(x_σ; σ) = c_skip·x_σ + c_out·N(c_in·x_σ, c_noise),  with  s = σ/(σ + 1),
    c_skip = 1 − s,  c_out = −s,  c_in = 1 − s,  c_noise = t_scaling_factor·s  (t_scaling_factor = 1).

So ``c_in·x_σ = (1 − s)·x0 + s·ε`` is the rectified-flow state at time s, the network predicts its
velocity ``v = ε − x0``, and its timestep is s itself, in [0, 1] (not s·1000 as for Wan).

TrigFlow (x_t = cos t·x0 + sin t·ε, unit-variance ε) matches by SNR with σ = tan t and x_σ = x_t/cos t,
so with ``D = cos t + sin t``:

* s = sin t/D, network input ``c_in·x_σ = x_t/D``, timestep ``t_scaling_factor·sin t/D``;
* ``x0 = c_skip·x_σ + c_out·N = (x_t − sin t·N)/D``;
* ``F = (cos t·x_t − x0)/sin t = ((cos t − sin t)·x_t + N)/D``, finite on all of [0, π/2].

That is the ``rectified_flow`` wrapper at ``t_scale = t_scaling_factor``, whose arithmetic this one reuses.

Classifier-free guidance: Cosmos' pipelines form ``x0_c + g·(x0_c − x0_u)``; this library's
``F_u + w·(F_c − F_u)`` is the same with ``w = 1 + g`` (the pipelines' default g = 7 is w = 8 here).

Video2World (condition keys ``condition_latents`` (B, C, T, H, W), clean latents of the conditioning
frames, and ``condition_mask`` (B, 1, T, H, W), 1 on those frames), as the original's frame-replacement
``denoise``: on conditioning frames the network input is the clean latents (divided by σ_data = 1), their
per-frame timestep is ``c_noise(σ_conditional)`` (σ_conditional = 1e-4), the mask rides along as a network
input channel, and the prediction there is replaced by the clean latents: ``x0 = gt`` and so
``F = (cos t·x_t − gt)/sin t`` on those frames (singular only at t = 0, where no sampler evaluates).
"""

from __future__ import annotations

import attrs
import torch
from rcm_plugins.distill.common import GuidanceConfig, TrigFlowWrapper, expand, network_dtype, time_dtype
from rcm_plugins.distill.rectified_flow import RectifiedFlowConfig, RectifiedFlowTeacher
from torch import Tensor, nn

import rcm_registry as rr
from rcm_registry import schema as s
from rcm_registry.protocols import Condition

#: Condition keys of a Video2World batch read by this wrapper.
CONDITION_LATENTS = "condition_latents"
CONDITION_MASK = "condition_mask"


@attrs.define
class CosmosEdmConfig(GuidanceConfig):
    #: Network timestep = t_scaling_factor·σ/(σ + 1) (1.0 in every Cosmos-Predict2 config).
    t_scaling_factor: float = attrs.field(default=1.0, validator=s.positive)
    #: Video2World: the noise level the network is told for the clean conditioning frames.
    sigma_conditional: float = attrs.field(default=1e-4, validator=s.non_negative)


class CosmosEdmTeacher(TrigFlowWrapper):
    """Cosmos-Predict2 denoiser (EDM σ, rectified-flow preconditioning, σ_data = 1) read in TrigFlow."""

    def __init__(self, config: CosmosEdmConfig) -> None:
        super().__init__(guidance=config.guidance, guidance_applies=config.guidance_applies)
        self.config = config
        self._flow = RectifiedFlowTeacher(RectifiedFlowConfig(t_scale=config.t_scaling_factor, guidance=1.0))

    def network_input(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._flow.network_input(x_t, t)

    def trigflow_output(self, x_t: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        return self._flow.trigflow_output(x_t, t, out)

    def conditional_timestep(self) -> float:
        """c_noise(σ_conditional) = t_scaling_factor·σ_c/(σ_c + 1)."""
        sc = self.config.sigma_conditional
        return self.config.t_scaling_factor * sc / (sc + 1.0)

    def evaluate(self, net: nn.Module, x_t: Tensor, t: Tensor, condition: Condition) -> tuple[Tensor, Tensor]:
        if CONDITION_LATENTS not in condition:
            return super().evaluate(net, x_t, t, condition)
        if CONDITION_MASK not in condition:
            raise ValueError(f"a Video2World condition with {CONDITION_LATENTS} also needs {CONDITION_MASK}")
        kwargs = dict(condition)
        gt = kwargs.pop(CONDITION_LATENTS).to(torch.float64)
        mask = kwargs[CONDITION_MASK].to(torch.float64)  # (B, 1, T, H, W), broadcast over channels
        frames = mask.mean(dim=(1, 3, 4))  # (B, T): the original reads the per-frame share of the mask
        x64 = x_t.to(torch.float64)
        x_in, timestep = self.network_input(x64, t)
        x_in = mask * gt + (1 - mask) * x_in
        per_frame = frames * self.conditional_timestep() + (1 - frames) * timestep[:, None]
        dtype = network_dtype(net, x_t.dtype)
        out = net(x_in.to(dtype), per_frame.to(time_dtype(dtype)), **kwargs)
        x0_pred, F_pred = self.trigflow_output(x64, t, out.to(torch.float64))
        x0 = mask * gt + (1 - mask) * x0_pred
        # F = (cos t·x_t − x0)/sin t; away from the conditioning frames x0 = x0_pred and F is F_pred exactly.
        F = F_pred + mask * (x0_pred - gt) / torch.sin(expand(t, x64))
        return x0, F

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CosmosEdmTeacher(t_scaling_factor={c.t_scaling_factor}, guidance={c.guidance}, "
            f"sigma_conditional={c.sigma_conditional})"
        )


COMPONENT = rr.Component(kind="teacher", name="cosmos_edm", factory=CosmosEdmTeacher, config=CosmosEdmConfig)
