"""``cosmos_vae``: Cosmos-Predict2's VAE. Its pipelines use the Wan2.1 VAE (diffusers ``AutoencoderKLWan``)
with the same per-channel normalisation, scaled by the scheduler's ``sigma_data`` (1.0 in the released
configs)."""

from __future__ import annotations

import attrs
from rcm_plugins.data._wan_vae import WanVaeConfig, WanVideoCodec

import rcm_registry as rr


@attrs.define(kw_only=True)
class CosmosVaeConfig(WanVaeConfig):
    """``{use: cosmos_vae, path: .../vae, sigma_data: 1.0}``"""


def cosmos_vae(config: CosmosVaeConfig) -> WanVideoCodec:
    """Cosmos-Predict2 VAE (the Wan2.1 AutoencoderKLWan, normalised and scaled by sigma_data; extra [cosmos])."""
    return WanVideoCodec(config, "cosmos", "cosmos_vae")


COMPONENT = rr.Component(kind="codec", name="cosmos_vae", factory=cosmos_vae, config=CosmosVaeConfig)
