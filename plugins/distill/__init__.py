"""Distillation components: teacher wrappers, sCM/dCM/DMD losses, rollouts, few-step sampler."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    return []
