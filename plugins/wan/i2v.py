"""``wan2.1-i2v``: the Wan2.1 image-to-video transformer (CLIP image tokens and conditioning latents)."""

from __future__ import annotations

from rcm_plugins.wan.config import WanI2VConfig, build
from rcm_plugins.wan.model import WanNetwork

import rcm_registry as rr


def wan_i2v(config: WanI2VConfig) -> WanNetwork:
    """Wan2.1 image-to-video transformer (14B/1.3B/tiny; native or diffusers weights; forward-mode AD)."""
    return build(config)


COMPONENT = rr.Component(
    kind="network", name="wan2.1-i2v", factory=wan_i2v, config=WanI2VConfig, provides={"jvp", "context_parallel"}
)
