"""Wan2.1 networks (T2V and I2V) with checkpoint interop."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.wan import i2v, t2v

    return [t2v.COMPONENT, i2v.COMPONENT]
