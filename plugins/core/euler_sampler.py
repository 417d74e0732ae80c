"""``euler``: the teacher's probability-flow ODE, integrated with Euler steps, with CFG."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from rcm_plugins.core._time import timestep_dtype
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema


@attrs.define
class EulerSamplerConfig:
    steps: int = attrs.field(default=50, validator=schema.positive)
    #: CFG weight w in v = v_u + w·(v_c − v_u): 1 is the plain conditional model, 0 the unconditional.
    guidance: float = attrs.field(default=1.0, validator=schema.guidance_scale)

    def check_recipe(self, recipe: Any, where: str) -> list[str]:
        if recipe.body.schedule is None:
            return ["integrates the schedule's ODE: add `schedule: {use: rectified_flow}` (or trigflow) to the recipe"]
        return []


class EulerSampler:
    """Teacher ODE sampler: Euler steps over the schedule's time grid, with classifier-free guidance.

    The grid is ``ctx.schedule.time_grid(steps)``, u_0 > u_1 > ... > u_steps.

    x_0 = σ(u_0)·ε (exactly ε when the grid starts at pure noise), then
    x_{i+1} = x_i + (u_{i+1} − u_i)·v(x_i, u_i), where v is the network's velocity prediction in the
    schedule's own time (what ``flow_matching`` trains). With ``guidance`` w ≠ 1 and a null condition,
    v = v_u + w·(v_c − v_u) (v_c with ``ctx.condition``, v_u with ``ctx.null_condition``); without a
    null condition (unconditional data) the guidance has nothing to act on and v = v_c. Returns x at
    the last grid time (data when the grid ends at 0). Each step is reported through ``ctx.report_step()``.
    """

    def __init__(self, config: EulerSamplerConfig) -> None:
        self.config = config

    @torch.no_grad()
    def __call__(self, ctx: Any) -> Tensor:
        schedule = ctx.schedule
        if schedule is None:
            raise rr.UserError("sampler euler needs a schedule: add `schedule: {use: ...}` to the recipe")
        grid = schedule.time_grid(self.config.steps)
        guided = ctx.null_condition is not None and self.config.guidance != 1.0
        _, sigma0 = schedule.alpha_sigma(grid[:1])
        x = ctx.randn() * float(sigma0[0])
        batch = x.shape[0]
        t_dtype = timestep_dtype(x.dtype)
        for i in range(self.config.steps):
            timestep = schedule.network_time(grid[i : i + 1]).to(device=x.device, dtype=t_dtype).expand(batch)
            v = ctx.net(x, timestep, **ctx.condition)
            if guided:
                v_uncond = ctx.net(x, timestep, **ctx.null_condition)
                v = v_uncond + self.config.guidance * (v - v_uncond)
            x = x + float(grid[i + 1] - grid[i]) * v.to(x.dtype)
            ctx.report_step()
        return x

    def __repr__(self) -> str:
        return f"EulerSampler(steps={self.config.steps}, guidance={self.config.guidance})"


COMPONENT = rr.Component(kind="sampler", name="euler", factory=EulerSampler, config=EulerSamplerConfig)
