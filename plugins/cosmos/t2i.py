"""``cosmos-predict2-t2i``: the Cosmos-Predict2 Text2Image transformer (2B, 14B, tiny)."""

from __future__ import annotations

from rcm_plugins.cosmos.config import CosmosT2IConfig, build
from rcm_plugins.cosmos.model import CosmosNetwork

import rcm_registry as rr


def cosmos_t2i(config: CosmosT2IConfig) -> CosmosNetwork:
    """Cosmos-Predict2 Text2Image transformer (2B/14B/tiny; native or diffusers weights; forward-mode AD)."""
    return build(config)


COMPONENT = rr.Component(
    kind="network", name="cosmos-predict2-t2i", factory=cosmos_t2i, config=CosmosT2IConfig, provides={"jvp"}
)
