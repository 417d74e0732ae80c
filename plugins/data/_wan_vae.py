"""The Wan2.1 video VAE through diffusers' ``AutoencoderKLWan``, with the latent normalisation the
transformers were trained on.

Wan2.1 and Cosmos-Predict2 both train on ``x = (z − mean)/std · sigma_data`` per latent channel, where z is
the mean of the VAE's posterior and mean/std come from the VAE's config (``latents_mean``/``latents_std``;
Wan2.1's published values start −0.7571, −0.7089, … and 2.8184, 1.4541, …); sigma_data is 1 for Wan and
for Cosmos-Predict2's pipelines. Decoding inverts it: ``z = x/sigma_data · std + mean``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import torch
from rcm_plugins.common.weights import CONFIG_NAME
from rcm_plugins.data._t5_text import DTYPES, codec_config, require
from torch import Tensor

from rcm_registry import schema
from rcm_registry.errors import UserError
from rcm_registry.protocols import SampleShapes


@attrs.define(kw_only=True)
class WanVaeConfig:
    #: A diffusers ``AutoencoderKLWan`` directory, e.g. ``Wan2.1-T2V-1.3B-Diffusers/vae``.
    path: str
    #: dtype the VAE runs in (Wan runs its VAE in float32).
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: Per-channel latent statistics; default: ``latents_mean`` / ``latents_std`` of the VAE's config.
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = attrs.field(default=None, validator=schema.positive)
    sigma_data: float = attrs.field(default=1.0, validator=schema.positive)

    def sample_shapes(self) -> SampleShapes:
        """Latents of the VAE's ``z_dim`` channels (its config.json; diffusers' default 16), read without
        loading the VAE; a UserError when ``path`` is not a folder."""
        config = codec_config(self.path, type(self).__name__)
        channels = int(config.get("z_dim", 16))
        return SampleShapes(x0=(channels, None, None, None), source=str(Path(self.path) / CONFIG_NAME))


class WanVideoCodec:
    """Pixels (B, 3, T, H, W) in [−1, 1] ↔ normalised latents (B, C, 1 + (T − 1)/f_t, H/f_s, W/f_s)."""

    def __init__(self, config: WanVaeConfig, extra: str, name: str) -> None:
        self.config = config
        self.name = name
        diffusers = require("diffusers", extra, name)
        if not Path(config.path).is_dir():
            raise UserError(f"codecs ({name}).path: {config.path} is not a directory")
        # diffusers warns on every load that `accelerate` would speed it up; not worth a line in rcm's output.
        diffusers.utils.logging.set_verbosity_error()
        try:
            vae = diffusers.AutoencoderKLWan.from_pretrained(config.path, torch_dtype=DTYPES[config.dtype])
        except (OSError, ValueError) as exc:
            raise UserError(f"codec {name}: cannot load an AutoencoderKLWan from {config.path} ({exc})") from None
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = int(vae.config.z_dim)
        # The scale factors follow from the architecture (config's scale_factor_* can be stale defaults).
        self.temporal_factor = 2 ** sum(bool(d) for d in vae.temperal_downsample)
        self.spatial_factor = 2 ** len(vae.temperal_downsample)
        mean = config.latents_mean if config.latents_mean is not None else vae.config.latents_mean
        std = config.latents_std if config.latents_std is not None else vae.config.latents_std
        for label, values in (("latents_mean", mean), ("latents_std", std)):
            if values is None or len(values) != self.latent_channels:
                count = "none" if values is None else len(values)
                raise UserError(f"codec {name}: {label} has {count} values for {self.latent_channels} latent channels")
        shape = (1, self.latent_channels, 1, 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(shape)
        self.std = torch.tensor(std, dtype=torch.float32).view(shape)

    def to(self, device: torch.device | str) -> WanVideoCodec:
        self.vae.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Latent (C, T, H, W) of a video; frames = 1 + k·f_t, height and width multiples of f_s."""
        ft, fs = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % ft:
            raise UserError(f"{self.name}: frames must be 1 + a multiple of {ft}, got {frames}")
        if height % fs or width % fs:
            raise UserError(f"{self.name}: height and width must be multiples of {fs}, got {height}×{width}")
        return (self.latent_channels, (frames - 1) // ft + 1, height // fs, width // fs)

    def pixel_shape(self, latent: tuple[int, ...]) -> tuple[int, int, int]:
        """(frames, height, width) a latent of shape (C, T, H, W) decodes to."""
        _, t, h, w = latent
        return ((t - 1) * self.temporal_factor + 1, h * self.spatial_factor, w * self.spatial_factor)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        dev = self.device
        posterior = self.vae.encode(video.to(dev, self.vae.dtype)).latent_dist
        z = posterior.mode().float()
        return (z - self.mean.to(dev)) / self.std.to(dev) * self.config.sigma_data

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        dev = self.device
        z = latents.to(dev, torch.float32) / self.config.sigma_data * self.std.to(dev) + self.mean.to(dev)
        video = self.vae.decode(z.to(self.vae.dtype)).sample
        return video.float().clamp(-1.0, 1.0)

    def __repr__(self) -> str:
        factors = f"×{self.temporal_factor} frames, ×{self.spatial_factor} pixels"
        return f"{self.name}({self.config.path}, {self.latent_channels} channels, {factors})"
