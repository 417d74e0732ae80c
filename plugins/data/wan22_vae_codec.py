"""``wan2.2_vae``: the Wan2.2 video VAE (diffusers ``AutoencoderKLWan`` in its Wan2.2 configuration), with the
latent normalisation Wan2.2-TI2V-5B was trained on.

The Wan2.2 VAE compresses ×4 in time and ×16 in space into 48 latent channels: a residual AutoencoderKLWan
(``is_residual``) that first folds 2×2 pixel patches into channels (config ``patch_size: 2``, 12 input and
output channels) and then downsamples ×8. Its latents are normalised per channel with the config's
``latents_mean``/``latents_std`` (the 48 values Wan2.2 publishes) exactly as the Wan2.1 codec does, so the
Wan2.1 codec's code serves; only the spatial factor gains the patch size.
"""

from __future__ import annotations

import attrs
from rcm_plugins.data._wan_vae import WanVaeConfig, WanVideoCodec

import rcm_registry as rr
from rcm_registry.errors import UserError


@attrs.define(kw_only=True)
class Wan22VaeCodecConfig(WanVaeConfig):
    """``{use: wan2.2_vae, path: .../Wan2.2-TI2V-5B-Diffusers/vae}``"""


class Wan22VideoCodec(WanVideoCodec):
    """Pixels (B, 3, T, H, W) in [−1, 1] ↔ normalised latents (B, 48, 1 + (T − 1)/4, H/16, W/16)."""

    def __init__(self, config: Wan22VaeCodecConfig) -> None:
        super().__init__(config, "wan", "wan2.2_vae")
        patch = self.vae.config.patch_size
        if not patch:
            raise UserError(
                f"codecs (wan2.2_vae).path: {config.path} holds a Wan2.1 VAE (its config.json has no patch_size): "
                "use {use: wan_vae} for it"
            )
        # The VAE folds patch × patch pixels into channels before its own ×2^levels downsampling.
        self.spatial_factor *= int(patch)


def wan22_vae(config: Wan22VaeCodecConfig) -> Wan22VideoCodec:
    """Wan2.2 video VAE (diffusers AutoencoderKLWan, 48 channels, ×4/×16; local path; mean/std normalised)."""
    return Wan22VideoCodec(config)


COMPONENT = rr.Component(kind="codec", name="wan2.2_vae", factory=wan22_vae, config=Wan22VaeCodecConfig)
