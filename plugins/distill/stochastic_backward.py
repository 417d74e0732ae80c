"""``stochastic_backward``: the student generates x̂0 in 1..max_steps steps (rCM's rollout).

The number of steps N (one per call, shared by the batch), by ``steps``:

* ``random`` (default): N uniform in {1..max_steps}, drawn from ``ctx.generator``;
* ``cycle`` (the rCM release, NVlabs/rcm ``rcm/models/t2v_model_distill_rcm.py``: ``num_simulation_steps_fake
  = effective_iteration % max_simulation_steps_fake + 1``): ``N = ctx.phase_step mod max_steps + 1``, where
  ``phase_step`` counts the optimiser steps the calling phase took before this one (the release's
  "effective iteration" of the student, and of the critic). Nothing is drawn for N, and ``phase_step`` is
  part of every checkpoint, so a resumed run continues the cycle where it stopped.

Start time t_0, by ``sigma_max``: null (the release's ``backward_simulation``, which starts every
rollout at π/2 whatever its sampler's σ_max) is ``t_0 = π/2`` with ``x = ε ~ N(0, I)``, exactly the
TrigFlow state there; a number starts at ``arctan(sigma_max)``, where the sampler starts, neglecting the
``cos t_0·x0`` part of the state. For i = 0..N−1:
``x0 = student(x, t_i)`` through the teacher wrapper (no CFG); if i < N−1,
``t_{i+1} = min(t_i, τ)`` with ``τ ~ p_D`` (``time.critic``, one per sample) and
``x = cos t_{i+1}·x0 + sin t_{i+1}·ε_i`` with fresh noise. Returns the last x0.

Only the last student call records a graph (and only when ``grad=True``): earlier calls run under
``torch.no_grad``, so the sample's gradient flows through the last call alone.

Randomness, in order: N (``random`` only), ε, then per step τ and ε_i (all from ``ctx.generator`` / the
time sampler).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
import torch
from rcm_plugins.distill.common import HALF_PI, draw_times, expand, need_teacher
from rcm_plugins.distill.requirements import Requirements, network_fix, time_fix
from torch import Tensor

import rcm_registry as rr
from rcm_registry import schema as s


@attrs.define
class StochasticBackwardConfig:
    max_steps: int = attrs.field(default=4, validator=s.positive)
    #: How N is chosen: ``random`` (uniform in 1..max_steps) or ``cycle`` (phase step mod max_steps + 1,
    #: the rCM release's).
    steps: Literal["random", "cycle"] = "random"
    #: Start time arctan(sigma_max) (null: π/2, pure noise, as the rCM release).
    sigma_max: float | None = attrs.field(default=None, validator=s.positive)
    student_net: str = "student"
    time_sampler: str = "critic"

    def requirements(self) -> Requirements:
        return Requirements(
            who="stochastic_backward rollout",
            networks={self.student_net: ()},
            time=(self.time_sampler,),
            fixes={
                f"network:{self.student_net}": network_fix(self.student_net),
                f"time:{self.time_sampler}": time_fix(self.time_sampler),
            },
        )


def start_time(sigma_max: float | None) -> float:
    return HALF_PI if sigma_max is None else math.atan(sigma_max)


def student_x0(ctx: Any, net: torch.nn.Module, x: Tensor, t: Tensor, track: bool) -> Tensor:
    """The student's x0 (no CFG), with a graph only when ``track``."""
    wrapper = need_teacher(ctx, "rollout")
    with torch.set_grad_enabled(track and torch.is_grad_enabled()):
        return wrapper.denoise(net, x, t, ctx.batch.condition)[0]


class StochasticBackward:
    """Student rollout with a random or cycling number of steps and random decreasing times from p_D."""

    def __init__(self, config: StochasticBackwardConfig) -> None:
        self.config = config

    def number_of_steps(self, ctx: Any) -> int:
        """N for this call: drawn (``random``) or the calling phase's step count cycled (``cycle``)."""
        cfg = self.config
        if cfg.steps == "cycle":
            return ctx.phase_step % cfg.max_steps + 1
        gen = ctx.generator
        return int(torch.randint(1, cfg.max_steps + 1, (1,), generator=gen, device=gen.device))

    def __call__(self, ctx: Any, *, grad: bool) -> Tensor:
        cfg = self.config
        net = ctx.net(cfg.student_net)
        like = ctx.batch.x0
        steps = self.number_of_steps(ctx)
        x = ctx.randn_like(like)
        t = torch.full((like.shape[0],), start_time(cfg.sigma_max), dtype=torch.float64, device=like.device)
        for i in range(steps):
            last = i == steps - 1
            x0 = student_x0(ctx, net, x, t, grad and last)
            if last:
                return x0
            t = torch.minimum(t, draw_times(ctx, cfg.time_sampler, like.shape[0], like, "stochastic_backward"))
            tt = expand(t, like)
            noise = ctx.randn_like(like).to(torch.float64)
            x = (torch.cos(tt) * x0.to(torch.float64) + torch.sin(tt) * noise).to(like.dtype)
        raise AssertionError("unreachable: steps >= 1")


COMPONENT = rr.Component(
    kind="rollout", name="stochastic_backward", factory=StochasticBackward, config=StochasticBackwardConfig
)
