"""Distillation components: teacher wrappers, sCM/dCM/DMD losses, rollouts, few-step and teacher ODE samplers."""

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
        trigflow_euler,
        trigflow_multistep,
        trigflow_unipc,
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
        trigflow_euler,
        trigflow_unipc,
    )
    return [m.COMPONENT for m in modules]
