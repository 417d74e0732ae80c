"""``cosmos-predict2-v2w``: the Cosmos-Predict2 Video2World transformer (2B, 14B, tiny)."""

from __future__ import annotations

from rcm_plugins.cosmos.config import CosmosV2WConfig, build
from rcm_plugins.cosmos.model import CosmosNetwork

import rcm_registry as rr


def cosmos_v2w(config: CosmosV2WConfig) -> CosmosNetwork:
    """Cosmos-Predict2 Video2World transformer (2B/14B/tiny; condition-mask frames; forward-mode AD)."""
    return build(config)


COMPONENT = rr.Component(
    kind="network", name="cosmos-predict2-v2w", factory=cosmos_v2w, config=CosmosV2WConfig, provides={"jvp"}
)
