"""``trigflow_euler``: the teacher's probability-flow ODE in TrigFlow time, Euler (DDIM) steps, with CFG.

Each step ``x ← cos t'·x̂0 + sin t'·ε̂`` with ``ε̂ = (x − cos t·x̂0)/sin t``: the flow-matching Euler step,
first order; the step to t = 0 returns x̂0. On a rectified-flow teacher it is the ``euler`` sampler of
``plugins/core`` on the schedule's shifted grid. Grid, start and settings: :mod:`rcm_plugins.distill._teacher_ode`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from rcm_plugins.distill._teacher_ode import Denoise, TeacherOdeConfig, TeacherOdeSampler
from torch import Tensor

import rcm_registry as rr


def euler_solve(denoise: Denoise, x: Tensor, times: Sequence[float], step: Callable[[], None] = lambda: None) -> Tensor:
    """Euler steps from ``times[0]`` to ``times[-1]`` (float64); ``step()`` after every evaluation."""
    x = x.to(torch.float64)
    for t, t_next in itertools.pairwise(times):
        x0 = denoise(x, t).to(torch.float64)
        if t_next <= 0.0:
            x = x0
        else:
            eps = (x - math.cos(t) * x0) / math.sin(t)
            x = math.cos(t_next) * x0 + math.sin(t_next) * eps
        step()
    return x


class TrigflowEuler(TeacherOdeSampler):
    """Teacher ODE sampler in TrigFlow time: Euler (DDIM) steps on a Wan-shifted grid, with CFG."""

    name = "trigflow_euler"
    solve = staticmethod(euler_solve)


COMPONENT = rr.Component(kind="sampler", name="trigflow_euler", factory=TrigflowEuler, config=TeacherOdeConfig)
