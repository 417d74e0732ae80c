"""Core components: schedules, time samplers, flow matching, optimiser, EMA, 2-D data, MLP, Euler, metrics."""

from __future__ import annotations

import rcm_registry as rr


@rr.hookimpl
def rcm_components() -> list[rr.Component]:
    from rcm_plugins.core import (
        adamw_optimizer,
        constant_ema,
        euler_sampler,
        flow_matching_loss,
        gaussian_mixture_2d_dataset,
        high_quality_rate_metric,
        lognormal_time_sampler,
        mlp_network,
        mode_coverage_metric,
        power_ema,
        random_latents_dataset,
        rectified_flow_schedule,
        sliced_wasserstein_metric,
        trigflow_schedule,
        uniform_shift_time_sampler,
        uniform_time_sampler,
    )

    return [
        trigflow_schedule.COMPONENT,
        rectified_flow_schedule.COMPONENT,
        lognormal_time_sampler.COMPONENT,
        uniform_shift_time_sampler.COMPONENT,
        uniform_time_sampler.COMPONENT,
        flow_matching_loss.COMPONENT,
        adamw_optimizer.COMPONENT,
        power_ema.COMPONENT,
        constant_ema.COMPONENT,
        gaussian_mixture_2d_dataset.COMPONENT,
        random_latents_dataset.COMPONENT,
        mlp_network.COMPONENT,
        euler_sampler.COMPONENT,
        mode_coverage_metric.COMPONENT,
        high_quality_rate_metric.COMPONENT,
        sliced_wasserstein_metric.COMPONENT,
    ]
