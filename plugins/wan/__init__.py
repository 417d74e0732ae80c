"""Wan networks with checkpoint interop: Wan2.1 (T2V, I2V) and Wan2.2 (the A14B experts, TI2V-5B)."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.wan import i2v, i2v_a14b, t2v, t2v_a14b, ti2v_5b

    return [t2v.COMPONENT, i2v.COMPONENT, t2v_a14b.COMPONENT, i2v_a14b.COMPONENT, ti2v_5b.COMPONENT]
