"""The Wan2.1 video VAE through diffusers' ``AutoencoderKLWan``, with the latent normalisation the
transformers were trained on.

Wan2.1 and Cosmos-Predict2 both train on ``x = (z − mean)/std · sigma_data`` per latent channel, where z is
the mean of the VAE's posterior and mean/std come from the VAE's config (``latents_mean``/``latents_std``;
Wan2.1's published values start −0.7571, −0.7089, … and 2.8184, 1.4541, …); sigma_data is 1 for Wan and
for Cosmos-Predict2's pipelines. Decoding inverts it: ``z = x/sigma_data · std + mean``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from rcm_plugins.common.weights import CONFIG_NAME
from rcm_plugins.data._t5_text import DTYPES, codec_config, require
from rcm_plugins.data._video_geometry import CausalVideoGeometry
from rcm_plugins.data._wan_vae_conv import frames_as_2d
from rcm_plugins.data._wan_vae_decode import decode_in_chunks
from torch import Tensor, nn

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
    #: dtype the decoder runs in; default: ``dtype``. ``bf16`` halves the decode's memory and time on a GPU
    #: (the encoder keeps ``dtype``).
    decode_dtype: Literal["fp32", "bf16", "fp16"] | None = None
    #: Latent frames per decoder call after the first (see ``rcm_plugins.data._wan_vae_decode``); the
    #: decode's memory grows with it, the number of calls shrinks. Default: diffusers' frame-by-frame decode.
    decode_chunk_frames: int | None = attrs.field(default=None, validator=schema.positive)
    #: Run the decoder's convolutions in channels-last layout (NDHWC): on a GPU cuDNN's fastest 3-D
    #: convolution kernels take that layout; the result is the same up to the dtype's rounding.
    decode_channels_last: bool = False
    #: Let cuDNN time its convolution algorithms for the decoder's shapes on first use (``torch.backends.cudnn
    #: .benchmark``, switched on for the decode only); the first decode of a new size pays the search.
    decode_cudnn_benchmark: bool = False
    #: Run the decoder's causal 3-D convolutions as 2-D convolutions over frames, each output frame's kt input
    #: frames stacked along channels (``rcm_plugins.data._wan_vae_conv``): the same sums, through cuDNN's 2-D
    #: kernels; the stacked input (3× a layer's input for the 3×3×3 kernels) is the memory it costs.
    decode_conv3d_as_2d: bool = False

    def sample_shapes(self) -> SampleShapes:
        """Latents of the VAE's ``z_dim`` channels (its config.json; diffusers' default 16), read without
        loading the VAE; a UserError when ``path`` is not a folder."""
        config = codec_config(self.path, type(self).__name__)
        channels = int(config.get("z_dim", 16))
        return SampleShapes(x0=(channels, None, None, None), source=str(Path(self.path) / CONFIG_NAME))


def to_channels_last(module: nn.Module) -> None:
    """Every 5-D parameter of ``module`` in channels_last_3d and every 4-D one in channels_last, in place (the
    2-D convolutions of the Wan decoder's upsamplers run on frames folded into the batch)."""
    for param in module.parameters():
        if param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
        elif param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` on inside the block when ``enabled``, restored after."""
    if not enabled:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class WanVideoCodec(CausalVideoGeometry):
    """Pixels (B, 3, T, H, W) in [−1, 1] ↔ normalised latents (B, C, 1 + (T − 1)/f_t, H/f_s, W/f_s)."""

    def __init__(self, config: WanVaeConfig, extra: str, name: str, *, vae: Any = None) -> None:
        """Load the VAE from ``config.path``, or wrap ``vae`` (an ``AutoencoderKLWan`` already built, e.g. with
        random weights for a benchmark; ``path`` is then only a label)."""
        self.config = config
        self.name = name
        if vae is None:
            vae = self._load(config, extra, name)
        self.vae = vae.eval().requires_grad_(False)
        if self.vae.dtype != DTYPES[config.dtype]:  # a VAE given built; nn.Module's own `to` skips diffusers'
            nn.Module.to(self.vae, DTYPES[config.dtype])  # warning about modules it would keep in float32 (none)
        self.decode_dtype = DTYPES[config.decode_dtype or config.dtype]
        # The decoder alone in its own dtype: encoder and decoder share no parameters.
        self.vae.decoder.to(self.decode_dtype)
        self.vae.post_quant_conv.to(self.decode_dtype)
        if config.decode_channels_last:
            to_channels_last(self.vae.decoder)
            to_channels_last(self.vae.post_quant_conv)
        if config.decode_conv3d_as_2d:
            frames_as_2d(self.vae.decoder)
            frames_as_2d(self.vae.post_quant_conv)
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

    @staticmethod
    def _load(config: WanVaeConfig, extra: str, name: str) -> Any:
        diffusers = require("diffusers", extra, name)
        if not Path(config.path).is_dir():
            raise UserError(f"codecs ({name}).path: {config.path} is not a directory")
        # diffusers warns on every load that `accelerate` would speed it up; not worth a line in rcm's output.
        diffusers.utils.logging.set_verbosity_error()
        try:
            return diffusers.AutoencoderKLWan.from_pretrained(config.path, torch_dtype=DTYPES[config.dtype])
        except (OSError, ValueError) as exc:
            raise UserError(f"codec {name}: cannot load an AutoencoderKLWan from {config.path} ({exc})") from None

    def to(self, device: torch.device | str) -> WanVideoCodec:
        self.vae.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        dev = self.device
        posterior = self.vae.encode(video.to(dev, self.vae.encoder.conv_in.weight.dtype)).latent_dist
        z = posterior.mode().float()
        return (z - self.mean.to(dev)) / self.std.to(dev) * self.config.sigma_data

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        dev = self.device
        z = latents.to(dev, torch.float32) / self.config.sigma_data * self.std.to(dev) + self.mean.to(dev)
        z = z.to(self.decode_dtype)
        if self.config.decode_channels_last:
            z = z.contiguous(memory_format=torch.channels_last_3d)
        chunk = self.config.decode_chunk_frames
        with cudnn_benchmark(self.config.decode_cudnn_benchmark):
            if chunk is None:
                video = self.vae.decode(z).sample
            else:
                video = decode_in_chunks(self.vae, z, chunk, self.temporal_factor)
        return video.float().clamp(-1.0, 1.0).contiguous()

    def __repr__(self) -> str:
        factors = f"×{self.temporal_factor} frames, ×{self.spatial_factor} pixels"
        return f"{self.name}({self.config.path}, {self.latent_channels} channels, {factors})"
