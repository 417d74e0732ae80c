"""Wan2.2-TI2V-5B: the Wan transformer on 48-channel latents, conditioned on text and, optionally, a first frame.

The 5B is one Wan transformer (no experts) on the Wan2.2 VAE's 48-channel latents (×4 in time, ×16 in space),
patched (1, 2, 2) like Wan2.1. It does text-to-video as Wan2.1 does, and image-to-video by *first-frame
conditioning* (diffusers' ``expand_timesteps``): the first latent frame of the input is replaced by the
clean latents of the image, and the tokens of that frame are told timestep 0 while every other token gets
the sample's timestep.

The network's velocity on the first frame is not the transformer's: diffusers' pipeline throws it away and
puts the image latents back after sampling, which no sampler of this library knows to do. Instead the
network returns there the velocity that lands exactly on the given frame, ``v = (x − frame)/s`` at
rectified-flow time ``s = timestep/1000`` (``x − s·v = frame``), so every reader of the network — the
teacher wrapper's x0, a sampler's Euler step, the rollout — keeps the first frame as given, and the first
frame's share of a distillation loss is exactly zero. On the other frames the output is the transformer's,
equal to diffusers' ``WanTransformer3DModel`` given the same per-token timesteps.
"""

from __future__ import annotations

import torch
from rcm_plugins.common.export import Layouts
from rcm_plugins.common.inputs import check_latents
from rcm_plugins.common.layers import compute_dtype
from rcm_plugins.wan.model import TIMESTEP_SCALE, WanNetwork
from torch import Tensor

#: Smallest rectified-flow time the first frame's velocity divides by (no sampler evaluates at s = 0).
_MIN_TIME = 1e-6


class WanTI2VNetwork(WanNetwork):
    """Wan2.2-TI2V-5B: ``net(x, timestep, text, first_frame=None)``."""

    def forward(  # type: ignore[override]
        self, x: Tensor, timestep: Tensor, text: Tensor, first_frame: Tensor | None = None
    ) -> Tensor:
        """Predict the flow velocity of video latents, optionally conditioned on their first frame.

        Args:
            x: (B, C, T, H, W) latents.
            timestep: (B,) in the network's units (0–1000).
            text: (B, L, text_dim) text-encoder tokens.
            first_frame: (B, C, 1, H, W) latents of the conditioning image (what the Wan2.2 VAE encodes from
                it, normalised); None for text-to-video.

        Returns:
            (B, C, T, H, W) in x's dtype; with ``first_frame``, its first frame is the velocity towards it.
        """
        if first_frame is None:
            return super().forward(x, timestep, text)
        arch = self.arch
        check_latents(x, arch.in_channels, arch.patch_size)
        b, c, frames, h, w = x.shape
        if arch.patch_size[0] != 1:
            raise ValueError(f"first-frame conditioning needs temporal patch size 1, not {arch.patch_size[0]}")
        if first_frame.shape != (b, c, 1, h, w):
            raise ValueError(f"first_frame must be (B, C, 1, H, W) = {(b, c, 1, h, w)}, got {tuple(first_frame.shape)}")
        if timestep.shape != (b,):
            raise ValueError(f"timestep must have shape ({b},), got {tuple(timestep.shape)}")
        frame = first_frame.to(x.dtype)
        inputs = torch.cat((frame, x[:, :, 1:]), dim=2)
        # The clean first frame's tokens are told timestep 0, the other frames' the sample's timestep.
        per_frame = torch.cat((torch.zeros_like(timestep[:, None]), timestep[:, None].expand(b, frames - 1)), dim=1)
        out = super().forward(inputs, per_frame, text)
        cd = compute_dtype(x.dtype)
        s = (timestep.to(cd) / TIMESTEP_SCALE).clamp_min(_MIN_TIME).reshape(b, 1, 1, 1, 1)
        towards_frame = (x[:, :, :1].to(cd) - frame.to(cd)) / s
        return torch.cat((towards_frame.to(out.dtype), out[:, :, 1:]), dim=2)

    @classmethod
    def checkpoint_layouts(cls) -> Layouts:
        """The Wan2.2 TI2V layouts (native config.json ``model_type: ti2v``) that ``export`` writes."""
        from rcm_plugins.wan.wan22_checkpoint import TI2V_LAYOUTS  # that module imports this one

        return TI2V_LAYOUTS
