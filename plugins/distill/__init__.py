"""Distillation components: teacher wrappers, sCM/dCM/DMD losses, rollouts, few-step sampler."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.distill import (
        dcm,
        dmd,
        edm,
        fake_score_dsm,
        fixed_timesteps,
        rectified_flow,
        scm,
        stochastic_backward,
        trigflow_multistep,
        vp_eps,
    )

    modules = (
        rectified_flow,
        edm,
        vp_eps,
        scm,
        dcm,
        dmd,
        fake_score_dsm,
        stochastic_backward,
        fixed_timesteps,
        trigflow_multistep,
    )
    return [m.COMPONENT for m in modules]
