"""Attention backends: math (reference), sdpa, triton_jvp (fused FlashAttention-2 JVP), int8_sage (sampling)."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.attention import int8_sage_attention, math_attention, sdpa_attention, triton_jvp_attention

    return [
        math_attention.COMPONENT,
        sdpa_attention.COMPONENT,
        triton_jvp_attention.COMPONENT,
        int8_sage_attention.COMPONENT,
    ]
