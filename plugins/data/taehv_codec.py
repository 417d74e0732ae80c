"""``taehv``: a tiny video decoder for Wan latents (TAEHV's published ``taew2_1`` / ``taew2_2`` weights).

A decode-only codec for ``codecs.vae`` when sampling: the normalised latents a Wan2.1, Wan2.2-A14B
(``taew2_1``, 16 channels; Cosmos-Predict2's are the same Wan2.1 VAE latents, normalised alike) or
Wan2.2-TI2V-5B (``taew2_2``, 48 channels, 2×2 patches) transformer samples,
decoded by about ten million parameters of 2-D convolutions instead of the full causal 3-D VAE decoder
(``rcm_plugins.data._tiny_video_decoder``): much faster and lighter, less faithful in fine detail. The
latents go in as the transformer samples them (these decoders were trained on the normalised latents, so
no per-channel mean and std are applied). The weights file (``.safetensors``, or ``.pth`` read with
``torch.load(weights_only=True)``) holds ``decoder.*`` tensors, and ``encoder.*`` ones that are not read;
the latent channels and the patch size are read from the decoder's first and last convolutions.

    rcm generate RUN --prompt "..." --set codecs.vae.use=taehv --set codecs.vae.path=taew2_1.safetensors
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import torch
from rcm_plugins.common.weights import read_state_dict
from rcm_plugins.data._t5_text import DTYPES
from rcm_plugins.data._tiny_video_decoder import SPACE_FACTOR, TIME_FACTOR, TinyVideoDecoder
from rcm_plugins.data._video_geometry import CausalVideoGeometry
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema
from rcm_registry.errors import UserError
from rcm_registry.protocols import SampleShapes
from rcm_registry.state_dicts import load_strict

#: The decoder's first convolution (latent channels → 256) and its last (64 → 3·patch²).
FIRST, LAST = "decoder.1.weight", "decoder.22.weight"
#: The first temporal grow, ×1 in the Wan decoders; a file may hold it at ×2, of which the last frame's
#: channels are the ×1 layer (what the published loader keeps).
GROW_X1 = "decoder.7.conv.weight"


@attrs.define(kw_only=True)
class TaehvCodecConfig:
    """``{use: taehv, path: taew2_1.safetensors}``"""

    #: The weights file: ``taew2_1`` for Wan2.1 and Wan2.2-A14B latents, ``taew2_2`` for Wan2.2-TI2V-5B.
    path: str
    #: dtype the decoder runs in.
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: The transformer's latents are ``sigma_data`` times the decoder's (1 for Wan).
    sigma_data: float = attrs.field(default=1.0, validator=schema.positive)
    #: Latent frames per decoder pass (each memory block's last frame carried between passes): memory grows
    #: with it. Default: all frames in one pass.
    decode_chunk_frames: int | None = attrs.field(default=None, validator=schema.positive)

    def sample_shapes(self) -> SampleShapes:
        """Latents of the decoder's input channels, read from the file's first convolution."""
        channels, _ = decoder_geometry(self.path)
        return SampleShapes(x0=(channels, None, None, None), source=self.path)


def _weights(path: str) -> dict[str, Tensor]:
    if not Path(path).is_file():
        raise UserError(f"codecs (taehv).path: {path} is not a file (a taew2_1 / taew2_2 .safetensors or .pth)")
    return read_state_dict(path)


def decoder_geometry(path: str, weights: dict[str, Tensor] | None = None) -> tuple[int, int]:
    """(latent channels, patch size) of the decoder in ``path``; a UserError when it holds no such decoder."""
    weights = _weights(path) if weights is None else weights
    if FIRST not in weights or LAST not in weights:
        raise UserError(
            f"codecs (taehv).path: {path} holds no TAEHV decoder (no {FIRST} / {LAST}; "
            f"its keys start {', '.join(sorted(weights)[:4]) or 'nowhere: it is empty'})"
        )
    out_channels = weights[LAST].shape[0]
    patch = round((out_channels / 3) ** 0.5)
    if 3 * patch**2 != out_channels:
        raise UserError(f"codecs (taehv).path: {path}: {LAST} has {out_channels} outputs, not 3·patch²")
    return int(weights[FIRST].shape[1]), patch


class TaehvCodec(CausalVideoGeometry):
    """Normalised latents (B, C, 1 + k, H, W) → pixels (B, 3, 1 + 4k, 8pH, 8pW) in [−1, 1]; no encoder."""

    name = "taehv"

    def __init__(self, config: TaehvCodecConfig, *, decoder: TinyVideoDecoder | None = None) -> None:
        """Load the decoder from ``config.path``, or wrap ``decoder`` (built, e.g. with random weights for a
        benchmark; ``path`` is then only a label)."""
        self.config = config
        if decoder is None:
            decoder = self._load(config.path)
        self.decoder = decoder.to(DTYPES[config.dtype]).eval().requires_grad_(False)
        self.latent_channels = decoder.latent_channels
        self.temporal_factor = TIME_FACTOR
        self.spatial_factor = SPACE_FACTOR * decoder.patch_size

    @staticmethod
    def _load(path: str) -> TinyVideoDecoder:
        weights = _weights(path)
        channels, patch = decoder_geometry(path, weights)
        decoder = TinyVideoDecoder(channels, patch)
        own = decoder.state_dict()
        grow = weights.get(GROW_X1)
        if grow is not None and grow.shape[0] == 2 * own[GROW_X1].shape[0]:
            weights[GROW_X1] = grow[own[GROW_X1].shape[0] :]
        load_strict(decoder, weights, source=path, ignore_unexpected=[r"^encoder\."])
        return decoder

    def to(self, device: torch.device | str) -> TaehvCodec:
        self.decoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def encode(self, video: Tensor) -> Tensor:
        raise UserError(
            "codec taehv decodes only: encode videos (latent shards, image conditions) with the full VAE "
            "(wan_vae or wan2.2_vae), and decode samples with taehv"
        )

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        dtype = next(self.decoder.parameters()).dtype
        z = (latents.to(self.device, torch.float32) / self.config.sigma_data).to(dtype)
        video = self.decoder(z, self.config.decode_chunk_frames)
        return (video.float() * 2 - 1).contiguous()

    def __repr__(self) -> str:
        factors = f"×{self.temporal_factor} frames, ×{self.spatial_factor} pixels"
        return f"taehv({self.config.path}, {self.latent_channels} channels, {factors}, decode only)"


def taehv(config: TaehvCodecConfig) -> TaehvCodec:
    """Tiny video decoder for Wan latents (TAEHV's taew2_1 / taew2_2 weights file); decode only, fast."""
    return TaehvCodec(config)


COMPONENT = rr.Component(kind="codec", name="taehv", factory=taehv, config=TaehvCodecConfig)
