"""``wan2.1-t2v``: the Wan2.1 text-to-video transformer (1.3B, 14B, tiny)."""

from __future__ import annotations

from rcm_plugins.wan.config import WanT2VConfig, build
from rcm_plugins.wan.model import WanNetwork

import rcm_registry as rr


def wan_t2v(config: WanT2VConfig) -> WanNetwork:
    """Wan2.1 text-to-video transformer (1.3B/14B/tiny; native or diffusers weights; forward-mode AD)."""
    return build(config)


COMPONENT = rr.Component(
    kind="network", name="wan2.1-t2v", factory=wan_t2v, config=WanT2VConfig, provides={"jvp", "context_parallel"}
)
