"""``wan2.2-ti2v-5b``: Wan2.2's 5B text/image-to-video transformer on 48-channel latents."""

from __future__ import annotations

from rcm_plugins.wan.ti2v_model import WanTI2VNetwork
from rcm_plugins.wan.wan22_config import WanTI2VConfig, build_ti2v

import rcm_registry as rr


def wan_ti2v_5b(config: WanTI2VConfig) -> WanTI2VNetwork:
    """Wan2.2-TI2V-5B (5b/tiny; native or diffusers weights; first-frame conditioning with first_frame: true)."""
    return build_ti2v(config)


# No context parallel: the first frame's own timestep makes the modulation per frame, which does not
# split over ranks that hold arbitrary chunks of the token sequence.
COMPONENT = rr.Component(
    kind="network", name="wan2.2-ti2v-5b", factory=wan_ti2v_5b, config=WanTI2VConfig, provides={"jvp"}
)
