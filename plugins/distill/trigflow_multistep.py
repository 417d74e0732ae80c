"""``trigflow_multistep``: few-step sampling of a consistency student in TrigFlow.

Times ``t_0 = arctan(σ_max)``, then the first ``steps − 1`` of ``mid_times``, then 0. Start from
``x = ε ~ N(0, I)`` (the ``cos t_0·x0`` part of x_{t_0} is neglected, O(1/σ_max)); for each step
``x0 = net(x, t_i)`` read through the teacher wrapper without CFG, then, unless t_{i+1} = 0,
``x = cos t_{i+1}·x0 + sin t_{i+1}·ε_i`` with fresh noise. Returns the last x0. One network call per
step (NFE = steps), reported through ``ctx.report_step()``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
import torch
from rcm_plugins.distill.common import expand
from rcm_plugins.distill.fixed_timesteps import check_times, decreasing_mid_times
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s


@attrs.define
class TrigflowMultistepConfig:
    steps: int = attrs.field(default=4, validator=s.positive)
    sigma_max: float = attrs.field(default=80.0, validator=s.positive)
    #: Intermediate times after t_0; the first steps − 1 are used.
    mid_times: list[float] = attrs.field(factory=lambda: [1.5, 1.4, 1.0], validator=decreasing_mid_times)

    def __attrs_post_init__(self) -> None:
        if self.steps > len(self.mid_times) + 1:
            raise ValueError(
                f"steps = {self.steps} needs {self.steps - 1} mid_times, got {len(self.mid_times)} "
                f"({self.mid_times}); add more"
            )
        check_times(math.atan(self.sigma_max), self.mid_times[: self.steps - 1])

    def times(self) -> list[float]:
        """t_0, ..., t_{steps−1}, 0."""
        return [math.atan(self.sigma_max), *self.mid_times[: self.steps - 1], 0.0]


class TrigflowMultistep:
    """Few-step consistency sampler: denoise at arctan(σ_max) and the mid times, re-noising in between."""

    def __init__(self, config: TrigflowMultistepConfig) -> None:
        self.config = config

    def __call__(self, ctx: Any) -> Tensor:
        if ctx.teacher is None:
            raise RuntimeError(
                "trigflow_multistep reads the network through a teacher wrapper; the recipe has no "
                "`teacher_wrapper:` (add e.g. `teacher_wrapper: {use: rectified_flow, t_scale: 1000}`)"
            )
        times = self.config.times()
        x = ctx.randn()
        n = x.shape[0]
        x0 = x
        with torch.no_grad():
            for t_cur, t_next in itertools.pairwise(times):
                t = torch.full((n,), t_cur, dtype=torch.float64, device=x.device)
                x0 = ctx.teacher.denoise(ctx.net, x, t, ctx.condition)[0]
                ctx.report_step()
                if t_next > 0.0:
                    tn = expand(torch.full((n,), t_next, dtype=torch.float64, device=x.device), x)
                    noise = ctx.randn().to(torch.float64)
                    x = (torch.cos(tn) * x0.to(torch.float64) + torch.sin(tn) * noise).to(x.dtype)
        return x0


COMPONENT = rr.Component(
    kind="sampler", name="trigflow_multistep", factory=TrigflowMultistep, config=TrigflowMultistepConfig
)
