"""Cosmos-Predict2 networks (Text2Image, Video2World) with checkpoint interop, and its teacher parameterisation."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.cosmos import cosmos_edm, t2i, v2w

    return [t2i.COMPONENT, v2w.COMPONENT, cosmos_edm.COMPONENT]
