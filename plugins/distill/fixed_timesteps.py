"""``fixed_timesteps``: DMD2-style rollout through the sampler's own fixed times.

Times ``t_0 = arctan(sigma_max)`` (π/2 when null), then ``mid_times`` in order: the trajectory of a
``trigflow_multistep`` sampler with the same settings. Each call runs N student steps, N uniform in
{1..len(mid_times) + 1} (``steps: null``) or fixed (``steps: N``): ``x = ε``; for i = 0..N−1
``x0 = student(x, t_i)`` (no CFG) and, if i < N−1, ``x = cos t_{i+1}·x0 + sin t_{i+1}·ε_i``. Returns the
last x0, so the student is trained on exactly the intermediate states it meets when sampling.
Gradient only through the last call, as for ``stochastic_backward``.

Randomness, in order: N (when random), ε, then ε_i per step.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from rcm_plugins.distill.common import HALF_PI, expand
from rcm_plugins.distill.requirements import Requirements, network_fix
from rcm_plugins.distill.stochastic_backward import start_time, student_x0
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s


def decreasing_mid_times(_: Any, __: Any, mid_times: list[float]) -> None:
    """Field validator: mid times decrease strictly, each inside (0, π/2) (all of them, used or not)."""
    prev = HALF_PI
    for i, t in enumerate(mid_times):
        if not 0.0 < t < HALF_PI:
            raise ValueError(f"mid_times[{i}] = {t} must lie in (0, π/2): TrigFlow times run from π/2 (noise) to 0")
        if not t < prev:
            raise ValueError(f"mid_times[{i}] = {t} must be below mid_times[{i - 1}] = {prev}: times decrease")
        prev = t


def check_times(t0: float, mid_times: list[float]) -> None:
    """Mid times must decrease strictly inside (0, t0)."""
    prev = t0
    for i, t in enumerate(mid_times):
        if not 0.0 < t < prev:
            raise ValueError(
                f"mid_times[{i}] = {t} must lie in (0, {prev:.6g}): times decrease from arctan(sigma_max) = {t0:.6g}"
            )
        prev = t


@attrs.define
class FixedTimestepsConfig:
    mid_times: list[float] = attrs.field(factory=lambda: [1.5, 1.4, 1.0], validator=decreasing_mid_times)
    #: Steps per rollout (null: uniform in 1..len(mid_times)+1).
    steps: int | None = attrs.field(default=None, validator=s.positive)
    sigma_max: float | None = attrs.field(default=80.0, validator=s.positive)
    student_net: str = "student"

    def __attrs_post_init__(self) -> None:
        check_times(start_time(self.sigma_max), self.mid_times)
        if self.steps is not None and self.steps > len(self.mid_times) + 1:
            raise ValueError(f"steps = {self.steps} needs {self.steps - 1} mid_times, got {len(self.mid_times)}")

    def requirements(self) -> Requirements:
        return Requirements(
            who="fixed_timesteps rollout",
            networks={self.student_net: ()},
            fixes={f"network:{self.student_net}": network_fix(self.student_net)},
        )


class FixedTimesteps:
    """Student rollout through fixed sampler times (DMD2 backward simulation)."""

    def __init__(self, config: FixedTimestepsConfig) -> None:
        self.config = config
        self.times = [start_time(config.sigma_max), *config.mid_times]

    def __call__(self, ctx: Any, *, grad: bool) -> Tensor:
        cfg = self.config
        net = ctx.net(cfg.student_net)
        like = ctx.batch.x0
        gen = ctx.generator
        if cfg.steps is None:
            steps = int(torch.randint(1, len(self.times) + 1, (1,), generator=gen, device=gen.device))
        else:
            steps = cfg.steps
        x = ctx.randn_like(like)
        n = like.shape[0]
        for i in range(steps):
            last = i == steps - 1
            t = torch.full((n,), self.times[i], dtype=torch.float64, device=like.device)
            x0 = student_x0(ctx, net, x, t, grad and last)
            if last:
                return x0
            t_next = torch.full((n,), self.times[i + 1], dtype=torch.float64, device=like.device)
            tt = expand(t_next, like)
            noise = ctx.randn_like(like).to(torch.float64)
            x = (torch.cos(tt) * x0.to(torch.float64) + torch.sin(tt) * noise).to(like.dtype)
        raise AssertionError("unreachable: steps >= 1")


COMPONENT = rr.Component(kind="rollout", name="fixed_timesteps", factory=FixedTimesteps, config=FixedTimestepsConfig)
