"""Core components: schedules, time samplers, flow matching, optimiser, EMA, 2-D data, MLP, Euler, metrics."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    return []
