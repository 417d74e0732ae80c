"""``wan_vae``: the Wan2.1 video VAE (diffusers ``AutoencoderKLWan``) with Wan's latent normalisation."""

from __future__ import annotations

import attrs
from rcm_plugins.data._wan_vae import WanVaeConfig, WanVideoCodec

import rcm_registry as rr


@attrs.define(kw_only=True)
class WanVaeCodecConfig(WanVaeConfig):
    """``{use: wan_vae, path: .../vae}``"""


def wan_vae(config: WanVaeCodecConfig) -> WanVideoCodec:
    """Wan2.1 video VAE (diffusers AutoencoderKLWan, local path; per-channel mean/std normalised; extra [wan])."""
    return WanVideoCodec(config, "wan", "wan_vae")


COMPONENT = rr.Component(kind="codec", name="wan_vae", factory=wan_vae, config=WanVaeCodecConfig)
