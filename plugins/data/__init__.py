"""Data and codecs: the ``latent_shards`` and ``rcm_tar_shards`` datasets; the text encoders and VAEs of Wan2.1
and Cosmos-Predict2, and the tiny video decoder for Wan latents.

The codecs import diffusers/transformers only when built, so this area loads without the optional extras.
"""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.data import (
        cosmos_vae_codec,
        latent_shards_dataset,
        rcm_tar_shards_dataset,
        t5_codec,
        taehv_codec,
        umt5_codec,
        wan22_vae_codec,
        wan_vae_codec,
    )

    return [
        latent_shards_dataset.COMPONENT,
        rcm_tar_shards_dataset.COMPONENT,
        umt5_codec.COMPONENT,
        wan_vae_codec.COMPONENT,
        wan22_vae_codec.COMPONENT,
        t5_codec.COMPONENT,
        cosmos_vae_codec.COMPONENT,
        taehv_codec.COMPONENT,
    ]
