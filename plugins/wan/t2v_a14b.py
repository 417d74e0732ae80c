"""``wan2.2-t2v-a14b``: Wan2.2's text-to-video experts (high-noise and low-noise), switched by timestep."""

from __future__ import annotations

from rcm_plugins.wan.experts import WanExperts
from rcm_plugins.wan.wan22_config import WanA14BConfig, build_a14b

import rcm_registry as rr


def wan_t2v_a14b(config: WanA14BConfig) -> WanExperts:
    """Wan2.2-T2V-A14B: two 14B experts switched at boundary 0.875 (a14b/tiny; native or diffusers repositories)."""
    return build_a14b(config)


COMPONENT = rr.Component(
    kind="network",
    name="wan2.2-t2v-a14b",
    factory=wan_t2v_a14b,
    config=WanA14BConfig,
    provides={"jvp", "context_parallel"},
)
