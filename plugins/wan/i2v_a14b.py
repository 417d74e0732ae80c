"""``wan2.2-i2v-a14b``: Wan2.2's image-to-video experts, conditioned on mask and image latents (no CLIP)."""

from __future__ import annotations

from rcm_plugins.wan.experts import WanExperts
from rcm_plugins.wan.wan22_config import WanI2VA14BConfig, build_a14b

import rcm_registry as rr


def wan_i2v_a14b(config: WanI2VA14BConfig) -> WanExperts:
    """Wan2.2-I2V-A14B: two 14B experts switched at boundary 0.9, image_latent conditioning (a14b/tiny)."""
    return build_a14b(config)


COMPONENT = rr.Component(
    kind="network",
    name="wan2.2-i2v-a14b",
    factory=wan_i2v_a14b,
    config=WanI2VA14BConfig,
    provides={"jvp", "context_parallel"},
)
